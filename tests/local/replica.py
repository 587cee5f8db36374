"""One script for every local-runtime failure test: argv picks the behaviour.

It records its pid (and a grandchild's) under $STATE so a test can check that nothing is left,
and counts its runs per replica so "fail the first time" needs no other state.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

me = os.environ["TINY_ME"]
state = Path(os.environ.get("STATE", "."))
with (state / f"{me}.pids").open("a") as f:
    f.write(f"{os.getpid()}\n")
runs_file = state / f"{me}.runs"
runs = int(runs_file.read_text()) + 1 if runs_file.exists() else 1
runs_file.write_text(str(runs))
mode, *rest = sys.argv[1:]
print(f"{me} run {runs}: {mode} {' '.join(rest)}", flush=True)

if mode == "exit":
    sys.exit(int(rest[0]))
elif mode == "exit-first":  # exit with the code on the first run, 0 afterwards
    sys.exit(int(rest[0]) if runs == 1 else 0)
elif mode == "fail-times":  # exit 1 on the first N runs
    sys.exit(1 if runs <= int(rest[0]) else 0)
elif mode == "sleep":
    time.sleep(float(rest[0]))
elif mode == "grandchild":  # a child in the same process group that would outlive us
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with (state / f"{me}.pids").open("a") as f:
        f.write(f"{child.pid}\n")
    print("grandchild started", flush=True)
    time.sleep(float(rest[0]) if rest else 300)
elif mode == "regrouped":  # a child that left our process group: only the session still ties it to us
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], process_group=0)
    with (state / f"{me}.pids").open("a") as f:
        f.write(f"{child.pid}\n")
    print("regrouped child started", flush=True)
    time.sleep(float(rest[0]))
elif mode == "stubborn":  # ignores SIGTERM (says so): only SIGKILL stops it

    def ignore(*_: object) -> None:
        (state / f"{me}.sigterm").touch()
        print("SIGTERM ignored", flush=True)

    signal.signal(signal.SIGTERM, ignore)
    (state / f"{me}.ready").touch()
    print("ignoring SIGTERM", flush=True)
    while True:
        time.sleep(300)
elif mode == "wait-for":  # exit 0 once $STATE/<file> exists
    while not (state / rest[0]).exists():
        time.sleep(0.01)
elif mode == "chatty":  # a line every few milliseconds, until stopped
    while True:
        print(f"{me} still here", flush=True)
        time.sleep(0.005)
elif mode == "echo":
    print(" ".join(rest), flush=True)
    print("MY_VAR=" + os.environ.get("MY_VAR", "<unset>"), flush=True)
    print("no newline at the end", end="", flush=True)
else:
    sys.exit(f"unknown mode {mode}")
