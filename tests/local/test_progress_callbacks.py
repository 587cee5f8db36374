"""mljob.progress's Keras and XGBoost callbacks in real training, through ``mljob run``'s endpoint: a ``model.fit``
and an ``xgb.train`` report every step of the whole fit, and the run's summary ends at 100% with the framework's
own metric names (Keras' ``loss``, XGBoost's ``train-logloss``).

The job runs :func:`mljob.local.run_file` with the tiny framework (``localfw.py``), as test_progress_local.py does.
"""

from __future__ import annotations

import io
import re

import pytest
from localfw import container, tiny_plugins, write_job

from mljob.local import run_file

pytestmark = pytest.mark.frameworks

KERAS = """
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import keras
from mljob import progress
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
y = x @ np.ones((4, 1), dtype="float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[progress.keras_callback(every=0)])
print("FIT done")
"""

XGBOOST = """
import numpy as np
import xgboost as xgb
from mljob import progress
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 4))
train = xgb.DMatrix(x, label=(x[:, 0] > 0).astype(int))
params = {"objective": "binary:logistic", "eval_metric": "logloss", "nthread": 1}
xgb.train(params, train, 12, evals=[(train, "train")], callbacks=[progress.xgboost_callback(12, every=0)])
print("FIT done")
"""


def summary(script: str, tmp_path) -> str:
    job = write_job(tmp_path, {"Lead": (1, "Never", container(["python", "-c", script]))})
    out, err = io.StringIO(), io.StringIO()
    code = run_file(job, plugins=tiny_plugins(), out=out, err=err, live=False)
    text = out.getvalue()
    assert code == 0, text + err.getvalue()
    assert "[lead-0] FIT done" in text
    (line,) = [line for line in text.splitlines() if line.startswith("[mljob] progress")]
    return line


def test_the_keras_callback_reports_every_step_of_the_fit(tmp_path):
    line = summary(KERAS, tmp_path)
    assert line.startswith("[mljob] progress 100% (step 24/24)"), line  # 3 epochs of 64/8 batches
    assert re.search(r"loss=[0-9.e-]+", line), line
    assert "epoch=3" in line, line


def test_the_xgboost_callback_reports_every_round(tmp_path):
    line = summary(XGBOOST, tmp_path)
    assert line.startswith("[mljob] progress 100% (step 12/12)"), line
    assert re.search(r"train-logloss=0\.[0-9]+", line), line
