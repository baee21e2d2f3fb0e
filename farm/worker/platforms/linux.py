"""Linux: manylinux/musllinux tags, auditwheel repair, apt/yum/apk system packages."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from packaging.tags import Tag, platform_tags

from farm.errors import InfrastructureFault, PackageFailure
from farm.recipes.schema import SystemPackages
from farm.util.cmd import CommandFailed, clean_env, run
from farm.worker.platforms._common import copy_pure, find_interpreters, repair_with, tags_for
from farm.worker.platforms.base import Interpreter
from farm.worker.sandbox import Unsandboxed

if TYPE_CHECKING:
    from farm.config import Settings
    from farm.worker.sandbox import Sandbox

_MANAGERS = (("apt", "apt-get"), ("yum", "dnf"), ("yum", "yum"), ("apk", "apk"))


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

    def supported_tags(self, python: tuple[int, int]) -> list[Tag]:
        return tags_for(python, list(platform_tags()))

    def platform_tag_ok(self, tags: Sequence[str]) -> bool:
        prefix = "musllinux_" if self.musl else "manylinux"
        return all(t.endswith("-any") or (t.split("-")[-1].startswith(prefix) and t.endswith(f"_{self.arch}"))
                   for t in tags)

    def build_environment(self) -> dict[str, str]:
        return {}

    def sandbox(self, settings: Settings) -> Sandbox:
        from farm.worker.sandbox.linux import Bubblewrap

        return Bubblewrap(uid=settings.sandbox_uid) if settings.sandbox else Unsandboxed()

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        if (copied := copy_pure(wheel, dest, log)) is not None:
            return copied

        def command(out: Path) -> list[str]:
            argv = [_tool("auditwheel"), "repair", "--wheel-dir", str(out)]
            for lib in exclude:
                argv += ["--exclude", lib]
            return [*argv, str(wheel)]

        return repair_with("auditwheel", command, dest=dest, env=clean_env(path_prepend=[Path(sys.executable).parent]),
                           log=log, tag_ok=self.platform_tag_ok, wanted=f"{self.name} platform tag")

    def system_packages(self, wanted: SystemPackages) -> tuple[str, list[str]]:
        family = _host_manager()[0] if _host_manager() else ("apk" if self.musl else "yum")
        return family, list(getattr(wanted, family))

    def install_system_packages(self, packages: Sequence[str], *, mode: str, log: TextIO) -> None:
        if not packages or mode == "ignore":
            return
        manager = _host_manager()
        if manager is None:
            raise InfrastructureFault("prepare", "no known package manager (apt-get, dnf, yum, apk) on this host")
        family, tool = manager
        missing = [p for p in packages if not _installed(family, p)]
        if not missing:
            log.write(f"system packages present: {' '.join(packages)}\n")
            return
        if mode == "check" or os.geteuid() != 0:
            raise PackageFailure("prepare", f"system packages missing on this worker: {' '.join(missing)} "
                                 f"(install them, or run the worker as root with system_packages=install)")
        env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
        install = {
            "apt": [tool, "install", "-y", "--no-install-recommends", *missing],
            "yum": [tool, "install", "-y", *missing],
            "apk": [tool, "add", "--no-cache", *missing],
        }[family]
        try:
            run(install, env=env, log=log, timeout=900)
        except CommandFailed:
            if family != "apt":
                raise PackageFailure("prepare", f"could not install system packages {' '.join(missing)}") from None
            run([tool, "update"], env=env, log=log, timeout=900, check=False)
            try:
                run(install, env=env, log=log, timeout=900)
            except CommandFailed as exc:
                raise PackageFailure("prepare", f"could not install system packages: {exc}") from exc


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _host_manager() -> tuple[str, str] | None:
    for family, tool in _MANAGERS:
        if shutil.which(tool):
            return family, tool
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
