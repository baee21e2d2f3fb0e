"""What every platform module provides. Platform specifics live only behind this interface."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from packaging.tags import Tag

from farm.errors import ConfigError
from farm.recipes.schema import SystemPackages

if TYPE_CHECKING:
    from farm.config import ImageConfig, Settings
    from farm.worker.sandbox import Sandbox


@dataclass(frozen=True, kw_only=True)
class Interpreter:
    tag: str  # cp311
    path: Path
    version: tuple[int, int]

    @property
    def dotted(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


@dataclass(frozen=True, kw_only=True)
class Offer:
    """A Python a worker builds for, and the build image that carries it (None: a host interpreter)."""

    python: str  # cp311
    image: str | None = None


@dataclass(frozen=True, kw_only=True)
class PackageManager:
    """A system package manager, as data: the recipe's `system-packages` key and the command lines
    the farm runs with it, on a worker host or in a build image."""

    family: str  # the recipe's key: apt, yum, apk, brew, choco
    programs: tuple[str, ...]  # what it runs as, preferred first (dnf before yum)
    install: tuple[str, ...]  # the arguments after the program that install packages unattended
    package_files: str = ""  # suffix of its package files (.deb); empty: the farm never fetches them ahead
    download: str = ""  # sh script: {packages} and what they need beyond the system into {dest}, nothing installed
    install_files: str = ""  # sh command: install the package files "$@" without network

    def install_argv(self, program: str, packages: Sequence[str]) -> list[str]:
        return [program, *self.install, *packages]

    def download_script(self, packages: Sequence[str], dest: str) -> str:
        if not self.download:
            raise ConfigError(f"the farm does not fetch {self.family} packages ahead of a build")
        return self.download.format(packages=shlex.join(packages), dest=shlex.quote(dest))


class Platform(Protocol):
    name: str  # queue name: linux-x86_64, macos-arm64, windows-amd64, ...
    family: str  # linux | macos | windows
    arch: str

    def build_identifier(self, python: str) -> str:
        """cibuildwheel-style identifier, e.g. cp311-manylinux_x86_64."""

    def interpreters(self, configured: Sequence[str]) -> list[Interpreter]:
        """Host interpreters for the native engine, from paths or versions in the configuration."""

    def offered_pythons(self, settings: Settings) -> list[Offer]:
        """The Pythons a worker of this platform with `settings` builds for: its build images' with the
        cibuildwheel engine on Linux, else its interpreters'. The worker's side: the coordinator asks
        it of its own host today (coordinator/plan.py), and is to learn it from the workers (issue 10)."""

    def default_images(self) -> list[ImageConfig]:
        """The build images this platform uses when the settings name none, with the Pythons each carries."""

    def marker_environment(self, python: str) -> dict[str, str]:
        """PEP 508 marker values for Python `python` (cp311) on this platform, known before any build."""

    def supported_tags(self, python: tuple[int, int], *, threaded: bool = False) -> list[Tag]:
        """Wheel tags an interpreter of this version on this platform installs (`threaded`: its
        free-threaded build, cp314t)."""

    def repair_command(self, wheel: Path | str, dest: Path | str, exclude: Sequence[str], *,
                       program: str | None = None) -> list[str]:
        """The repair tool's command line for `wheel` into the folder `dest`, without the libraries in
        `exclude`; `program` is the tool to run (default: the worker's own, see `_common.tool`)."""

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        """Repair a platform wheel into `dest` (auditwheel/delocate/delvewheel); return the new wheel."""

    def package_manager(self, family: str | None = None) -> PackageManager:
        """The host's package manager, or (Linux) the one of `family` in a build image."""

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
