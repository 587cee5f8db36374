"""A child process with its output appended to a log file: the operator's and the node agent's, in the tests.

Stopped as Kubernetes stops a container (SIGTERM, then SIGKILL after a grace period), killed as a crash or an OOM
kill is (SIGKILL, no cleanup), its log read back for a failing test's report.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path


class LoggedProcess:
    """Started by a subclass (``self.proc``), stopped or killed here."""

    grace = 15.0
    """Seconds between SIGTERM and SIGKILL in :meth:`stop`."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no goodbye; what a node failure or an OOM kill looks like."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
