"""What every platform module provides. Platform specifics live only behind this interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from packaging.tags import Tag

from farm.recipes.schema import SystemPackages

if TYPE_CHECKING:
    from farm.config import Settings
    from farm.worker.sandbox import Sandbox


@dataclass(frozen=True, kw_only=True)
class Interpreter:
    tag: str  # cp311
    path: Path
    version: tuple[int, int]

    @property
    def dotted(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


class Platform(Protocol):
    name: str  # queue name: linux-x86_64, macos-arm64, windows-amd64, ...
    family: str  # linux | macos | windows
    arch: str

    def build_identifier(self, python: str) -> str:
        """cibuildwheel-style identifier, e.g. cp311-manylinux_x86_64."""

    def interpreters(self, configured: Sequence[str]) -> list[Interpreter]:
        """Host interpreters for the native engine, from paths or versions in the configuration."""

    def supported_tags(self, python: tuple[int, int]) -> list[Tag]:
        """Wheel tags an interpreter of this version on this platform installs."""

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        """Repair a platform wheel into `dest` (auditwheel/delocate/delvewheel); return the new wheel."""

    def system_packages(self, wanted: SystemPackages) -> tuple[str, list[str]]:
        """The host's package-manager family and the recipe's packages for it."""

    def install_system_packages(self, packages: Sequence[str], *, mode: str, log: TextIO) -> None:
        """Install (or, with mode 'check', only check for) system packages on the host."""

    def platform_tag_ok(self, tags: Sequence[str]) -> bool:
        """True when a repaired wheel's platform tags are ones this platform publishes."""

    def build_environment(self) -> dict[str, str]:
        """Variables every native build on this platform needs (deployment target, architecture flags)."""

    def sandbox(self, settings: Settings) -> Sandbox:
        """Where package code runs on this platform (farm/worker/sandbox/); Unsandboxed when `settings.sandbox` is off."""
