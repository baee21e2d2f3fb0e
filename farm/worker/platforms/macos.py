"""macOS: macosx_* tags for a deployment target, delocate repair, Homebrew system packages.

A macOS worker builds for one architecture queue: `macos-x86_64`, `macos-arm64` or
`macos-universal2`. The deployment target (the oldest macOS the wheels run on) is
`MACOSX_DEPLOYMENT_TARGET` from the worker's environment, else 10.13 for x86_64 and universal2 and
11.0 for arm64 (the first macOS on Apple silicon). The same target decides the tags a verification
accepts, the tags a repaired wheel may carry, and what delocate checks the vendored libraries against.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from packaging.tags import Tag, mac_platforms

from farm.errors import ConfigError, InfrastructureFault, PackageFailure
from farm.recipes.schema import SystemPackages
from farm.util.cmd import CommandFailed, clean_env, run
from farm.worker.platforms._common import (
    copy_pure,
    find_interpreters,
    host_offers,
    marker_environment,
    repair_with,
    tags_for,
    tool,
)
from farm.worker.platforms.base import Interpreter, Offer, PackageManager

if TYPE_CHECKING:
    from farm.config import ImageConfig, Settings
    from farm.worker.sandbox import Sandbox

ARCHS = ("x86_64", "arm64", "universal2")
DEFAULT_DEPLOYMENT_TARGET = {"x86_64": "10.13", "arm64": "11.0", "universal2": "10.13"}
_ARCHFLAGS = {"x86_64": "-arch x86_64", "arm64": "-arch arm64", "universal2": "-arch arm64 -arch x86_64"}
# Where Homebrew lives when it is not on PATH (a launchd job's PATH is /usr/bin:/bin:/usr/sbin:/sbin).
_BREW_PREFIXES = ("/opt/homebrew/bin/brew", "/usr/local/bin/brew")
# delocate reads and rewrites Mach-O load commands with the Xcode command line tools.
_XCODE_TOOLS = ("otool", "install_name_tool")
_SYSTEM = ("darwin", "Darwin", "posix")  # sys_platform, platform_system, os_name
PACKAGE_MANAGER = PackageManager(family="brew", programs=("brew",), install=("install",))
_MACOS_TAG = re.compile(r"^macosx_(\d+)_(\d+)_(\w+)$")


@dataclass(frozen=True)
class MacOSPlatform:
    arch: str
    deployment_target: str = ""  # empty: MACOSX_DEPLOYMENT_TARGET, else the architecture's default

    family = "macos"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown macOS architecture {self.arch!r} (expected one of {', '.join(ARCHS)})")

    @property
    def name(self) -> str:
        return f"macos-{self.arch}"

    @property
    def target(self) -> tuple[int, int]:
        """The deployment target as (major, minor); arm64 never goes below 11.0."""
        raw = (self.deployment_target or os.environ.get("MACOSX_DEPLOYMENT_TARGET")
               or DEFAULT_DEPLOYMENT_TARGET[self.arch])
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.\d+)?", raw.strip())
        if match is None:
            raise ConfigError(f"MACOSX_DEPLOYMENT_TARGET {raw!r} is not a macOS version like 11.0 or 10.13")
        version = (int(match[1]), int(match[2] or 0))
        if version < (10, 9):
            raise ConfigError(f"macOS deployment target {raw} is older than 10.9, which no supported CPython runs on")
        return max(version, (11, 0)) if self.arch == "arm64" else version

    @property
    def target_dotted(self) -> str:
        return f"{self.target[0]}.{self.target[1]}"

    def build_identifier(self, python: str) -> str:
        return f"{python}-macosx_{self.arch}"

    def build_environment(self) -> dict[str, str]:
        """What a build on this host needs to target this queue (what cibuildwheel sets on macOS).

        A python.org interpreter is universal2: without ARCHFLAGS its extensions are built for both
        architectures and tagged universal2; without the deployment target they take the
        interpreter's.
        """
        return {
            "MACOSX_DEPLOYMENT_TARGET": self.target_dotted,
            "ARCHFLAGS": _ARCHFLAGS[self.arch],
            "_PYTHON_HOST_PLATFORM": f"macosx-{self.target_dotted}-{self.arch}",
        }

    def sandbox(self, settings: Settings) -> Sandbox:
        from farm.worker.sandbox import Unsandboxed
        from farm.worker.sandbox.macos import SandboxExec

        return SandboxExec(hidden=[Path.home(), settings.home]) if settings.sandbox else Unsandboxed()

    def interpreters(self, configured: Sequence[str]) -> list[Interpreter]:
        # python.org's framework builds first: they are universal2 and target old macOS releases,
        # unlike Homebrew's, which are built for the host's own release.
        return find_interpreters(configured, exe_names=(
            "/Library/Frameworks/Python.framework/Versions/{v}/bin/python3",
            "python{v}",
            "/opt/homebrew/opt/python@{v}/bin/python{v}",
            "/usr/local/opt/python@{v}/bin/python{v}",
        ))

    def offered_pythons(self, settings: Settings) -> list[Offer]:
        """The host's interpreters (builds on this platform run on the host, not in containers)."""
        return host_offers(self, settings)

    def default_images(self) -> list[ImageConfig]:
        return []  # no container images: builds run on the host

    def marker_environment(self, python: str) -> dict[str, str]:
        return marker_environment(python, system=_SYSTEM, machine=self.arch)

    def supported_tags(self, python: tuple[int, int]) -> list[Tag]:
        """Tags an interpreter of this version installs on the oldest macOS this queue targets."""
        return tags_for(python, list(mac_platforms(version=self.target, arch=self.arch)))

    def platform_tag_ok(self, tags: Sequence[str]) -> bool:
        """Pure, or macosx_X_Y_<arch> / macosx_X_Y_universal2 no newer than the deployment target."""
        accepted = {self.arch, "universal2"}
        for tag in tags:
            platform = tag.split("-")[-1]
            if platform == "any":
                continue
            match = _MACOS_TAG.match(platform)
            if match is None or match[3] not in accepted or (int(match[1]), int(match[2])) > self.target:
                return False
        return True

    def repair_command(self, wheel: Path | str, dest: Path | str, exclude: Sequence[str], *,
                       program: str | None = None) -> list[str]:
        argv = [program or tool("delocate-wheel"), "--require-archs", self.arch, "-w", str(dest)]
        for lib in exclude:
            argv += ["-e", lib]
        return [*argv, "-v", str(wheel)]

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        if (copied := copy_pure(wheel, dest, log)) is not None:
            return copied
        # delocate checks the vendored libraries against MACOSX_DEPLOYMENT_TARGET.
        env = clean_env({"MACOSX_DEPLOYMENT_TARGET": self.target_dotted},
                        path_prepend=[Path(sys.executable).parent])
        program = tool("delocate-wheel")
        if not Path(program).is_file() and shutil.which(program) is None:
            raise InfrastructureFault("repair", "delocate is not installed on this worker (pip install delocate)")
        missing = [t for t in _XCODE_TOOLS if shutil.which(t, path=env["PATH"]) is None]
        if missing:
            raise InfrastructureFault("repair", f"{', '.join(missing)} not found: delocate needs the Xcode "
                                      "command line tools (xcode-select --install)")
        return repair_with("delocate-wheel", lambda out: self.repair_command(wheel, out, exclude), dest=dest,
                           env=env, log=log, tag_ok=self.platform_tag_ok,
                           wanted=f"{self.name} platform tag for macOS {self.target_dotted}")

    def package_manager(self, family: str | None = None) -> PackageManager:
        if family not in (None, "brew"):
            raise ConfigError(f"{self.name} workers install system packages with brew, not {family}")
        return PACKAGE_MANAGER

    def system_packages(self, wanted: SystemPackages) -> tuple[str, list[str]]:
        return "brew", list(wanted.brew)

    def install_system_packages(self, packages: Sequence[str], *, mode: str, log: TextIO) -> None:
        if not packages or mode == "ignore":
            return
        brew = brew_path()
        if brew is None:
            raise InfrastructureFault("prepare", "Homebrew (brew) is not installed on this worker")
        missing = [p for p in packages if not _installed(brew, p)]
        if not missing:
            log.write(f"system packages present: {' '.join(packages)}\n")
            return
        if mode == "check":
            raise PackageFailure("prepare", f"Homebrew formulae missing on this worker: {' '.join(missing)} "
                                 f"(brew install them, or run the worker with system_packages=install)")
        env = clean_env({"HOMEBREW_NO_AUTO_UPDATE": "1", "HOMEBREW_NO_INSTALL_CLEANUP": "1",
                         "HOMEBREW_NO_ENV_HINTS": "1"})
        try:
            run(PACKAGE_MANAGER.install_argv(brew, missing), env=env, log=log, timeout=1800)
        except CommandFailed as exc:
            raise PackageFailure("prepare", f"could not install Homebrew formulae: {exc}") from exc


def brew_path() -> str | None:
    return shutil.which("brew") or next((p for p in _BREW_PREFIXES if os.access(p, os.X_OK)), None)


def _installed(brew: str, formula: str) -> bool:
    """`brew list --versions F` prints the installed versions and exits 0, or exits 1 when absent."""
    try:
        res = run([brew, "list", "--versions", formula], timeout=60, check=False)
    except OSError:
        return False
    return res.returncode == 0 and bool(res.output.strip())

