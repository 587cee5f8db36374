"""``mljob run`` with the test framework instead of the installed plugins, for tests that need a
real separate process (signals): ``python driver.py JOB [LOGS_DIR]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from localfw import tiny_plugins

from mljob.local import run_file

if __name__ == "__main__":
    sys.exit(run_file(sys.argv[1], plugins=tiny_plugins()))
