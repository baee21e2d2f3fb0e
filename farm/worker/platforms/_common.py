"""Pieces shared by the platform modules (interpreter discovery, wheel tags)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from farm.errors import ConfigError
from farm.worker.platforms.base import Interpreter

_PROBE = "import json, sys; print(json.dumps([sys.implementation.name, list(sys.version_info[:2])]))"


@lru_cache(maxsize=64)
def probe_interpreter(path: str) -> Interpreter:
    if Path(path).absolute() == Path(sys.executable).absolute():
        impl, ver = sys.implementation.name, list(sys.version_info[:2])
    else:
        try:
            out = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"interpreter {path!r} cannot be run: {exc}") from exc
        impl, ver = json.loads(out)
    if impl != "cpython":
        raise ConfigError(f"interpreter {path!r} is {impl}, only CPython is built")
    return Interpreter(tag=f"cp{ver[0]}{ver[1]}", path=Path(path), version=(ver[0], ver[1]))


def find_interpreters(configured: Sequence[str], *, exe_names: Sequence[str]) -> list[Interpreter]:
    """Each entry is a path to an interpreter or a version like 3.11 looked up on PATH."""
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
        found.setdefault(interp.tag, interp)
    return list(found.values())


def tags_for(python: tuple[int, int], platforms: Sequence[str]) -> list[Tag]:
    return [*cpython_tags(python_version=python, platforms=platforms),
            *compatible_tags(python_version=python, platforms=platforms)]


def wheel_tags(wheel: Path | str) -> list[str]:
    _, _, _, tags = parse_wheel_filename(Path(wheel).name)
    return sorted(str(t) for t in tags)


def is_pure(wheel: Path | str) -> bool:
    return all(t.endswith("-any") for t in wheel_tags(wheel))
