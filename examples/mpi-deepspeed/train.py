"""DeepSpeed data-parallel training whose ranks mpirun starts, on CPU over gloo.

mpirun (over the hostfile the MPI plugin wires) starts one process per slot. ``deepspeed.init_distributed`` finds
no RANK/WORLD_SIZE/MASTER_ADDR in the environment and discovers them over MPI (mpi4py): rank and world from
``MPI.COMM_WORLD``, rank 0's address (``hostname -I``) broadcast as ``MASTER_ADDR``. ``deepspeed.initialize`` wraps
a tiny linear model with plain SGD: nothing is compiled, at install or at run time. Every rank trains on its own
shard and checks its own result; rank 0 prints one ``RESULT`` line for all: the loss fell on every rank, an
all-reduce of rank + 1 gives the expected sum, and all-gathered weights are identical on every rank.
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no GPU: DeepSpeed's CPU accelerator, gloo for the collectives

import deepspeed
import torch
import torch.distributed as dist
from mpi4py import MPI

# DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel (deepspeed_shm_comm, for inference with
# ranks on one host) at the first init_distributed: over a minute of g++ and more than 2 GiB in every rank. Training
# all-reduces through gloo either way; marking the kernel incompatible is what DeepSpeed itself does off Linux.
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
torch.set_num_threads(1)
steps = int(os.environ.get("STEPS", "60"))
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=True, verbose=False)
rank, world = dist.get_rank(), dist.get_world_size()
print(f"rank {rank} of {world}, master {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", flush=True)

torch.manual_seed(0)  # the same initial weights and true_w on every rank
true_w = torch.randn(16, 1)
generator = torch.Generator().manual_seed(100 + rank)  # a different shard per rank
micro = 32
x = torch.randn(micro * steps, 16, generator=generator)
y = x @ true_w + 0.01 * torch.randn(micro * steps, 1, generator=generator)

config = {
    "train_batch_size": micro * world,
    "train_micro_batch_size_per_gpu": micro,
    "gradient_accumulation_steps": 1,
    "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
    "steps_per_print": 10**9,
}
engine, _, _, _ = deepspeed.initialize(model=torch.nn.Linear(16, 1), model_parameters=None, config=config)
losses = []
for step in range(steps):
    batch = slice(step * micro, (step + 1) * micro)
    loss = torch.nn.functional.mse_loss(engine(x[batch]), y[batch])
    engine.backward(loss)  # gradients averaged over the ranks
    engine.step()
    losses.append(loss.item())
    if rank == 0 and step % 20 == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)

token = torch.tensor([float(rank + 1)])
dist.all_reduce(token)  # sum of 1..world on every rank
weights = torch.cat([p.detach().flatten() for p in engine.module.parameters()])
gathered = [torch.empty_like(weights) for _ in range(world)]
dist.all_gather(gathered, weights)
drift = max((g - weights).abs().max().item() for g in gathered)
k = min(5, steps)  # the loss averaged over the first and the last k steps
first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
mine = last < 0.1 * first and token.item() == world * (world + 1) / 2 and drift < 1e-6
every = torch.tensor([1.0 if mine else 0.0])
dist.all_reduce(every, op=dist.ReduceOp.MIN)  # each rank checked its own result; all must hold
dist.barrier()  # nobody tears down gloo while a peer still talks to it
dist.destroy_process_group()
ok = bool(every.item())
if rank == 0:
    status = "ok" if ok else "FAILED"
    print(
        f"RESULT {status} loss {first:.3f}->{last:.4f} allreduce={token.item():.1f} world={world} "
        f"drift={drift:.1e} deepspeed={deepspeed.__version__}",
        flush=True,
    )
MPI.COMM_WORLD.Barrier()
MPI.Finalize()  # mpirun counts a rank that leaves without it as an abnormal end
os._exit(0 if ok else 1)  # as examples/pytorch-ddp: no C++ destructors racing a peer's exit
