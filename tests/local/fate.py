"""A replica for the fate tests (test_local_fate.py): ``NAME forever``, ``NAME go CODE`` (exit with CODE once
$STATE/go exists) or ``NAME exit CODE``. It marks $STATE/NAME-PID.ready first, so a test knows it runs."""

import os
import sys
import time
from pathlib import Path

state = Path(os.environ["STATE"])
name, mode, *rest = sys.argv[1:]
(state / f"{name}-{os.getpid()}.ready").touch()
if mode == "forever":
    time.sleep(300)
elif mode == "go":
    while not (state / "go").exists():
        time.sleep(0.01)
    sys.exit(int(rest[0]))
elif mode == "exit":
    sys.exit(int(rest[0]))
else:
    sys.exit(f"unknown mode {mode}")
