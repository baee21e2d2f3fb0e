"""Windows: win_amd64 / win_arm64 / win32 tags, delvewheel repair, Chocolatey system packages.

A Windows worker builds for one architecture queue: `windows-amd64`, `windows-arm64` or
`windows-x86`, with interpreters of that architecture (the `py` launcher's `-3.11`, `-3.11-32`,
`-V:3.11-arm64`, or the python.org installers' default folders).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, TextIO

from packaging.tags import Tag

from farm.errors import ConfigError, InfrastructureFault, PackageFailure
from farm.recipes.schema import SystemPackages
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.python_tags import version_key
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

# Queue architecture -> wheel platform tag (also cibuildwheel's identifier suffix).
PLATFORM_TAGS = {"amd64": "win_amd64", "arm64": "win_arm64", "x86": "win32"}
# Queue architecture -> suffix of the PEP 514 tag and of the python.org install folder (Python311-32).
_SUFFIX = {"amd64": "", "arm64": "-arm64", "x86": "-32"}
_WHERE = "import sys; print(sys.executable)"
_SYSTEM = ("win32", "Windows", "nt")  # sys_platform, platform_system, os_name
PACKAGE_MANAGER = PackageManager(family="choco", programs=("choco",), install=("install", "-y", "--no-progress"))
# Chocolatey's exit codes for success, and success with a reboot pending.
_CHOCO_OK = (0, 1641, 3010)
# A line of `py -0p`: the launcher of 3.11 and later (` -V:3.11-32   C:\\...\\python.exe`, `*` after
# the tag of the default) and the older one (` -3.9-64   C:\\...\\python.exe *`); a free-threaded
# build is `-V:3.13t` (python3.13t.exe). Other distributions (-V:Company/Tag) do not match.
_LAUNCHER_LINE = re.compile(r"^\s*-(?:V:)?(\d+)\.(\d+)(t?)(?:-(64|32|arm64))?\s+(?:\*\s+)?(\S.*?)(?:\s+\*)?\s*$")
_LAUNCHER_ARCH = {None: "amd64", "64": "amd64", "32": "x86", "arm64": "arm64"}
# python.org's install folders: Python311, Python311-32, Python311-arm64.
_INSTALL_FOLDER = re.compile(r"^Python(\d)(\d+)(-32|-arm64)?$")
_FOLDER_ARCH = {None: "amd64", "-32": "x86", "-arm64": "arm64"}
# The PE header's Machine field per queue architecture (IMAGE_FILE_MACHINE_*).
PE_MACHINE = {"amd64": 0x8664, "x86": 0x014C, "arm64": 0xAA64}
_PE_ARCH = {"win_amd64": "amd64", "win32": "x86", "win_arm64": "arm64"}


@dataclass(frozen=True)
class WindowsPlatform:
    arch: str

    family = "windows"

    def __post_init__(self) -> None:
        if self.arch not in PLATFORM_TAGS:
            raise ConfigError(f"unknown Windows architecture {self.arch!r} "
                              f"(expected one of {', '.join(PLATFORM_TAGS)})")

    @property
    def name(self) -> str:
        return f"windows-{self.arch}"

    @property
    def platform_tag(self) -> str:
        return PLATFORM_TAGS[self.arch]

    def build_identifier(self, python: str) -> str:
        return f"{python}-{self.platform_tag}"

    def interpreters(self, configured: Sequence[str]) -> list[Interpreter]:
        """Paths as they are, versions through `_locate`. Nothing configured: every interpreter of this
        architecture the `py` launcher lists or python.org's install folders hold (`installed_pythons`),
        then what the host-wide discovery finds."""
        if configured:
            return find_interpreters([self._locate(entry) for entry in configured], exe_names=())
        found: dict[str, Interpreter] = {}
        for path in self.installed_pythons().values():
            try:
                [interp] = find_interpreters([path], exe_names=())
            except ConfigError:
                continue
            found.setdefault(interp.tag, interp)
        for interp in find_interpreters([], exe_names=()):
            found.setdefault(interp.tag, interp)
        return sorted(found.values(), key=lambda i: i.version)

    def installed_pythons(self) -> dict[str, str]:
        """Version -> interpreter of this architecture: what `py -0p` lists, then python.org's
        install folders (Program Files, %LOCALAPPDATA%\\Programs\\Python) for versions it did not list."""
        found: dict[str, str] = {}
        launcher = shutil.which("py")
        if launcher is not None:
            try:
                res = run([launcher, "-0p"], timeout=60, check=False)
            except OSError:
                res = None
            if res is not None and res.returncode == 0:
                for version, arch, path in launcher_listing(res.output):
                    if arch == self.arch and Path(path).is_file():
                        found.setdefault(version, path)
        for folder in self.install_roots():
            if not folder.is_dir():
                continue
            for child in sorted(folder.iterdir()):
                match = _INSTALL_FOLDER.match(child.name)
                if not match or _FOLDER_ARCH[match[3]] != self.arch:
                    continue
                version = f"{match[1]}.{match[2]}"  # the free-threaded build beside it: python3.13t.exe
                for key, exe in ((version, "python.exe"), (f"{version}t", f"python{version}t.exe")):
                    if (child / exe).is_file():
                        found.setdefault(key, str(child / exe))
        return dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))

    def install_roots(self) -> list[Path]:
        """The folders python.org's installer puts Python3XY folders in: for all users, then per user."""
        variable = "ProgramFiles(x86)" if self.arch == "x86" else "ProgramFiles"
        roots = [Path(os.environ.get(variable) or (r"C:\Program Files (x86)" if self.arch == "x86" else r"C:\Program Files"))]
        if local := os.environ.get("LOCALAPPDATA"):
            roots.append(Path(local) / "Programs" / "Python")
        return roots

    def launcher_selector(self, version: str) -> str:
        """The `py` launcher's argument for CPython `version` of this architecture."""
        if self.arch == "amd64":
            return f"-{version}"
        if self.arch == "x86":
            return f"-{version}-32"
        return f"-V:{version}-arm64"  # only the launcher of Python 3.11 and later knows -V:

    def candidate_paths(self, version: str) -> list[str]:
        """Where python.org's installer puts CPython `version` of this architecture."""
        threaded = version.endswith("t")  # 3.13t: python3.13t.exe in the Python313 folder
        nodot = version.removesuffix("t").replace(".", "")
        folder = f"Python{nodot}{_SUFFIX[self.arch]}"
        program_files = os.environ.get("ProgramFiles", r"C:\Program Files")
        if self.arch == "x86":
            program_files = os.environ.get("ProgramFiles(x86)", r"C:\Program Files (x86)")
        local = os.environ.get("LOCALAPPDATA", "")
        exe = f"python{version}.exe" if threaded else "python.exe"
        paths = [PureWindowsPath(program_files, folder, exe)]
        if local:
            paths.append(PureWindowsPath(local, "Programs", "Python", folder, exe))
        return [str(p) for p in paths]

    def _locate(self, entry: str) -> str:
        """A path as it is; a version through the py launcher, then PATH, then the install folders."""
        if Path(entry).is_file():
            return entry
        tried = []
        launcher = shutil.which("py")
        if launcher is not None:
            selector = self.launcher_selector(entry)
            tried.append(f"py {selector}")
            try:
                res = run([launcher, selector, "-c", _WHERE], timeout=60, check=False)
            except OSError:
                res = None
            lines = res.output.strip().splitlines() if res is not None and res.returncode == 0 else []
            if lines and Path(lines[-1].strip()).is_file():
                return lines[-1].strip()
        for candidate in [f"python{entry}", *self.candidate_paths(entry)]:
            tried.append(candidate)
            if hit := shutil.which(candidate):
                return hit
        raise ConfigError(f"no {self.name} interpreter for {entry!r} (tried {', '.join(tried)})")

    def offered_pythons(self, settings: Settings) -> list[Offer]:
        """The host's interpreters (builds on this platform run on the host, not in containers)."""
        return host_offers(self, settings)

    def default_images(self) -> list[ImageConfig]:
        return []  # no container images: builds run on the host

    def marker_environment(self, python: str) -> dict[str, str]:
        return marker_environment(python, system=_SYSTEM, machine=self.arch)

    def supported_tags(self, python: tuple[int, int], *, threaded: bool = False) -> list[Tag]:
        return tags_for(python, [self.platform_tag], threaded=threaded)

    def platform_tag_ok(self, tags: Sequence[str]) -> bool:
        return all(t.endswith("-any") or t.split("-")[-1] == self.platform_tag for t in tags)

    def build_environment(self) -> dict[str, str]:
        return {}

    def sandbox(self, settings: Settings) -> Sandbox:
        from farm.worker.sandbox import Unsandboxed
        from farm.worker.sandbox.windows import JobObject

        return JobObject() if settings.sandbox else Unsandboxed()

    def repair_command(self, wheel: Path | str, dest: Path | str, exclude: Sequence[str], *,
                       program: str | None = None) -> list[str]:
        argv = [program or tool("delvewheel"), "repair", "-w", str(dest)]
        for lib in exclude:
            argv += ["--exclude", lib]
        return [*argv, "-v", str(wheel)]

    def repair(self, wheel: Path, dest: Path, *, exclude: Sequence[str], log: TextIO) -> Path:
        """delvewheel copies the DLLs the wheel needs (found on PATH) into it; a wheel needing none is copied."""
        if (copied := copy_pure(wheel, dest, log)) is not None:
            return copied
        program = tool("delvewheel")
        if not Path(program).is_file() and shutil.which(program) is None:
            raise InfrastructureFault("repair", "delvewheel is not installed on this worker (pip install delvewheel)")
        repaired = repair_with("delvewheel", lambda out: self.repair_command(wheel, out, exclude), dest=dest,
                               env=clean_env(path_prepend=[Path(sys.executable).parent]), log=log,
                               tag_ok=self.platform_tag_ok, wanted=f"{self.platform_tag} tag")
        problems = binary_problems(repaired)
        if problems:
            raise PackageFailure("repair", f"{repaired.name} after delvewheel: " + "; ".join(problems))
        return repaired

    def package_manager(self, family: str | None = None) -> PackageManager:
        if family not in (None, "choco"):
            raise ConfigError(f"{self.name} workers install system packages with choco, not {family}")
        return PACKAGE_MANAGER

    def system_packages(self, wanted: SystemPackages) -> tuple[str, list[str]]:
        return "choco", list(wanted.choco)

    def install_system_packages(self, packages: Sequence[str], *, mode: str, log: TextIO) -> None:
        if not packages or mode == "ignore":
            return
        choco = choco_path()
        if choco is None:
            raise InfrastructureFault("prepare", "Chocolatey (choco) is not installed on this worker")
        installed = choco_installed(choco)
        missing = [p for p in packages if p.lower() not in installed]
        if not missing:
            log.write(f"system packages present: {' '.join(packages)}\n")
            return
        if mode == "check":
            raise PackageFailure("prepare", f"Chocolatey packages missing on this worker: {' '.join(missing)} "
                                 f"(choco install them, or run the worker with system_packages=install)")
        res = run(PACKAGE_MANAGER.install_argv(choco, missing), log=log, timeout=1800, check=False)
        if res.returncode not in _CHOCO_OK:
            raise PackageFailure("prepare", f"could not install Chocolatey packages {' '.join(missing)} (choco exited "
                                 f"with {res.returncode}; it needs an administrator account)")


def choco_path() -> str | None:
    if hit := shutil.which("choco"):
        return hit
    root = os.environ.get("ChocolateyInstall", r"C:\ProgramData\chocolatey")
    candidate = Path(root) / "bin" / "choco.exe"
    return str(candidate) if candidate.is_file() else None


def choco_list_command(choco: str, version: str) -> list[str]:
    """Installed packages, one `name|version` a line. Chocolatey 2 lists only local packages and
    refuses --local-only; Chocolatey 1 lists the remote feed without it."""
    major = version.strip().split(".")[0]
    if not major.isdigit():
        raise InfrastructureFault("prepare", f"cannot read the Chocolatey version from {version!r}")
    local = [] if int(major) >= 2 else ["--local-only"]
    return [choco, "list", *local, "--limit-output"]


def choco_installed(choco: str) -> set[str]:
    try:
        version = run([choco, "--version"], timeout=60).output.strip().splitlines()[-1]
        listing = run(choco_list_command(choco, version), timeout=300)
    except (CommandFailed, IndexError) as exc:
        raise InfrastructureFault("prepare", f"cannot list Chocolatey packages: {exc}") from exc
    return {line.split("|")[0].strip().lower() for line in listing.output.splitlines() if "|" in line}



def launcher_listing(output: str) -> list[tuple[str, str, str]]:
    """(version, architecture, interpreter path) of each CPython in `py -0p` output."""
    found = []
    for line in output.splitlines():
        match = _LAUNCHER_LINE.match(line)
        if match:
            found.append((f"{match[1]}.{match[2]}{match[3]}", _LAUNCHER_ARCH[match[4]], match[5]))
    return found


def binary_problems(wheel: Path) -> list[str]:
    """Where the DLLs and extension modules (.pyd, .dll) of a Windows wheel disagree with its
    platform tag: a PE file built for another machine than the tag says. Read with pefile, on any host."""
    import pefile

    from farm.worker.platforms._common import wheel_tags

    archs = {_PE_ARCH[t.split("-")[-1]] for t in wheel_tags(wheel) if t.split("-")[-1] in _PE_ARCH}
    if len(archs) != 1:
        return [] if not archs else [f"{wheel.name} names several Windows architectures"]
    [arch] = archs
    problems = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.lower().endswith((".pyd", ".dll")):
                continue
            try:
                pe = pefile.PE(data=zf.read(info), fast_load=True)
            except pefile.PEFormatError as exc:
                problems.append(f"{info.filename} is not a PE file ({exc})")
                continue
            if pe.FILE_HEADER.Machine != PE_MACHINE[arch]:
                machine = pefile.MACHINE_TYPE.get(pe.FILE_HEADER.Machine, hex(pe.FILE_HEADER.Machine))
                problems.append(f"{info.filename} is built for {machine}, not {arch}")
    return problems
