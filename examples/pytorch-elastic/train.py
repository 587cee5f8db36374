"""Elastic DDP under torchrun: the group shrinks when a worker is lost and grows when one is added, and training
goes on from the last checkpoint each time.

torchrun's elastic agent (one per pod) reads the rendezvous from the PET_* variables the pytorch plugin sets from
``frameworkOptions.elasticPolicy`` (``PET_NNODES=min:max``, ``PET_RDZV_ENDPOINT``, ``PET_RDZV_BACKEND``,
``PET_MAX_RESTARTS``). When the membership changes, every agent stops its worker and starts it again in a new
group: this script then loads the checkpoint (model, optimizer, step, the losses so far) and carries on. Rank 0
writes the checkpoint every step (to CHECKPOINT_DIR, which every worker must see: a shared volume in a cluster,
a folder of the host on one machine) and reports progress.

Each (re)start prints ``MEMBERSHIP world=W rank=R restart=N step=S``; the end prints ``RESULT ok`` when the loss
fell from the first step to the last, across every membership.
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

try:
    from mljob import progress  # reports to the job's progress endpoint; a no-op outside a job
except ImportError:
    progress = None

torch.set_num_threads(1)
steps = int(os.environ.get("STEPS", "200"))
pause = float(os.environ.get("STEP_SECONDS", "0.05"))  # slow enough to lose or add a worker mid-training
folder = os.environ.get("CHECKPOINT_DIR", "/tmp/pytorch-elastic")
os.makedirs(folder, exist_ok=True)
checkpoint = os.path.join(folder, "checkpoint.pt")

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

torch.manual_seed(0)
true_w = torch.randn(16, 1)
model = torch.nn.Linear(16, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
start, losses = 0, []
if os.path.exists(checkpoint):
    state = torch.load(checkpoint, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    start, losses = state["step"], state["losses"]
print(f"MEMBERSHIP world={world} rank={rank} restart={restart} step={start}", flush=True)
ddp = DistributedDataParallel(model)

for step in range(start, steps):
    generator = torch.Generator().manual_seed(step * 1000 + rank)  # each rank its own batch of each step
    x = torch.randn(64, 16, generator=generator)
    y = x @ true_w + 0.01 * torch.randn(64, 1, generator=generator)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(ddp(x), y)
    loss.backward()
    optimizer.step()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    mean = float(mean) / world
    if rank == 0:
        losses.append(mean)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1, "losses": losses}
        torch.save(state, checkpoint + ".tmp")
        os.replace(checkpoint + ".tmp", checkpoint)  # a worker lost mid-write never leaves half a checkpoint
        if progress:
            progress.report(step=step + 1, total=steps, loss=mean, world=world)
    if step % 20 == 0:
        print(f"step {step} world {world} loss {mean:.4f}", flush=True)
    time.sleep(pause)

dist.barrier()
if rank == 0:
    ok = len(losses) >= 2 and losses[-1] < losses[0] / 10
    print(f"RESULT {'ok' if ok else 'bad'} steps={len(losses)} first={losses[0]:.4f} last={losses[-1]:.6f}", flush=True)
    if not ok:
        sys.exit(1)
dist.destroy_process_group()
