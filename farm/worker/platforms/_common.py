"""Pieces shared by the platform modules (interpreter discovery, wheel tags)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from packaging.markers import default_environment
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from farm.errors import ConfigError, PackageFailure
from farm.util.cmd import CommandFailed, run
from farm.util.python_tags import PythonTag, sort_key
from farm.worker.platforms.base import Interpreter, Offer, Platform

if TYPE_CHECKING:
    from farm.config import Settings

def tool(name: str) -> str:
    """A repair tool: the one installed beside the worker's interpreter (bin/ or Scripts\\, `name` or
    `name`.exe), else the one on PATH, else `name` itself (its absence is reported when it is run)."""
    here = Path(sys.executable).parent
    for local in (here / name, here / f"{name}.exe"):
        if local.is_file():
            return str(local)
    return shutil.which(name) or name


# Runs on Python 2.7 too (no sys.implementation there), which a worker offers only when configured.
_PROBE = ("import json, platform, sys, sysconfig; print(json.dumps([platform.python_implementation().lower(), "
          "list(sys.version_info[:2]), bool(sysconfig.get_config_var('Py_GIL_DISABLED'))]))")


@lru_cache(maxsize=64)
def probe_interpreter(path: str) -> Interpreter:
    """The interpreter at `path`: CPython's version, and whether it is the free-threaded build (cp314t)."""
    if Path(path).absolute() == Path(sys.executable).absolute():
        import sysconfig

        impl, ver = sys.implementation.name, list(sys.version_info[:2])
        threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    else:
        try:
            out = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"interpreter {path!r} cannot be run: {exc}") from exc
        impl, ver, threaded = json.loads(out)
    if impl != "cpython":
        raise ConfigError(f"interpreter {path!r} is {impl}, only CPython is built")
    return Interpreter(tag=f"cp{ver[0]}{ver[1]}{'t' if threaded else ''}", path=Path(path), version=(ver[0], ver[1]))


def find_interpreters(configured: Sequence[str], *, exe_names: Sequence[str]) -> list[Interpreter]:
    """Each entry is a path to an interpreter or a version like 3.11 looked up on PATH; nothing
    configured: every CPython this host has (`discover_interpreters`)."""
    if not configured:
        return discover_interpreters(tuple(exe_names))
    found: dict[str, Interpreter] = {}
    for entry in configured:
        path = entry
        if not Path(entry).is_file():
            candidates = [name.format(v=entry) for name in exe_names]
            hit = next((p for c in candidates if (p := shutil.which(c))), None)
            if hit is None:
                raise ConfigError(f"no interpreter for {entry!r} on PATH (tried {', '.join(candidates)})")
            path = hit
        interp = probe_interpreter(path)
        if interp.version[0] < 3 and interp.version != (2, 7):
            raise ConfigError(f"interpreter {path!r} is CPython {interp.version[0]}.{interp.version[1]}: of Python 2, "
                              "only 2.7 is built (the last pip and virtualenv for Python 2 need it)")
        found.setdefault(interp.tag, interp)
    return list(found.values())


DISCOVERED_MINORS = range(6, 20)  # CPython 3.6 ... 3.19 looked for by name


def _candidates(exe_names: Sequence[str]) -> list[str]:
    """Where CPythons are looked for, in this order: the farm's own interpreter, PATH (and the
    platform's usual places, `exe_names`), pyenv's versions, uv's managed Pythons."""
    paths = [sys.executable]
    for minor in reversed(DISCOVERED_MINORS):
        versions = (f"3.{minor}", f"3.{minor}t") if minor >= 13 else (f"3.{minor}",)  # python3.14t: free-threaded
        for exe in (name.format(v=v) for v in versions for name in exe_names):
            hit = exe if Path(exe).is_absolute() and Path(exe).is_file() else shutil.which(exe)
            if hit and "shims" not in Path(hit).parts:  # pyenv's shims: its versions are read below
                paths.append(hit)
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    uv = Path(os.environ.get("UV_PYTHON_INSTALL_DIR") or Path(os.environ.get("XDG_DATA_HOME")
                                                                 or Path.home() / ".local" / "share") / "uv" / "python")
    for root in (pyenv, uv):
        if root.is_dir():
            for version in sorted(root.iterdir()):
                paths += [str(p) for p in (version / "bin" / "python3", version / "python.exe") if p.is_file()]
    return paths


@lru_cache(maxsize=8)
def discover_interpreters(exe_names: tuple[str, ...] = ("python{v}",)) -> list[Interpreter]:
    """Every CPython 3 this host has, one per version (the first found wins: the farm's own, then
    PATH, pyenv, uv), oldest first. What cannot be run, or is no CPython 3, is left out: Python 2.7
    is offered only when the `pythons` setting names it (farm/worker/python2.py)."""
    found: dict[str, Interpreter] = {}
    for path in _candidates(exe_names):
        try:
            interp = probe_interpreter(path)
        except ConfigError:
            continue
        if interp.version[0] == 3:
            found.setdefault(interp.tag, interp)
    return sorted(found.values(), key=lambda i: sort_key(i.tag))


def host_offers(platform: Platform, settings: Settings) -> list[Offer]:
    """The Pythons of the interpreters this host has for `platform` (the native engine)."""
    return [Offer(python=i.tag) for i in platform.interpreters(settings.interpreters)]


def marker_environment(python: str, *, system: tuple[str, str, str] | None, machine: str) -> dict[str, str]:
    """PEP 508 marker values for Python `python` (cp311, pp310) on a platform whose `system` is
    (sys_platform, platform_system, os_name) and whose machine is `machine`; what neither says
    (platform_release, platform_version, implementation_version, and the rest when they are not
    given) is this host's."""
    env = dict(default_environment())
    tag = PythonTag.parse(python)
    if tag:
        env["python_version"] = tag.dotted
        env["python_full_version"] = f"{tag.dotted}.0"
        if tag.implementation == "pp":
            env["implementation_name"], env["platform_python_implementation"] = "pypy", "PyPy"
        elif tag.implementation == "cp":
            env["implementation_name"], env["platform_python_implementation"] = "cpython", "CPython"
    if system is not None:
        env["sys_platform"], env["platform_system"], env["os_name"] = system
    if machine:
        env["platform_machine"] = machine
    return env


def tags_for(python: tuple[int, int], platforms: Sequence[str], *, threaded: bool = False) -> list[Tag]:
    """The wheel tags CPython `python` installs on `platforms`, most specific first; a free-threaded
    build (`threaded`) takes its own ABI (cp314t) and none, never abi3."""
    abis = [f"cp{python[0]}{python[1]}t"] if threaded else None
    return [*cpython_tags(python_version=python, abis=abis, platforms=platforms),
            *compatible_tags(python_version=python, platforms=platforms)]


def wheel_tags(wheel: Path | str) -> list[str]:
    _, _, _, tags = parse_wheel_filename(Path(wheel).name)
    return sorted(str(t) for t in tags)


def is_pure(wheel: Path | str) -> bool:
    return all(t.endswith("-any") for t in wheel_tags(wheel))


def copy_pure(wheel: Path, dest: Path, log: TextIO) -> Path | None:
    """A pure-Python wheel needs no repair: copy it into `dest` (None for a platform wheel)."""
    dest.mkdir(parents=True, exist_ok=True)
    if not is_pure(wheel):
        return None
    log.write(f"{wheel.name} is pure Python: nothing to repair\n")
    return Path(shutil.copy2(wheel, dest / wheel.name))


def repair_with(tool: str, command: Callable[[Path], list[str]], *, dest: Path, env: Mapping[str, str],
                log: TextIO, tag_ok: Callable[[Sequence[str]], bool], wanted: str) -> Path:
    """Run a repair tool writing into a fresh folder below `dest`; exactly one wheel must come out,
    carrying a platform tag `tag_ok` accepts (`wanted` says which, for the message)."""
    out = Path(tempfile.mkdtemp(prefix=f".{tool}-", dir=dest))
    try:
        try:
            run(command(out), env=env, log=log, timeout=600)
        except CommandFailed as exc:
            raise PackageFailure("repair", str(exc)) from exc
        repaired = sorted(out.glob("*.whl"))
        if len(repaired) != 1:
            raise PackageFailure("repair", f"{tool} produced {len(repaired)} wheels")
        if not tag_ok(wheel_tags(repaired[0])):
            raise PackageFailure("repair", f"repaired wheel {repaired[0].name} has no {wanted}")
        return Path(shutil.move(repaired[0], dest / repaired[0].name))
    finally:
        shutil.rmtree(out, ignore_errors=True)
