"""Build engines by name: `native` (host interpreters) and `cibuildwheel` (containers, macOS, Windows)."""

from __future__ import annotations

from farm.errors import ConfigError
from farm.worker.engines.base import BuildContext, BuildOutput, Engine


def get_engine(name: str) -> Engine:
    if name == "native":
        from farm.worker.engines.native import NativeEngine

        return NativeEngine()
    if name == "cibuildwheel":
        from farm.worker.engines.cibuildwheel import CibuildwheelEngine

        return CibuildwheelEngine()
    raise ConfigError(f"unknown build engine {name!r} (native, cibuildwheel)")


__all__ = ["BuildContext", "BuildOutput", "Engine", "get_engine"]
