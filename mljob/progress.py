"""Report training progress from any script: ``mljob.progress.report(step=..., total=..., loss=...)``.

Standard library only, so it runs in every framework's environment (import it as ``from mljob import progress``;
nothing else of mljob is imported). It speaks Kubeflow Trainer's ``TrainJobStatus`` protocol with the env Trainer
injects (``KUBEFLOW_TRAINER_SERVER_URL``, ``..._CA_CERT``, ``..._TOKEN``), which the mljob operator and
``mljob run`` give every replica; outside a job (no URL in the env) it does nothing and returns False.

It never raises and never blocks training for long: a failed report is logged once and dropped, and calls are
thinned to one request per ``every`` seconds (the last step always goes). Call it from one process (rank 0); the
operator keeps the latest report of the job. See docs/progress.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
MAX_METRICS = 256
MAX_TEXT = 64
"""Metrics in a report, and characters in a metric's name and value: Trainer's limits (the endpoint refuses a
report that passes them, so a metric that would is left out instead)."""
TIMEOUT = 5.0
TOKEN_TTL = 60.0
"""Seconds a token read from its file is used before the file is read again (the kubelet renews it)."""

logger = logging.getLogger("mljob.progress")
_lock = threading.Lock()
_last_sent = -math.inf
_token: tuple[float, str] | None = None
_context: ssl.SSLContext | None = None
_warned = False


def enabled() -> bool:
    """Whether this process runs in a job that takes reports (the endpoint's URL is in its env)."""
    return bool(os.environ.get(ENV_URL))


def report(
    step: int | None = None,
    total: int | None = None,
    *,
    percent: int | None = None,
    eta: int | None = None,
    every: float = 1.0,
    **metrics: float | int | str,
) -> bool:
    """Report how far training is: ``step`` of ``total`` (the percentage and ETA are worked out from them when
    not given), and named metrics (``loss=0.31``). True when the report was taken.

    A call within ``every`` seconds of the last report sent is skipped (False), unless it is the last step or
    100%: a loop may call it every step.
    """
    return send(step, total, percent=percent, eta=eta, every=every, metrics=metrics)


def send(
    step: int | None = None,
    total: int | None = None,
    *,
    percent: int | None = None,
    eta: int | None = None,
    every: float = 1.0,
    metrics: dict[str, float | int | str] | None = None,
) -> bool:
    """:func:`report` with the metrics as a dict: for names that are not Python identifiers (``val/loss``)."""
    global _last_sent
    url = os.environ.get(ENV_URL)
    if not url:
        return False
    step, total, percent, eta = _whole(step), _whole(total), _whole(percent), _whole(eta)
    final = (step is not None and total is not None and step >= total) or percent == 100
    now = time.monotonic()
    with _lock:
        if not final and now - _last_sent < every:
            return False
        _last_sent = now
    status: dict[str, Any] = {"lastUpdatedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if step is not None:
        status["step"] = step
    if total is not None:
        status["totalSteps"] = total
    if percent is not None:
        status["progressPercentage"] = max(0, min(100, percent))
    if eta is not None:
        status["estimatedRemainingSeconds"] = max(0, eta)
    values = [{"name": str(k), "value": _text(v)} for k, v in (metrics or {}).items() if _finite(v)]
    values = [m for m in values if 1 <= len(m["name"]) <= MAX_TEXT and 1 <= len(m["value"]) <= MAX_TEXT]
    if values:
        status["metrics"] = values[:MAX_METRICS]
    return _post(url, {"trainerStatus": status})


def _whole(value: Any) -> int | None:
    """An integer argument as an int; None (left out of the report) when it is not one (``nan``, ``inf``)."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _finite(value: Any) -> bool:
    """Whether a metric's value may be sent: any string or integer, a number only when finite (numpy's float32
    and a one-element tensor included: ``str()`` of those would send ``nan`` or ``tensor(0.31, grad_fn=...)``)."""
    if isinstance(value, str | numbers.Integral):
        return True
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return True  # sent as its str()


def _text(value: Any) -> str:
    """A metric's value as Trainer's wire wants it: a string; floats shortened (``0.0421``, not 17 digits)."""
    if isinstance(value, str | bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _read_token() -> str | None:
    global _token
    now = time.monotonic()
    if _token is not None and now - _token[0] < TOKEN_TTL:
        return _token[1]
    where = os.environ.get(ENV_TOKEN)
    if not where:
        return None
    try:
        with open(where, encoding="utf-8") as file:
            _token = (now, file.read().strip())
    except OSError:
        return None
    return _token[1]


def _ssl_context() -> ssl.SSLContext:
    global _context
    if _context is None:
        ca = os.environ.get(ENV_CA_CERT)
        _context = ssl.create_default_context(cafile=ca if ca and os.path.exists(ca) else None)
    return _context


def _post(url: str, body: dict[str, Any]) -> bool:
    token = _read_token()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        context = _ssl_context() if url.startswith("https:") else None
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            return bool(200 <= response.status < 300)
    except urllib.error.HTTPError as error:
        try:
            reason = error.read(300).decode(errors="replace")
        except OSError:
            reason = ""
        _say_once(f"progress report refused: HTTP {error.code} {reason}")
        return False
    except (OSError, ValueError) as error:
        ca = os.environ.get(ENV_CA_CERT)
        trust = f" (CA file {ca}: {'present' if ca and os.path.exists(ca) else 'missing'})" if ca else ""
        _say_once(f"progress report not sent to {url}: {error}{trust}")
        return False


def _say_once(text: str) -> None:
    """The first failure, on stderr where the job's log is: a framework's logging setup (or none) must not hide
    it, and one line is enough; the next reports are tried as usual."""
    global _warned
    if not _warned:
        _warned = True
        logger.debug(text)
        with contextlib.suppress(OSError, ValueError):
            print(f"[mljob.progress] {text}", file=sys.stderr, flush=True)


def keras_callback(total: int | None = None, every: float = 1.0) -> Any:
    """A Keras callback that reports each batch's step and logs (``loss``...), and each epoch's metrics.

    ``total`` is the steps of the whole fit (epochs x steps per epoch); by default it is read from the fit's
    params. The step counts from the fit's first epoch, so a fit resumed with ``initial_epoch`` and one with
    ``steps_per_execution`` report the true step. Keras is imported here, not when this module is."""
    import keras  # type: ignore[import-not-found,import-untyped,unused-ignore]

    class ProgressCallback(keras.callbacks.Callback):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            super().__init__()
            self.total = total
            self.per_epoch: int | None = None
            self.start = 0  # steps done before this epoch
            self.step = 0
            self.metrics: dict[str, float | int | str] = {}
            self.sent = True  # whether the latest state has gone out

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            params = self.params or {}
            self.per_epoch = int(params["steps"]) if params.get("steps") else None
            if self.total is None and self.per_epoch and params.get("epochs"):
                self.total = self.per_epoch * int(params["epochs"])

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.start = epoch * self.per_epoch if self.per_epoch else self.step

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            # batch: the index in this epoch of the last step run (the last of several with steps_per_execution,
            # which Keras' JAX backend counts past the epoch's end when the epoch's last group is short)
            done = batch + 1 if self.per_epoch is None else min(batch + 1, self.per_epoch)
            self._send(self.start + done, _numbers(logs), every)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self._send(self.step, {**_numbers(logs), "epoch": epoch + 1}, every)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if not self.sent:  # stopped early, or the total was unknown: the latest state still goes
                self._send(self.step, self.metrics, 0.0)

        def _send(self, step: int, metrics: dict[str, float | int | str], every: float) -> None:
            self.step, self.metrics = step, metrics
            self.sent = send(step, self.total, every=every, metrics=metrics)

    return ProgressCallback()


def xgboost_callback(rounds: int, every: float = 1.0) -> Any:
    """An XGBoost ``TrainingCallback`` that reports each boosting round of ``rounds`` and the latest evaluation
    results (``train-logloss``, as XGBoost prints them); with early stopping, the last round run goes too."""
    import xgboost  # type: ignore[import-not-found,import-untyped,unused-ignore]

    class ProgressCallback(xgboost.callback.TrainingCallback):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.metrics: dict[str, float | int | str] = {}
            self.sent = True

        def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
            latest = {f"{data}-{name}": v[-1] for data, found in evals_log.items() for name, v in found.items()}
            self.step, self.metrics = epoch + 1, _numbers(latest)
            self.sent = send(self.step, rounds, every=every, metrics=self.metrics)
            return False

        def after_training(self, model: Any) -> Any:
            if not self.sent:
                send(self.step, rounds, every=0.0, metrics=self.metrics)
            return model

    return ProgressCallback()


def _numbers(logs: dict[str, Any] | None) -> dict[str, float | int | str]:
    """The values of ``logs`` that are numbers, as floats; a pair (xgboost.cv's mean and deviation) by its first."""
    out: dict[str, float | int | str] = {}
    for key, value in (logs or {}).items():
        if isinstance(value, (tuple, list)) and value:
            value = value[0]
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out
