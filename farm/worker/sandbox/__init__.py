"""One sandbox for all package code: PEP 517 hooks, recipe commands, imports and tests.

Package code (zone 3 in docs/security.md) runs only through `Sandbox.run`, which every engine and
verification share. A `Policy` says what one command may see: the folders it may write (the job's
source tree, output and scratch folders), the ones it may read (the interpreter, the build or test
environment), whether it has network (only when a recipe grants it), its environment (an explicit
list: nothing of the worker's `FARM_*`, tokens or Docker variables), and its resource limits.
Everything else of the host is absent: `FARM_HOME` (keys, database, configuration, storage, index,
broker, logs), the Docker socket, other jobs, `/root`, `/run`.

Each platform provides its implementation (`Platform.sandbox`): bubblewrap on Linux
(`farm/worker/sandbox/linux.py`), a `sandbox-exec` profile on macOS, a job object on Windows.
`settings.sandbox = false` turns it off (the benchmark's baseline, or a host without the tools).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from farm.util.cmd import CommandFailed, Result, run

if TYPE_CHECKING:
    from farm.config import Settings
    from farm.recipes.schema import Options

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_size(value: str | int) -> int:
    """`512m`, `8g`, `4096` (bytes) -> bytes."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (e.g. 512m, 8g)")
    return int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-command resource limits. None: no limit of that kind."""

    memory: int | None = None  # bytes of address space per process
    processes: int | None = None  # processes (and threads) of the sandbox's user at once
    file_size: int | None = None  # bytes, the largest file it may write
    cpu_seconds: int | None = None  # CPU time per process

    def describe(self) -> dict[str, int | None]:
        return {"memory": self.memory, "processes": self.processes, "fileSize": self.file_size,
                "cpuSeconds": self.cpu_seconds}


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What one sandboxed command may see and do."""

    cwd: Path
    writable: tuple[Path, ...] = ()
    readable: tuple[Path, ...] = ()
    network: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    tmp: Path | None = None  # a folder of the job's that appears as /tmp (else a private empty one)

    def adding(self, *, writable: Sequence[Path] = (), readable: Sequence[Path] = (),
               env: Mapping[str, str] | None = None) -> Policy:
        return replace(self, writable=(*self.writable, *writable), readable=(*self.readable, *readable),
                       env={**self.env, **(env or {})})


@dataclass(kw_only=True)
class Wrapped:
    """A sandboxed command line and the descriptors it needs open (closed by `run_sandboxed`)."""

    argv: list[str]
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class Sandbox(Protocol):
    name: str

    def wrap(self, argv: Sequence[str], policy: Policy) -> Wrapped:
        """The command line that runs `argv` inside the sandbox described by `policy`."""

    def prepare(self, policy: Policy) -> None:
        """Make the policy's writable folders writable by the sandbox's user (ownership)."""

    def describe(self) -> dict[str, Any]:
        """What the boundary is made of, for provenance records."""


class Unsandboxed:
    """No boundary: package code runs with the worker's rights (`sandbox = false`)."""

    name = "none"

    def wrap(self, argv: Sequence[str], policy: Policy) -> Wrapped:
        return Wrapped(argv=list(argv))

    def prepare(self, policy: Policy) -> None:
        make_folders(policy)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}


def make_folders(policy: Policy) -> list[Path]:
    """Create the policy's writable folders (and its /tmp); return them."""
    folders = [Path(p) for p in (*policy.writable, *([policy.tmp] if policy.tmp else []))]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def run_sandboxed(sandbox: Sandbox, argv: Sequence[str | os.PathLike[str]], policy: Policy, *, log: TextIO | None,
                  timeout: float | None) -> Result:
    """Run package code: `argv` inside `sandbox` under `policy`, through the farm's one runner.

    Raises CommandFailed like `run`; when the output or the exit status shows that a limit was hit,
    the exception's `limit` names it (see `limit_hit`)."""
    args = [os.fspath(a) for a in argv]
    sandbox.prepare(policy)
    wrapped = sandbox.wrap(args, policy)
    try:
        return run(wrapped.argv, cwd=policy.cwd, env=dict(policy.env), log=log, timeout=timeout, pass_fds=wrapped.fds)
    except CommandFailed as exc:
        exc.limit = limit_hit(exc.result, policy.limits)  # type: ignore[attr-defined]
        raise
    finally:
        wrapped.close()


def failure_message(exc: CommandFailed) -> str:
    """A failed sandboxed command's message, led by the limit it hit (if `run_sandboxed` found one)."""
    limit = getattr(exc, "limit", None)
    return f"{limit}; a recipe's `limits` raises it\n{exc}" if limit else str(exc)


_SIGXCPU, _SIGXFSZ = 24, 25
_FORK = re.compile(r"Resource temporarily unavailable|BlockingIOError|Cannot fork|fork: retry|"
                   r"can't start new thread|Cannot allocate thread", re.I)
_MEMORY = re.compile(r"\bMemoryError\b|Cannot allocate memory|std::bad_alloc|out of memory|"
                     r"virtual memory exhausted|memory exhausted", re.I)


def limit_hit(result: Result, limits: Limits) -> str | None:
    """Which of the sandbox's limits a failed command most likely hit, as a sentence; None if none."""
    status = result.returncode
    if limits.cpu_seconds and status in (-_SIGXCPU, 128 + _SIGXCPU):
        return f"the sandbox's CPU time limit ({limits.cpu_seconds} s per process) was reached"
    if limits.file_size and (status in (-_SIGXFSZ, 128 + _SIGXFSZ) or "File too large" in result.output):
        return f"the sandbox's file size limit ({_human(limits.file_size)}) was reached"
    if limits.processes and _FORK.search(result.output):
        return f"the sandbox's process limit ({limits.processes} processes) was reached"
    if limits.memory and _MEMORY.search(result.output):
        return f"the sandbox's memory limit ({_human(limits.memory)} per process) was reached"
    return None


def _human(n: int) -> str:
    for unit in ("t", "g", "m", "k"):
        size = 1024 ** "bkmgt".index(unit)
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n} bytes"


# The only variables of the worker's environment that reach package code; everything else (FARM_*,
# tokens, DOCKER_HOST, the broker URL, cloud credentials) stays outside.
PASSED_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SSL_CERT_FILE", "SSL_CERT_DIR",
                    "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS", "PKG_CONFIG_PATH")


def package_env(*, home: Path, path: Sequence[Path | str] = (), network: bool = False,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment package code gets: a fixed PATH, its own HOME, no installer configuration
    (and, without network, installers told so at once instead of timing out)."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_VARIABLES}
    env.update({
        "PATH": os.pathsep.join([*map(str, path), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home), "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
        "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_NO_CONFIG": "1",
    })
    if not network:
        env.update({"PIP_NO_INDEX": "1", "UV_OFFLINE": "1"})
    env.update(extra or {})
    return env


# Python 2 has no base prefixes: a virtualenv's base is its real_prefix, an interpreter's its prefix.
_ROOTS = ("import json, sys; print(json.dumps(sorted({getattr(sys, p, getattr(sys, 'real_prefix', sys.prefix)) "
          "for p in ('base_prefix', 'base_exec_prefix')})))")


def interpreter_roots(python: str | os.PathLike[str]) -> tuple[Path, ...]:
    """The folders an interpreter (or a venv made from it) needs to run: its base prefixes."""
    return _interpreter_roots(os.fspath(python))


@lru_cache(maxsize=64)
def _interpreter_roots(python: str) -> tuple[Path, ...]:
    import json

    return tuple(Path(p) for p in json.loads(run([python, "-c", _ROOTS], timeout=60).output))


def job_limits(settings: Settings, options: Options) -> Limits:
    """The farm's default limits (settings), raised or lowered by the recipe's `limits`."""
    wanted = options.limits
    memory = wanted.memory or settings.sandbox_memory
    file_size = wanted.file_size or settings.sandbox_file_size
    return Limits(memory=parse_size(memory) if memory else None,
                  processes=wanted.processes or settings.sandbox_processes or None,
                  file_size=parse_size(file_size) if file_size else None,
                  cpu_seconds=wanted.cpu_time or settings.sandbox_cpu_time or int(settings.build_timeout))


__all__ = ["Limits", "Policy", "Sandbox", "Unsandboxed", "Wrapped", "failure_message", "interpreter_roots",
           "job_limits", "limit_hit", "make_folders", "package_env", "parse_size", "run_sandboxed"]
