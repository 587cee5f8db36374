"""Distributed XGBoost (hist) on synthetic data, wired by MASTER_ADDR, MASTER_PORT, WORLD_SIZE and
RANK (Kubeflow's XGBoostJob names).

Rank 0 (the Master) runs XGBoost's tracker on MASTER_ADDR:MASTER_PORT and trains too; every rank
joins the collective through the tracker and trains on its own shard: XGBoost all-reduces the
gradient histograms, so all ranks grow the same trees. The script checks its own result and exits
non-zero unless the training loss fell, a sum over the ranks gives the expected value, and every
rank holds the same model (the SHA-256 of its saved JSON, printed per rank). Rank 0 reports its
progress (round, train-logloss) with mljob.progress's XGBoost callback.
"""

import hashlib
import os
import socket
import warnings

import numpy as np
import xgboost as xgb
from xgboost import collective
from xgboost.tracker import RabitTracker

try:
    from mljob import progress  # reports to the job's progress endpoint; a no-op outside a job
except ImportError:  # mljob is not installed in this image: train without reporting
    progress = None

# A worker that starts before rank 0's tracker is up retries (dmlc_retry below); keep those
# expected retries out of the log. A tracker that never comes up still fails the join.
warnings.filterwarnings("ignore", message=r"(?s).*(Retrying connection|Failed to connect)")

rounds = int(os.environ.get("ROUNDS", "20"))
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
master, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])

tracker = None
if rank == 0:
    # The tracker listens where the job said the master listens; sorting by task makes the
    # collective's rank equal to RANK (each worker passes it as its task id).
    tracker = RabitTracker(n_workers=world, host_ip=socket.gethostbyname(master), port=port, sortby="task", timeout=300)
    tracker.start()

true_w = np.random.default_rng(0).normal(size=8)
rng = np.random.default_rng(100 + rank)  # a different shard per rank
x = rng.normal(size=(2000, 8))
y = (x @ true_w + 0.3 * rng.normal(size=2000) > 0).astype(np.float32)

args = {
    "dmlc_communicator": "rabit",
    "dmlc_tracker_uri": master,
    "dmlc_tracker_port": port,
    "dmlc_task_id": str(rank),
    "dmlc_retry": 30,  # the master may still be importing xgboost when the workers first knock
    "dmlc_timeout": 300,
}
with collective.CommunicatorContext(**args):
    assert (collective.get_rank(), collective.get_world_size()) == (rank, world)
    print(f"rank {rank} of {world}, tracker {master}:{port}", flush=True)
    train = xgb.DMatrix(x, label=y)
    history: dict = {}
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "eta": 0.3, "nthread": 1}
    callbacks = [progress.xgboost_callback(rounds)] if progress and rank == 0 else []  # one rank reports
    booster = xgb.train(
        params,
        train,
        num_boost_round=rounds,
        evals=[(train, "train")],
        evals_result=history,
        verbose_eval=5,
        callbacks=callbacks,
    )
    losses = history["train"]["logloss"]  # evaluated over every rank's rows
    total = float(collective.allreduce(np.array([rank + 1.0]), collective.Op.SUM)[0])
    digest = hashlib.sha256(bytes(booster.save_raw(raw_format="json"))).hexdigest()
    same = collective.broadcast(digest, 0) == digest  # rank 0's model hash, compared on every rank

if tracker is not None:
    tracker.wait_for(timeout=120)

ok = losses[-1] < 0.5 * losses[0] and total == world * (world + 1) / 2 and same
status = "ok" if ok else "FAILED"
print(
    f"RESULT {status} loss {losses[0]:.3f}->{losses[-1]:.4f} allreduce={total:.1f} world={world} model={digest}",
    flush=True,
)
raise SystemExit(0 if ok else 1)
