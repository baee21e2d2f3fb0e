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
import struct
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from packaging.tags import Tag, mac_platforms
from packaging.utils import parse_wheel_filename

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
# Where interpreters are looked for, below `_ROOT` (a fake tree in the tests): python.org's framework
# builds (its free-threaded build, an option of its installer, in PythonT.framework as python3.13t),
# then Homebrew's python@X.Y formulae (Apple silicon prefix, then Intel's).
_ROOT = Path("/")
FRAMEWORK_VERSIONS = "Library/Frameworks/Python.framework/Versions"
THREADED_FRAMEWORK_VERSIONS = "Library/Frameworks/PythonT.framework/Versions"
HOMEBREW_PREFIXES = ("opt/homebrew", "usr/local")
_EXE_NAMES = (
    "/Library/Frameworks/Python.framework/Versions/{v}/bin/python3",
    "python{v}",
    "/opt/homebrew/opt/python@{v}/bin/python{v}",
    "/usr/local/opt/python@{v}/bin/python{v}",
)
_VERSION = re.compile(r"(\d+)\.(\d+)t?")  # 3.13, or 3.13t: its free-threaded build
# The first four bytes of a Mach-O file or a fat (universal) one, either byte order.
_MACHO_MAGIC = {b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe",
                b"\xca\xfe\xba\xbe", b"\xbe\xba\xfe\xca"}
# Install names a wheel may load from outside itself: the system's, and its own (relative) ones.
_SYSTEM_LIBRARIES = ("/usr/lib/", "/System/Library/", "@rpath/", "@loader_path/", "@executable_path/")
_UNIVERSAL2 = ("arm64", "x86_64")


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
        """Paths as they are; a version (3.11) from python.org's framework build, then PATH, then
        Homebrew. Nothing configured: every installed one (`installed_pythons`), then what the
        host-wide discovery finds. python.org's come first: they are universal2 and target old
        macOS releases, unlike Homebrew's, which are built for the host's own release."""
        if configured:
            return find_interpreters([self._locate(entry) for entry in configured], exe_names=())
        found = {i.tag: i for i in probe_all(installed_pythons().values())}
        for interp in find_interpreters([], exe_names=_EXE_NAMES):
            found.setdefault(interp.tag, interp)
        return sorted(found.values(), key=lambda i: i.version)

    def _locate(self, entry: str) -> str:
        if Path(entry).is_file() or not _VERSION.fullmatch(entry):
            return entry  # a path (a missing one is reported when it is probed)
        framework = framework_pythons().get(entry)
        if framework is not None:
            return str(framework)
        if hit := shutil.which(f"python{entry}"):
            return hit
        brewed = homebrew_pythons().get(entry)
        if brewed is not None:
            return str(brewed)
        where = (f"{_ROOT / THREADED_FRAMEWORK_VERSIONS}/{entry[:-1]}/bin/python{entry}" if entry.endswith("t")
                 else f"{_ROOT / FRAMEWORK_VERSIONS}/{entry}/bin/python3")
        raise ConfigError(f"no {self.name} interpreter for {entry!r} (tried {where}, python{entry} on PATH, "
                          f"Homebrew's python@{entry})")

    def offered_pythons(self, settings: Settings) -> list[Offer]:
        """The host's interpreters (builds on this platform run on the host, not in containers)."""
        return host_offers(self, settings)

    def default_images(self) -> list[ImageConfig]:
        return []  # no container images: builds run on the host

    def marker_environment(self, python: str) -> dict[str, str]:
        return marker_environment(python, system=_SYSTEM, machine=self.arch)

    def supported_tags(self, python: tuple[int, int], *, threaded: bool = False) -> list[Tag]:
        """Tags an interpreter of this version installs on the oldest macOS this queue targets."""
        return tags_for(python, list(mac_platforms(version=self.target, arch=self.arch)), threaded=threaded)

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
        repaired = repair_with("delocate-wheel", lambda out: self.repair_command(wheel, out, exclude), dest=dest,
                               env=env, log=log, tag_ok=self.platform_tag_ok,
                               wanted=f"{self.name} platform tag for macOS {self.target_dotted}")
        problems = binary_problems(repaired)
        if problems:
            raise PackageFailure("repair", f"{repaired.name} after delocate: " + "; ".join(problems))
        return repaired

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



# Interpreters installed on a Mac -----------------------------------------------------------------


def _by_version(items: Sequence[tuple[str, Path]]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for version, exe in items:
        if _VERSION.fullmatch(version) and exe.is_file() and os.access(exe, os.X_OK):
            found.setdefault(version, exe)
    return dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))


def framework_pythons() -> dict[str, Path]:
    """Version -> interpreter of python.org's installers (/Library/Frameworks/Python.framework/Versions/X.Y/bin/python3;
    X.Yt -> PythonT.framework/Versions/X.Y/bin/pythonX.Yt, the free-threaded build)."""
    versions, threaded = _ROOT / FRAMEWORK_VERSIONS, _ROOT / THREADED_FRAMEWORK_VERSIONS
    items = [(v.name, v / "bin" / "python3") for v in sorted(versions.iterdir())] if versions.is_dir() else []
    items += [(f"{v.name}t", v / "bin" / f"python{v.name}t") for v in sorted(threaded.iterdir())] if threaded.is_dir() else []
    return _by_version(items)


def homebrew_pythons() -> dict[str, Path]:
    """Version -> interpreter of Homebrew's python@X.Y formulae (PREFIX/opt/python@X.Y/bin/pythonX.Y)."""
    items = []
    for prefix in HOMEBREW_PREFIXES:
        opt = _ROOT / prefix / "opt"
        if opt.is_dir():
            for formula in sorted(opt.glob("python@*")):
                version = formula.name.removeprefix("python@")
                items.append((version, formula / "bin" / f"python{version}"))
    return _by_version(items)


def installed_pythons() -> dict[str, Path]:
    """Every CPython installed in the usual places, python.org's before Homebrew's of the same version."""
    found = dict(homebrew_pythons())
    found.update(framework_pythons())
    return dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))


def probe_all(paths: Sequence[Path] | object) -> list[Interpreter]:
    """The interpreters among `paths` that run and are CPython; the others are left out."""
    found: dict[str, Interpreter] = {}
    for path in paths:  # type: ignore[attr-defined]
        try:
            [interp] = find_interpreters([str(path)], exe_names=())
        except ConfigError:
            continue
        found.setdefault(interp.tag, interp)
    return list(found.values())


# What the Mach-O files in a wheel say (read with macholib, on any host) ------------------------------


@dataclass(frozen=True, kw_only=True)
class MachOBinary:
    """One Mach-O file in a wheel: per architecture, the oldest macOS it runs on and what it loads."""

    name: str  # its path inside the wheel
    min_macos: dict[str, tuple[int, int]]  # arch (arm64, x86_64) -> LC_BUILD_VERSION / LC_VERSION_MIN_MACOSX
    libraries: tuple[str, ...]  # the install names it loads (LC_LOAD_DYLIB and kin), every architecture's

    @property
    def archs(self) -> frozenset[str]:
        return frozenset(self.min_macos)


def macho_binaries(wheel: Path) -> list[MachOBinary]:
    """Every Mach-O file (extension, dylib, executable) in `wheel`, read from its bytes: no Xcode tools,
    so it runs on a Linux host too. Files with a Mach-O magic that do not parse are left out, as
    delocate leaves them."""
    from macholib.mach_o import CPU_TYPE_NAMES, LC_BUILD_VERSION, LC_VERSION_MIN_MACOSX
    from macholib.MachO import MachO

    found = []
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory(prefix="farm-macho-") as tmp:
        for info in zf.infolist():
            if info.is_dir():
                continue
            with zf.open(info) as member:
                if member.read(4) not in _MACHO_MAGIC:
                    continue
            path = Path(tmp) / "binary"
            path.write_bytes(zf.read(info))
            try:
                macho = MachO(str(path))
            except (struct.error, ValueError):
                continue
            min_macos: dict[str, tuple[int, int]] = {}
            libraries: list[str] = []
            for header in macho.headers:
                arch = CPU_TYPE_NAMES.get(header.header.cputype, str(header.header.cputype)).lower()
                for load, command, _ in header.commands:
                    if load.cmd == LC_BUILD_VERSION:
                        version = command.minos
                    elif load.cmd == LC_VERSION_MIN_MACOSX:
                        version = command.version
                    else:
                        continue
                    min_macos[arch] = (version >> 16 & 0xFFFF, version >> 8 & 0xFF)
                    break
                else:
                    min_macos.setdefault(arch, (0, 0))
                libraries += [name for _, _, name in header.walkRelocatables() if name not in libraries]
            found.append(MachOBinary(name=info.filename, min_macos=min_macos, libraries=tuple(libraries)))
    return found


def binary_problems(wheel: Path) -> list[str]:
    """Where the Mach-O files of a macOS wheel disagree with its platform tags: an architecture the
    tag names that a binary lacks, a binary that needs a newer macOS than the tag says, or a library
    loaded from outside the wheel and the system (what delocate vendors). Empty: consistent."""
    _, _, _, tags = parse_wheel_filename(wheel.name)
    wanted: dict[str, tuple[int, int]] = {}
    for tag in tags:
        match = _MACOS_TAG.match(tag.platform)
        if match is None:
            continue
        version = (int(match[1]), int(match[2]))
        for arch in _UNIVERSAL2 if match[3] == "universal2" else (match[3],):
            wanted[arch] = min(wanted.get(arch, version), version)
    problems = []
    for binary in macho_binaries(wheel):
        for arch, tagged in sorted(wanted.items()):
            if arch not in binary.archs:
                problems.append(f"{binary.name} has no {arch} code ({', '.join(sorted(binary.archs))} only)")
                continue
            needs = binary.min_macos[arch]
            floor = max(tagged, (11, 0)) if arch == "arm64" else tagged  # arm64 code runs on 11.0 or later only
            if needs > floor:
                problems.append(f"{binary.name} ({arch}) needs macOS {needs[0]}.{needs[1]}, "
                                f"newer than the tag's {tagged[0]}.{tagged[1]}")
        outside = [lib for lib in binary.libraries if not lib.startswith(_SYSTEM_LIBRARIES)]
        problems += [f"{binary.name} loads {lib}, which is neither in the wheel nor the system's" for lib in outside]
    return problems
