"""macOS: a `sandbox-exec` profile (Seatbelt), limits by `ulimit`.

The profile allows by default and then denies what package code must not do: every network
operation (unless the recipe grants network), every write outside the policy's writable folders
and the private temporary folder, and every read of the worker's home and `FARM_HOME` outside the
policy's folders. Limits are set with the shell's `ulimit` before the command is executed; the
farm's runner ends the whole process group when the command ends or times out.

This host cannot run macOS: the profile and the command line are tested on Linux (marked
`fake_os`); they have not run on a real macOS worker here (docs/security.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from farm.worker.sandbox import Policy, Wrapped, make_folders


def _quote(path: Path | str) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile(policy: Policy, *, hidden: Sequence[Path]) -> str:
    """The Seatbelt profile for one command."""
    writable = [*policy.writable, *([policy.tmp] if policy.tmp else [])]
    visible = [*policy.readable, *writable]
    lines = ["(version 1)", "(allow default)"]
    if not policy.network:
        lines.append("(deny network*)")
    lines.append("(deny file-write* (require-not (require-any "
                 + " ".join(f"(subpath {_quote(p)})" for p in writable)
                 + ' (literal "/dev/null") (literal "/dev/tty") (subpath "/dev/fd"))))')
    for folder in hidden:
        allowed = [p for p in visible if str(p).startswith(str(folder) + os.sep) or p == folder]
        rule = f"(subpath {_quote(folder)})"
        if allowed:
            rule = f"(require-all {rule} (require-not (require-any {' '.join(f'(subpath {_quote(p)})' for p in allowed)})))"
        lines.append(f"(deny file-read* {rule})")
    return "\n".join(lines) + "\n"


class SandboxExec:
    name = "sandbox-exec"

    def __init__(self, *, hidden: Sequence[Path]) -> None:
        self.hidden = list(hidden)  # the worker's home and FARM_HOME: never readable but for the policy's paths

    def wrap(self, argv: Sequence[str], policy: Policy) -> Wrapped:
        limits = policy.limits
        ulimits = [f"ulimit -v {limits.memory // 1024}" if limits.memory else "",
                   f"ulimit -u {limits.processes}" if limits.processes else "",
                   f"ulimit -f {limits.file_size // 512}" if limits.file_size else "",
                   f"ulimit -t {limits.cpu_seconds}" if limits.cpu_seconds else ""]
        script = "; ".join([*filter(None, ulimits), 'exec "$@"'])
        return Wrapped(argv=["/usr/bin/sandbox-exec", "-p", profile(policy, hidden=self.hidden),
                             "/bin/sh", "-c", script, "sandboxed", *argv])

    def prepare(self, policy: Policy) -> None:
        make_folders(policy)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "hidden": [str(p) for p in self.hidden]}
