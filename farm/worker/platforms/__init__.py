"""The registry of platforms. The only place that looks at the host's operating system."""

from __future__ import annotations

import platform as _platform
import sys
from typing import TYPE_CHECKING

from farm.errors import ConfigError
from farm.worker.platforms.base import Interpreter, Offer, PackageManager, Platform

if TYPE_CHECKING:
    from farm.config import ImageConfig

_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}


def host_platform_name() -> str:
    arch = _ARCH.get(_platform.machine().lower(), _platform.machine().lower())
    if sys.platform.startswith("linux"):
        return f"linux-{arch}"
    if sys.platform == "darwin":
        return f"macos-{'arm64' if arch in ('arm64', 'aarch64') else arch}"
    if sys.platform == "win32":
        return "windows-amd64" if arch == "x86_64" else f"windows-{arch}"
    raise ConfigError(f"unsupported host platform {sys.platform}/{arch}")


def get_platform(name: str) -> Platform:
    family, _, arch = name.partition("-")
    if family in ("linux", "musllinux"):
        from farm.worker.platforms.linux import LinuxPlatform

        return LinuxPlatform(arch=arch, musl=family == "musllinux")
    if family == "macos":
        from farm.worker.platforms.macos import MacOSPlatform

        return MacOSPlatform(arch=arch)
    if family == "windows":
        from farm.worker.platforms.windows import WindowsPlatform

        return WindowsPlatform(arch=arch)
    raise ConfigError(f"unknown platform {name!r} (expected linux-*, musllinux-*, macos-* or windows-*)")


def default_images() -> dict[str, list[ImageConfig]]:
    """The build images of every platform that has some, when the settings name none."""
    from farm.worker.platforms.linux import DEFAULT_IMAGES

    return {name: get_platform(name).default_images() for name in DEFAULT_IMAGES}


def marker_environment(platform_name: str, python: str) -> dict[str, str]:
    """PEP 508 marker values for `python` (cp311) on the platform named `platform_name`; for a name
    that is no platform's, the Python's values and this host's for the rest."""
    from farm.worker.platforms._common import marker_environment as for_python

    try:
        platform = get_platform(platform_name)
    except ConfigError:
        return for_python(python, system=None, machine="")
    return platform.marker_environment(python)


__all__ = ["Interpreter", "Offer", "PackageManager", "Platform", "default_images", "get_platform",
           "host_platform_name", "marker_environment"]
