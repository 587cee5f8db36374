"""Data-parallel linear regression over MPI: each rank holds a shard, gradients are summed with allreduce.

mpirun starts the ranks (over the hostfile the MPI plugin wires: OMPI_MCA_orte_default_hostfile); mpi4py
reads rank and world from OpenMPI's environment. Rank 0 checks the result of every rank and prints one
``RESULT`` line (the ranks share the launcher's output): it exits non-zero unless the loss fell, an
allreduce of rank + 1 gives the expected sum, and every rank ends with the same parameters.
"""

import os

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
steps = int(os.environ.get("STEPS", "60"))
print(f"rank {rank} of {world} on {MPI.Get_processor_name()}", flush=True)

true_w = np.random.default_rng(0).normal(size=8)
rng = np.random.default_rng(100 + rank)  # a different shard per rank
x = rng.normal(size=(256, 8))
y = x @ true_w + 0.01 * rng.normal(size=256)
rows = comm.allreduce(len(y))

w = np.zeros(8)
losses = []
for i in range(steps):
    error = x @ w - y
    loss = comm.allreduce(float(error @ error)) / rows  # the mean over every rank's rows
    grad = np.empty(8)
    comm.Allreduce(2 * x.T @ error, grad)  # the summed gradient, in place over a numpy buffer
    w -= 0.1 * grad / rows
    losses.append(loss)
    if rank == 0 and i % 20 == 0:
        print(f"step {i} loss {loss:.4f}", flush=True)

total = comm.allreduce(rank + 1.0)
drift = comm.allreduce(float(np.max(np.abs(w - comm.bcast(w, root=0)))), op=MPI.MAX)
oks = comm.gather(losses[-1] < 0.1 * losses[0] and total == world * (world + 1) / 2, root=0)
ok = comm.bcast(all(oks) and drift < 1e-12 if rank == 0 else None, root=0)
if rank == 0:
    status = "ok" if ok else "FAILED"
    print(
        f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total:.1f} world={world} drift={drift:.1e}",
        flush=True,
    )
raise SystemExit(0 if ok else 1)
