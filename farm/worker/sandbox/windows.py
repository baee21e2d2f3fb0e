"""Windows: a job object that holds the command and everything it starts.

`python -m farm.worker.sandbox.windows LIMITS -- ARGV` puts itself into a new job object
(kill-on-close, active-process, per-process memory and CPU-time limits), then starts ARGV, which
inherits the job, and waits; when it ends (or the farm's runner ends it with `taskkill /T`) the
job is closed and every process left in it is killed. The environment is the policy's: nothing of
the worker's `FARM_*`, tokens or Docker variables.

What it does not do yet: a restricted token (lower integrity, no write outside the job's
folders) and a firewall rule per job for the network; docs/security.md says so. This host cannot
run Windows: the command line is tested on Linux (marked `fake_os`), the launcher has not run on
a real Windows worker here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from farm.worker.sandbox import Policy, Wrapped, make_folders


class JobObject:
    name = "job-object"

    def __init__(self, *, python: str = sys.executable) -> None:
        self.python = python

    def wrap(self, argv: Sequence[str], policy: Policy) -> Wrapped:
        limits = policy.limits
        opts = [f"--memory={limits.memory or 0}", f"--processes={limits.processes or 0}",
                f"--cpu={limits.cpu_seconds or 0}"]
        return Wrapped(argv=[self.python, "-m", "farm.worker.sandbox.windows", *opts, "--", *argv])

    def prepare(self, policy: Policy) -> None:
        make_folders(policy)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "restricted_token": False, "network": "not isolated"}


def _main(args: list[str]) -> int:  # pragma: no cover - runs on Windows only
    import ctypes
    import subprocess
    from ctypes import wintypes

    split = args.index("--")
    opts = dict(a.lstrip("-").split("=", 1) for a in args[:split])
    argv = args[split + 1:]

    class IoCounters(ctypes.Structure):
        _fields_ = [(n, ctypes.c_ulonglong) for n in ("r", "w", "o", "rb", "wb", "ob")]

    class Basic(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_longlong), ("PerJobUserTimeLimit", ctypes.c_longlong),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                    ("SchedulingClass", wintypes.DWORD)]

    class Extended(ctypes.Structure):
        _fields_ = [("Basic", Basic), ("Io", IoCounters), ("ProcessMemoryLimit", ctypes.c_size_t),
                    ("JobMemoryLimit", ctypes.c_size_t), ("PeakProcessMemoryUsed", ctypes.c_size_t),
                    ("PeakJobMemoryUsed", ctypes.c_size_t)]

    kill_on_close, active, memory, cpu = 0x2000, 0x8, 0x100, 0x2
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    job = kernel32.CreateJobObjectW(None, None)
    info = Extended()
    info.Basic.LimitFlags = kill_on_close
    if int(opts["processes"]):
        info.Basic.LimitFlags |= active
        info.Basic.ActiveProcessLimit = int(opts["processes"])
    if int(opts["memory"]):
        info.Basic.LimitFlags |= memory
        info.ProcessMemoryLimit = int(opts["memory"])
    if int(opts["cpu"]):
        info.Basic.LimitFlags |= cpu
        info.Basic.PerProcessUserTimeLimit = int(opts["cpu"]) * 10_000_000
    kernel32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info))
    kernel32.AssignProcessToJobObject(job, kernel32.GetCurrentProcess())
    return subprocess.call(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
