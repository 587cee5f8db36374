"""Data-parallel linear regression with ``paddle.DataParallel`` on CPU, started on every node by
``python -m paddle.distributed.launch``.

The launcher reads PADDLE_MASTER, PADDLE_NNODES and PADDLE_JOB_ID (Kubeflow's PaddleJob names, which
the paddle plugin wires): the nodes meet at PADDLE_MASTER, the node that hosts it becomes rank 0,
and each node's launcher starts this script as one trainer with PADDLE_TRAINER_ID,
PADDLE_TRAINERS_NUM and PADDLE_TRAINER_ENDPOINTS set. ``init_parallel_env`` then forms a gloo group
over every trainer, and ``DataParallel`` all-reduces the gradients after each backward pass. The
script checks its own result and exits non-zero unless the loss fell, a sum over the ranks gives the
expected value, and every rank ends with the same parameters.
"""

import hashlib
import os

import numpy as np
import paddle
import paddle.distributed as dist

steps = int(os.environ.get("STEPS", "60"))
if "PADDLE_TRAINER_ID" not in os.environ:
    raise SystemExit("RESULT FAILED: not started by python -m paddle.distributed.launch")

paddle.set_device("cpu")
dist.init_parallel_env()  # gloo on CPU: the launcher sets PADDLE_DISTRI_BACKEND=gloo when no GPU is selected
rank, world = dist.get_rank(), dist.get_world_size()
print(
    f"rank {rank} of {world}, job {os.environ['PADDLE_JOB_ID']} on {os.environ['PADDLE_NNODES']} nodes, "
    f"backend {os.environ.get('PADDLE_DISTRI_BACKEND')}",
    flush=True,
)

paddle.seed(0)  # the same initial parameters on every rank (DataParallel also broadcasts rank 0's)
true_w = np.random.default_rng(0).normal(size=(8, 1)).astype(np.float32)
rng = np.random.default_rng(100 + rank)  # a different shard per rank
x_local = rng.normal(size=(256, 8)).astype(np.float32)
y_local = x_local @ true_w + 0.01 * rng.normal(size=(256, 1)).astype(np.float32)
x, y = paddle.to_tensor(x_local), paddle.to_tensor(y_local)

model = paddle.DataParallel(paddle.nn.Linear(8, 1))
optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
losses = []
for i in range(steps):
    loss = paddle.nn.functional.mse_loss(model(x), y)
    loss.backward()  # DataParallel averages the gradients over every rank here
    optimizer.step()
    optimizer.clear_grad()
    global_loss = loss.detach().clone()
    dist.all_reduce(global_loss)  # the mean loss over every rank's shard, the same number on each
    losses.append(float(global_loss.item()) / world)
    if i % 20 == 0:
        print(f"step {i} loss {losses[-1]:.4f}", flush=True)

# A sum over the ranks: each contributes rank + 1.
token = paddle.to_tensor([rank + 1.0])
dist.all_reduce(token)
total = float(token.item())
# Every rank's own copy of the parameters, gathered: they must be identical.
mine = paddle.concat([p.detach().flatten() for p in model.parameters()])
gathered: list = []
dist.all_gather(gathered, mine)
drift = float(paddle.stack(gathered).max(axis=0).subtract(paddle.stack(gathered).min(axis=0)).max().item())
digest = hashlib.sha256(mine.numpy().tobytes()).hexdigest()
dist.barrier()  # nobody leaves while a peer still talks to it

ok = losses[-1] < 0.1 * losses[0] and total == world * (world + 1) / 2 and drift == 0.0
status = "ok" if ok else "FAILED"
print(
    f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total:.1f} world={world} model={digest}",
    flush=True,
)
raise SystemExit(0 if ok else 1)
