"""Reading what a built wheel says about itself (PEP 427 layout, core metadata)."""

from __future__ import annotations

import zipfile
from email.message import Message
from email.parser import BytesParser
from pathlib import Path, PurePosixPath

_NOT_MODULES = {"test", "tests", "testing", "docs", "doc", "examples", "example", "benchmarks", "bench"}


def _dist_info(names: list[str]) -> str:
    dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise ValueError(f"expected one .dist-info folder, found {sorted(dirs)}")
    return dirs.pop()


def read_metadata_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"{_dist_info(zf.namelist())}/METADATA")


def read_metadata(wheel: Path) -> Message:
    return BytesParser().parsebytes(read_metadata_bytes(wheel))


def requires_dist(meta: Message) -> list[str]:
    return [str(r) for r in meta.get_all("Requires-Dist") or []]


def top_level_modules(wheel: Path) -> list[str]:
    """Importable top-level names: top_level.txt when the backend wrote one, else the file list."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = _dist_info(names)
        if f"{info}/top_level.txt" in names:
            listed = zf.read(f"{info}/top_level.txt").decode().split()
            found = [m for m in listed if "/" not in m and m.isidentifier()]
            if found:
                return sorted(set(found) - _NOT_MODULES)
    found: set[str] = set()
    for name in names:
        parts = PurePosixPath(name).parts
        top = parts[0]
        if top.endswith((".dist-info", ".data")) or top.endswith(".libs"):
            continue
        if len(parts) > 1:
            if parts[1] == "__init__.py" or any(n.startswith(f"{top}/") and n.endswith(".py") for n in names):
                found.add(top)
        elif top.endswith(".py"):
            found.add(top[:-3])
        elif ".cpython-" in top or top.endswith((".so", ".pyd", ".abi3.so")):
            found.add(top.split(".", 1)[0])
    return sorted(m for m in found if m.isidentifier() and m not in _NOT_MODULES)
