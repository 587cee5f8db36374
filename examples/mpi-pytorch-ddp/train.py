"""PyTorch DDP whose ranks mpirun starts: rank and world from OpenMPI's environment, gloo for the gradients.

mpirun (over the hostfile the MPI plugin wires) starts one process per slot; each reads its rank and the world size
from ``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE``, and rank 0's address, broadcast over MPI (mpi4py), is
torch's ``MASTER_ADDR``. Every rank trains on its own shard and checks its own result; rank 0 prints one ``RESULT``
line for all (the ranks share the launcher's output): the loss fell on every rank, an all-reduce of rank + 1 gives
the expected sum, and the ranks' weights are identical.
"""

import datetime
import os
import socket

import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel

torch.set_num_threads(1)
rank, world = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
steps = int(os.environ.get("STEPS", "60"))
master = MPI.COMM_WORLD.bcast(socket.gethostbyname(socket.gethostname()) if rank == 0 else None, root=0)
print(f"rank {rank} of {world} on {socket.gethostname()}, master {master}", flush=True)
dist.init_process_group(
    "gloo", init_method=f"tcp://{master}:29500", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
)

torch.manual_seed(0)
true_w = torch.randn(16, 1)
generator = torch.Generator().manual_seed(100 + rank)  # a different shard per rank
x = torch.randn(512, 16, generator=generator)
y = x @ true_w + 0.01 * torch.randn(512, 1, generator=generator)

model = DistributedDataParallel(torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
losses = []
for step in range(steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    if rank == 0 and step % 20 == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)

token = torch.tensor([float(rank + 1)])
dist.all_reduce(token)  # sum of 1..world on every rank
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
high, low = weights.clone(), weights.clone()
dist.all_reduce(high, op=dist.ReduceOp.MAX)
dist.all_reduce(low, op=dist.ReduceOp.MIN)
drift = (high - low).abs().max().item()
mine = losses[-1] < 0.1 * losses[0] and token.item() == world * (world + 1) / 2 and drift < 1e-6
every = torch.tensor([1.0 if mine else 0.0])
dist.all_reduce(every, op=dist.ReduceOp.MIN)  # each rank checked its own result; all must hold
dist.barrier()  # nobody tears down gloo while a peer still talks to it
dist.destroy_process_group()
ok = bool(every.item())
if rank == 0:
    status = "ok" if ok else "FAILED"
    print(
        f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={token.item():.1f} world={world} "
        f"drift={drift:.1e}",
        flush=True,
    )
MPI.COMM_WORLD.Barrier()
MPI.Finalize()  # mpirun counts a rank that leaves without it as an abnormal end
os._exit(0 if ok else 1)  # as examples/pytorch-ddp: no C++ destructors racing a peer's exit
