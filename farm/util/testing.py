"""Test-only hooks: named points where a fault-injection test may kill the process.

`kill_point(name)` does nothing unless the process runs with FARM_TEST_KILL_POINTS=1. Then, when
the file `$FARM_HOME/test-kill-at` names this point, the file is removed and the process kills
itself with SIGKILL on the spot (no cleanup, no `finally`, no after-commit action): a crash at that
step. One-shot, so a restarted process runs on; armed by a test per fault (tests/test_faults.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "FARM_TEST_KILL_POINTS"
TRIGGER = "test-kill-at"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) != "1":
        return
    trigger = Path(os.environ.get("FARM_HOME", ".")) / TRIGGER
    try:
        armed = trigger.read_text().strip()
    except OSError:
        return
    if armed != name:
        return
    try:
        trigger.unlink()
    except FileNotFoundError:  # another process took it
        return
    os.kill(os.getpid(), signal.SIGKILL)
