"""Data-parallel linear regression over jax.distributed, wired by JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (Kubeflow Trainer's JAX runtime's names).

Every process holds one CPU device and its own shard of the data. The batch is one global array
sharded over all the processes' devices, the parameters are replicated, and ``jax.jit`` turns the
gradient of the global mean loss into a cross-process all-reduce (gloo on CPU). The script checks
its own result and exits non-zero unless the loss fell, a sum over the processes gives the
expected value on every process, and every process ends with the same parameters. Process 0
reports its progress (step, loss) with mljob.progress.
"""

import os

import jax

try:
    from mljob import progress  # reports to the job's progress endpoint; a no-op outside a job
except ImportError:  # mljob is not installed in this image: train without reporting
    progress = None

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_cpu_collectives_implementation", os.environ.get("JAX_DISTRIBUTED_BACKEND", "gloo"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

steps = int(os.environ.get("STEPS", "60"))

# JAX reads JAX_COORDINATOR_ADDRESS itself; the count and the id are passed explicitly so that
# no cluster auto-detection (SLURM, MPI, Kubernetes' API) is tried.
jax.distributed.initialize(
    coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
    process_id=int(os.environ["JAX_PROCESS_ID"]),
    initialization_timeout=120,
)
rank, world = jax.process_index(), jax.process_count()
print(
    f"process {rank} of {world}, coordinator {os.environ['JAX_COORDINATOR_ADDRESS']}, "
    f"{jax.local_device_count()} local / {jax.device_count()} global devices",
    flush=True,
)

mesh = jax.make_mesh((jax.device_count(),), ("data",))
rows = NamedSharding(mesh, PartitionSpec("data"))
replicated = NamedSharding(mesh, PartitionSpec())

true_w = np.random.default_rng(0).normal(size=(8, 1)).astype(np.float32)
rng = np.random.default_rng(100 + rank)  # a different shard per process
x_local = rng.normal(size=(256, 8)).astype(np.float32)
y_local = x_local @ true_w + 0.01 * rng.normal(size=(256, 1)).astype(np.float32)
x = jax.make_array_from_process_local_data(rows, x_local)
y = jax.make_array_from_process_local_data(rows, y_local)

params = jax.device_put((jnp.zeros((8, 1)), jnp.zeros(())), replicated)


def loss_fn(params, x, y):
    w, b = params
    return jnp.mean((x @ w + b - y) ** 2)


@jax.jit
def step(params, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)  # the mean over every process's rows
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss


losses = []
for i in range(steps):
    params, loss = step(params, x, y)
    losses.append(float(loss))  # the mean over every process's rows
    if progress and rank == 0:  # one process reports; report() sends at most one a second
        progress.report(step=i + 1, total=steps, loss=losses[-1])
    if i % 20 == 0:
        print(f"step {i} loss {losses[-1]:.4f}", flush=True)

# A sum over the processes: each contributes rank + 1 through a globally sharded array.
tokens = jax.make_array_from_process_local_data(rows, np.full((1,), rank + 1.0, np.float32))
total = float(jax.jit(jnp.sum, out_shardings=replicated)(tokens))
# Every process's own copy of the parameters, gathered: they must be identical.
mine = np.concatenate([np.asarray(params[0].addressable_data(0)).ravel(), [float(params[1].addressable_data(0))]])
gathered = multihost_utils.process_allgather(mine)  # shape (world, 9)
drift = float(np.max(gathered.max(axis=0) - gathered.min(axis=0)))
multihost_utils.sync_global_devices("done")  # nobody leaves while a peer still talks to it

ok = losses[-1] < 0.1 * losses[0] and total == world * (world + 1) / 2 and drift < 1e-6
status = "ok" if ok else "FAILED"
print(
    f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total:.1f} world={world} drift={drift:.1e}",
    flush=True,
)
jax.distributed.shutdown()
raise SystemExit(0 if ok else 1)
