"""Linux: manylinux/musllinux tags, auditwheel repair, apt/yum/apk system packages."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from packaging.tags import Tag, platform_tags

from farm.errors import ConfigError, InfrastructureFault, PackageFailure
from farm.util import emulation as arches
from farm.recipes.schema import SystemPackages
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.locks import host_lock
from farm.util.python_tags import PythonTag
from farm.worker.platforms._common import (
    copy_pure,
    find_interpreters,
    host_offers,
    marker_environment,
    repair_with,
    tags_for,
    tool,
)
from farm.worker.platforms.base import Interpreter, Offer, PackageManager, Platform
from farm.worker.sandbox import Unsandboxed

if TYPE_CHECKING:
    from farm.config import ImageConfig, Settings
    from farm.worker.sandbox import Sandbox

# The package managers of Linux hosts and build images, in the order a host's is looked for.
MANAGERS = {
    "apt": PackageManager(
        family="apt", programs=("apt-get",), install=("install", "-y", "--no-install-recommends"),
        package_files=".deb",
        download=("mkdir -p {dest}/partial && apt-get update -qq && apt-get install -y -qq --download-only "
                  "--no-install-recommends -o Dir::Cache::Archives={dest} {packages}"),
        install_files='apt-get install -y --no-install-recommends "$@"'),
    "yum": PackageManager(
        family="yum", programs=("dnf", "yum"), install=("install", "-y"), package_files=".rpm",
        download=("mkdir -p {dest} && if command -v dnf >/dev/null 2>&1; then dnf install -y --downloadonly "
                  "--downloaddir={dest} {packages}; else yum install -y --downloadonly --downloaddir={dest} "
                  "{packages}; fi"),
        install_files='rpm -Uvh --replacepkgs "$@"'),
    "apk": PackageManager(
        family="apk", programs=("apk",), install=("add", "--no-cache"), package_files=".apk",
        download="mkdir -p {dest} && apk update -q && apk fetch --recursive --output {dest} {packages}",
        install_files='apk add --no-network "$@"'),
}


# The build images of a Linux platform when the settings name none: pypa's, with the CPythons they carry.
DEFAULT_IMAGES = {
    "linux-x86_64": "quay.io/pypa/manylinux_2_28_x86_64",
    "linux-aarch64": "quay.io/pypa/manylinux_2_28_aarch64",
    "musllinux-x86_64": "quay.io/pypa/musllinux_1_2_x86_64",
}
DEFAULT_IMAGE_PYTHONS = ("cp39", "cp310", "cp311", "cp312", "cp313")
_SYSTEM = ("linux", "Linux", "posix")  # sys_platform, platform_system, os_name
# uv's --python-platform targets (uv 0.5+); glibc versions in between resolve for the one below.
_UV_GLIBC = (17, 28, *range(31, 41))
_UV_ARCHES = ("x86_64", "aarch64")
_MANYLINUX_ALIASES = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def image_package_family(programs: set[str]) -> str:
    """The package-manager family of a build image that has `programs` on its PATH ('' for none known)."""
    return next((m.family for m in MANAGERS.values() if set(m.programs) & programs), "")


def package_manager_programs() -> list[str]:
    """The programs that tell the package-manager families apart, for a probe of a build image."""
    return [p for m in MANAGERS.values() for p in m.programs]


@dataclass(frozen=True)
class LinuxPlatform:
    arch: str
    musl: bool = False

    @property
    def name(self) -> str:
        return f"{'musllinux' if self.musl else 'linux'}-{self.arch}"

    family = "linux"

    def build_identifier(self, python: str) -> str:
        return f"{python}-{'musllinux' if self.musl else 'manylinux'}_{self.arch}"

    def interpreters(self, configured: Sequence[str]) -> list[Interpreter]:
        return find_interpreters(configured, exe_names=("python{v}", "/opt/python/cp{v}/bin/python"))

    @property
    def emulated(self) -> bool:
        """Whether this platform's programs run under QEMU on this host (linux-aarch64 on x86_64)."""
        return arches.emulated(self.arch)

    def emulation(self) -> dict[str, str] | None:
        """What a build or verification records about the emulator it ran under: None when native; an
        InfrastructureFault when emulation is needed and the emulator is not registered."""
        return arches.emulation(self.arch)

    def offered_pythons(self, settings: Settings) -> list[Offer]:
        """With the cibuildwheel engine, the union of the platform's build images' Pythons (the first
        image that carries one builds it); with the native engine, the host's interpreters."""
        if settings.engine != "cibuildwheel":
            return host_offers(self, settings)
        seen: dict[str, str] = {}
        for image in settings.images.get(self.name, []):
            for python in image.pythons:
                seen.setdefault(python, image.image)
        return [Offer(python=python, image=image) for python, image in seen.items()]

    def default_images(self) -> list[ImageConfig]:
        from farm.config import ImageConfig

        image = DEFAULT_IMAGES.get(self.name)
        return [ImageConfig(image=image, pythons=list(DEFAULT_IMAGE_PYTHONS))] if image else []

    def marker_environment(self, python: str) -> dict[str, str]:
        return marker_environment(python, system=_SYSTEM, machine=self.arch)

    def image_python(self, python: str) -> str:
        """Where a manylinux or musllinux image (and the farm's own build images) keep CPython `python`."""
        parsed = PythonTag.parse(python)
        return f"/opt/python/{parsed.install_dir if parsed else f'{python}-{python}'}/bin/python"

    def cibuildwheel_options(self, image: str) -> tuple[str, dict[str, str]]:
        """cibuildwheel's --platform, and the CIBW_* variables that pick this architecture and `image`."""
        kind = "MUSLLINUX" if self.musl else "MANYLINUX"
        return "linux", {"CIBW_ARCHS": self.arch, f"CIBW_{kind}_{self.arch.upper()}_IMAGE": image}

    def image_wheel_platforms(self, libc: tuple[str, int, int]) -> tuple[tuple[str, ...], str | None]:
        """For a build image whose C library is `libc` (("glibc", 2, 31) or ("musl", 1, 2)): the wheel
        platform tags that install in it, best first (pip's --platform values), and uv's
        --python-platform for resolving (None: uv has no target for this architecture)."""
        arch = self.arch
        kind, lib_major, lib_minor = libc
        if kind == "musl":
            platforms = tuple(f"musllinux_{lib_major}_{n}_{arch}" for n in range(lib_minor, 0, -1))
            return platforms, (f"{arch}-unknown-linux-musl" if arch in _UV_ARCHES else None)
        platforms = tuple(tag for n in range(lib_minor, 4, -1) for tag in (
            f"manylinux_2_{n}_{arch}", *([f"{_MANYLINUX_ALIASES[n]}_{arch}"] if n in _MANYLINUX_ALIASES else [])))
        best = max((n for n in _UV_GLIBC if n <= lib_minor), default=None)
        return platforms, (f"{arch}-manylinux_2_{best}" if arch in _UV_ARCHES and best is not None else None)

    def supported_tags(self, python: tuple[int, int], *, threaded: bool = False) -> list[Tag]:
        host = list(platform_tags())
        if self.emulated:  # the host's tags with this platform's architecture (the same glibc policies)
            suffix = f"_{arches.host_machine()}"
            host = [f"{t[:-len(suffix)]}_{self.arch}" for t in host if t.endswith(suffix)]
        return tags_for(python, host, threaded=threaded)

    def platform_tag_ok(self, tags: Sequence[str]) -> bool:
        prefix = "musllinux_" if self.musl else "manylinux"
        return all(t.endswith("-any") or (t.split("-")[-1].startswith(prefix) and t.endswith(f"_{self.arch}"))
                   for t in tags)

    def build_environment(self) -> dict[str, str]:
        return {}

    def sandbox(self, settings: Settings) -> Sandbox:
        from farm.worker.sandbox.linux import Bubblewrap

        return Bubblewrap(uid=settings.sandbox_uid) if settings.sandbox else Unsandboxed()

    def repair_command(self, wheel: Path | str, dest: Path | str, exclude: Sequence[str], *,
                       program: str | None = None, plat: str | None = None) -> list[str]:
        """auditwheel's command line; in a build container (cibuildwheel) `program` is the image's auditwheel."""
        excluded = [arg for lib in exclude for arg in ("--exclude", lib)]
        chosen = ["--plat", plat] if plat else []
        return [program or tool("auditwheel"), "repair", *excluded, *chosen, "-w", str(dest), str(wheel)]

    def oldest_policy(self) -> str:
        """auditwheel's oldest policy for this platform's C library: the one named when auditwheel cannot
        tell the C library from a wheel whose extension links none."""
        return f"{'musllinux_1_1' if self.musl else 'manylinux_2_17'}_{self.arch}"

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        if (copied := copy_pure(wheel, dest, log)) is not None:
            return copied
        env = clean_env(path_prepend=[Path(sys.executable).parent])

        def with_plat(plat: str | None) -> Path:
            return repair_with("auditwheel", lambda out: self.repair_command(wheel, out, exclude, plat=plat),
                               dest=dest, env=env, log=log, tag_ok=self.platform_tag_ok,
                               wanted=f"{self.name} platform tag")

        try:
            return with_plat(None)
        except PackageFailure as exc:
            # An extension that links no C library at all (tiny ones built by some interpreters) leaves
            # auditwheel nothing to detect the libc from: name the oldest policy of this queue's libc.
            if "couldn't detect libc" not in str(exc):
                raise
            plat = self.oldest_policy()
            log.write(f"auditwheel could not tell the C library from the wheel; repairing for {plat}\n")
            return with_plat(plat)

    def package_manager(self, family: str | None = None) -> PackageManager:
        """The host's (or, with no known one on the host, apk for musllinux and yum for manylinux), or `family`'s."""
        if family is None:
            host = _host_manager()
            family = host[0].family if host else ("apk" if self.musl else "yum")
        if family not in MANAGERS:
            raise ConfigError(f"the package manager family {family!r} is not {', '.join(MANAGERS)}")
        return MANAGERS[family]

    def system_packages(self, wanted: SystemPackages) -> tuple[str, list[str]]:
        family = self.package_manager().family
        return family, list(getattr(wanted, family))

    def install_system_packages(self, packages: Sequence[str], *, mode: str, log: TextIO) -> None:
        if not packages or mode == "ignore":
            return
        manager = _host_manager()
        if manager is None:
            raise InfrastructureFault("prepare", "no known package manager (apt-get, dnf, yum, apk) on this host")
        family, program = manager
        missing = [p for p in packages if not _installed(family.family, p)]
        if not missing:
            log.write(f"system packages present: {' '.join(packages)}\n")
            return
        if mode == "check" or os.geteuid() != 0:
            raise PackageFailure("prepare", f"system packages missing on this worker: {' '.join(missing)} "
                                 f"(install them, or run the worker as root with system_packages=install)")
        # The job slots of this host take turns (the package manager admits one process at a time, and a
        # second one would fail on its lock); after the wait, what the other slot installed is not missing.
        with host_lock(HOST_PACKAGES_LOCK):
            missing = [p for p in packages if not _installed(family.family, p)]
            if missing:
                _install(family, program, missing, log=log)
            else:
                log.write(f"system packages present (installed by another job meanwhile): {' '.join(packages)}\n")


HOST_PACKAGES_LOCK = Path(tempfile.gettempdir()) / "wheel-farm-host-packages.lock"


def _install(family: PackageManager, program: str, missing: Sequence[str], *, log: TextIO) -> None:
    env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    install = family.install_argv(program, missing)
    try:
        run(install, env=env, log=log, timeout=900)
    except CommandFailed:
        if family.family != "apt":
            raise PackageFailure("prepare", f"could not install system packages {' '.join(missing)}") from None
        run([program, "update"], env=env, log=log, timeout=900, check=False)
        try:
            run(install, env=env, log=log, timeout=900)
        except CommandFailed as exc:
            raise PackageFailure("prepare", f"could not install system packages: {exc}") from exc


def container_platform(platform: Platform) -> LinuxPlatform:
    """`platform` as one whose builds can run in containers (the cibuildwheel engine): a Linux one."""
    if not isinstance(platform, LinuxPlatform):
        raise ConfigError(f"the cibuildwheel engine builds in Linux containers, not for {platform.name} "
                          "(its workers use the native engine)")
    return platform


def parse_libc(ldd_output: str) -> tuple[str, int, int]:
    """`ldd --version`'s first lines (in a build image) -> ("glibc", 2, 31) or ("musl", 1, 2)."""
    if "musl" in ldd_output.lower():
        m = re.search(r"Version (\d+)\.(\d+)", ldd_output)
        return ("musl", int(m.group(1)), int(m.group(2))) if m else ("musl", 1, 1)
    m = re.search(r"(\d+)\.(\d+)\s*$", ldd_output.strip().splitlines()[0] if ldd_output.strip() else "")
    if not m:
        raise InfrastructureFault("build", f"cannot tell the build image's C library from: {ldd_output[:200]!r}")
    return "glibc", int(m.group(1)), int(m.group(2))


def _host_manager() -> tuple[PackageManager, str] | None:
    """The host's package manager and the program it runs as."""
    for manager in MANAGERS.values():
        for program in manager.programs:
            if shutil.which(program):
                return manager, program
    return None


def _installed(family: str, package: str) -> bool:
    probe = {
        "apt": ["dpkg-query", "-W", "-f=${Status}", package],
        "yum": ["rpm", "-q", package],
        "apk": ["apk", "info", "-e", package],
    }[family]
    try:
        res = run(probe, timeout=30, check=False)
    except OSError:
        return False
    return res.returncode == 0 and ("install ok installed" in res.output if family == "apt" else True)
