"""MXNet dist_sync training, wired by the DMLC_* variables.

For the scheduler and the server, ``import mxnet`` is the whole program: with DMLC_ROLE set to
scheduler or server it serves the kvstore and exits when the workers are done. Each worker
trains a linear model with a gluon Trainer whose updates run on the server (synchronously, over
both workers' gradients), then checks the result: the loss fell, and a value pushed by every
worker comes back as their sum. Worker 0 reports its progress (step, loss) with mljob.progress.
"""

import os
import sys

import mxnet as mx  # on the scheduler and the server this serves and never returns
from mxnet import autograd, gluon, nd

try:
    from mljob import progress  # reports to the job's progress endpoint; a no-op outside a job
except ImportError:  # mljob is not installed in this image: train without reporting
    progress = None

steps = int(os.environ.get("STEPS", "40"))
kv = mx.kv.create("dist_sync")
rank, workers = kv.rank, kv.num_workers
print(f"worker {rank} of {workers}, scheduler {os.environ['DMLC_PS_ROOT_URI']}:{os.environ['DMLC_PS_ROOT_PORT']}", flush=True)

# Before the trainer gives the server an optimizer, the server keeps the sum of what the
# workers push: the all-reduce check.
kv.init(99, nd.zeros((1,)))
kv.push(99, nd.array([rank + 1.0]))
total = nd.zeros((1,))
kv.pull(99, out=total)
total_value = float(total.asscalar())

mx.random.seed(100 + rank)  # a different shard per worker
true_w = nd.array([[2.0, -1.0, 0.5, 3.0]])
x = nd.random.normal(shape=(256, 4))
y = nd.dot(x, true_w.T) + 1.0

net = gluon.nn.Dense(1, in_units=4)
net.initialize(mx.init.Zero())
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.2}, kvstore=kv)
loss_fn = gluon.loss.L2Loss()
losses = []
for step in range(steps):
    with autograd.record():
        loss = loss_fn(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])
    losses.append(float(loss.mean().asscalar()))
    if progress and rank == 0:  # one worker reports; report() sends at most one a second
        progress.report(step=step + 1, total=steps, loss=losses[-1])
    if step % 10 == 0:
        print(f"step {step} loss {losses[-1]:.4f}", flush=True)

ok = losses[-1] < 0.1 * losses[0] and total_value == workers * (workers + 1) / 2
status = "ok" if ok else "FAILED"
print(f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total_value:.1f} workers={workers}", flush=True)
sys.exit(0 if ok else 1)
