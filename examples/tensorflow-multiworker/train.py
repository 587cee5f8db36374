"""MultiWorkerMirroredStrategy on synthetic linear regression, wired by TF_CONFIG.

A custom training loop (no Keras, so it does not depend on which Keras TensorFlow ships):
variables are mirrored on every worker and updated with the mean of the workers' gradients.
The script exits non-zero unless the loss fell, an all-reduce over the workers gives the
expected sum, and the workers' weights are identical. Worker 0 (the chief) reports its progress
(step, loss) with mljob.progress: a custom loop calls report() itself (with model.fit, pass
``callbacks=[progress.keras_callback()]`` instead).
"""

import json
import os
import sys

import tensorflow as tf

try:
    from mljob import progress  # reports to the job's progress endpoint; a no-op outside a job
except ImportError:  # mljob is not installed in this image: train without reporting
    progress = None

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
steps = int(os.environ.get("STEPS", "40"))
task = json.loads(os.environ["TF_CONFIG"])["task"]

strategy = tf.distribute.MultiWorkerMirroredStrategy()
workers = strategy.num_replicas_in_sync
print(f"{task['type']} {task['index']}: {workers} replicas in sync", flush=True)

true_w = tf.constant([[2.0], [-3.0], [0.5], [1.0]])
x = tf.random.stateless_normal([256, 4], seed=[task["index"], 1])  # a different shard per worker
y = x @ true_w + 0.7

with strategy.scope():
    w = tf.Variable(tf.zeros([4, 1]), aggregation=tf.VariableAggregation.MEAN)
    b = tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN)


@tf.function
def step() -> tf.Tensor:
    def replica_step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(x @ w + b - y))
        grad_w, grad_b = tape.gradient(loss, [w, b])
        w.assign_sub(0.1 * grad_w)  # MEAN aggregation: the mean of every worker's update
        b.assign_sub(0.1 * grad_b)
        return loss

    return strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_step), axis=None)


@tf.function
def token_sum() -> tf.Tensor:
    def replica_token() -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(context.replica_id_in_sync_group + 1, tf.float32))

    return strategy.experimental_local_results(strategy.run(replica_token))[0]


losses = []
for i in range(steps):
    losses.append(float(step()))  # the mean over the workers
    if progress and task["index"] == 0:  # the chief reports; report() sends at most one a second
        progress.report(step=i + 1, total=steps, loss=losses[-1])
    if i % 10 == 0:
        print(f"step {i} loss {losses[-1]:.4f}", flush=True)

total = float(token_sum())


@tf.function
def spread() -> tf.Tensor:
    def replica_spread() -> tf.Tensor:
        context = tf.distribute.get_replica_context()
        values = context.all_gather(tf.reshape(tf.reduce_sum(w) + b, [1]), axis=0)  # one per worker
        return tf.reduce_max(values) - tf.reduce_min(values)

    return strategy.experimental_local_results(strategy.run(replica_spread))[0]


drift = float(spread())
ok = losses[-1] < 0.1 * losses[0] and total == workers * (workers + 1) / 2 and drift < 1e-5
status = "ok" if ok else "FAILED"
print(f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total:.1f} workers={workers} drift={drift:.1e}")
sys.exit(0 if ok else 1)
