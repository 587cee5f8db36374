"""ParameterServerStrategy, TensorFlow's documented pattern (the "Parameter server training" guide).

Workers and parameter servers start a ``tf.distribute.Server`` from TF_CONFIG and serve until
they are stopped; the chief creates the variables (placed on the PS), and a ClusterCoordinator
schedules training steps on the workers. The chief checks the result: the loss fell, and the
step counter on the PS (incremented by whichever worker ran each step) equals the steps
scheduled, with every worker having run some.
"""

import os
import sys

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
# Two inter-op threads, not one: with one, the chief's remote reads of PS variables deadlock.
tf.config.threading.set_inter_op_parallelism_threads(2)
resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()

if resolver.task_type in ("worker", "ps"):
    os.environ["GRPC_FAIL_FAST"] = "use_caller"
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    print(f"{resolver.task_type} {resolver.task_id} serving at {server.target}", flush=True)
    server.join()
    sys.exit(0)

steps = int(os.environ.get("STEPS", "60"))
workers = resolver.cluster_spec().num_tasks("worker")
strategy = tf.distribute.ParameterServerStrategy(resolver)
coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
print(f"chief: {workers} workers, {resolver.cluster_spec().num_tasks('ps')} ps", flush=True)

true_w = tf.constant([[1.5], [-2.0], [0.25]])
with strategy.scope():
    w = tf.Variable(tf.zeros([3, 1]))
    b = tf.Variable(0.0)
    counter = tf.Variable(0, dtype=tf.int64)
    per_worker = tf.Variable(tf.zeros([workers], dtype=tf.int64))


def dataset_fn() -> tf.data.Dataset:
    x = tf.random.stateless_normal([512, 3], seed=[1, 2])
    y = x @ true_w - 0.5
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512).batch(64).repeat()


@tf.function
def train_step(iterator: tf.distribute.DistributedIterator) -> tf.Tensor:
    def replica_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(x @ w + b - y))
        grad_w, grad_b = tape.gradient(loss, [w, b])
        w.assign_sub(0.1 * grad_w)
        b.assign_sub(0.1 * grad_b)
        counter.assign_add(1)
        worker = tf.distribute.coordinator.experimental_get_current_worker_index()
        per_worker.assign_add(tf.one_hot(worker, workers, dtype=tf.int64))
        return loss

    x, y = next(iterator)
    return strategy.run(replica_step, args=(x, y))


def full_loss() -> float:
    x = tf.random.stateless_normal([512, 3], seed=[1, 2])
    return float(tf.reduce_mean(tf.square(x @ w + b - (x @ true_w - 0.5))))


iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))
first = full_loss()
for i in range(steps):
    coordinator.schedule(train_step, args=(iterator,))
    if i % 20 == 19:
        coordinator.join()
        print(f"step {i + 1} loss {full_loss():.4f}", flush=True)
coordinator.join()
last = full_loss()
count = int(counter.numpy())
by_worker = [int(n) for n in per_worker.numpy()]
ok = last < 0.1 * first and count == steps == sum(by_worker) and all(by_worker)
status = "ok" if ok else "FAILED"
print(f"RESULT {status} loss {first:.3f}->{last:.4f} allreduce={count} steps={steps} by_worker={by_worker}", flush=True)
sys.exit(0 if ok else 1)
