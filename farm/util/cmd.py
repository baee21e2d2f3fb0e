"""The one way the farm runs a program: logged command line, enforced timeout, captured output.

Every build, repair and test command goes through `run`, so each job log shows exactly what ran,
for how long, and what it printed.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from farm.errors import CommandFailed


@dataclass(frozen=True, kw_only=True)
class Result:
    argv: list[str]
    returncode: int
    output: str
    seconds: float

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log: TextIO | None = None,
    check: bool = True,
    shell: bool = False,
    pass_fds: Sequence[int] = (),
) -> Result:
    """Run `argv` (or a shell command line when `shell`), stream its output into `log`.

    `env` replaces the environment entirely when given (callers build it from `clean_env`).
    On timeout the whole process group is killed. `pass_fds` stay open in the child (the sandbox
    binds folders from descriptors opened before it drops root).
    """
    args = [os.fspath(a) for a in argv]
    shown = args[0] if shell else shlex.join(args)
    if log is not None:
        log.write(f"$ {shown}\n" + (f"  (in {cwd})\n" if cwd else ""))
        log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(
        args[0] if shell else args,
        shell=shell,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        **_NEW_GROUP,
        text=True,
        errors="replace",
    )
    chunks: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            chunks.append(line)
            if log is not None:
                log.write(line)
        if log is not None:
            log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    except BaseException:
        _kill_group(proc)
        raise
    reader.join(timeout=10)
    result = Result(argv=args, returncode=proc.returncode, output="".join(chunks),
                    seconds=time.monotonic() - start)
    if log is not None:
        log.write(f"  -> exit {result.returncode} in {result.seconds:.2f} s\n")
        log.flush()
    if timed_out or (check and result.returncode != 0):
        raise CommandFailed(result, timed_out=timed_out)
    return result


# Each command runs in its own process group so that a timeout ends it with everything it started.
_NEW_GROUP: dict[str, Any] = (
    {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True})


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if os.name == "nt":  # no process groups to signal: taskkill ends the tree
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# Variables that make pip or uv look somewhere other than where the farm says.
_INSTALLER_VARS = ("PIP_", "UV_")


def clean_env(extra: Mapping[str, str] | None = None, *, path_prepend: Sequence[Path] = ()) -> dict[str, str]:
    """The host environment without pip/uv configuration, plus `extra`.

    Hosts often carry `/etc/pip.conf`, `PIP_FIND_LINKS` or extra indexes; a build or a verification
    must use exactly the indexes the farm names, so they are removed here and the installers are
    told to ignore their configuration files.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INSTALLER_VARS) and k != "VIRTUAL_ENV"}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["UV_NO_CONFIG"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for var in ("UV_CACHE_DIR", "PIP_CERT"):
        if var in os.environ:
            env[var] = os.environ[var]
    if path_prepend:
        env["PATH"] = os.pathsep.join([*map(str, path_prepend), env.get("PATH", "")])
    env.update(extra or {})
    return env
