"""macOS and Windows workers, made ready for real hosts from a Linux one.

Real here: macOS and Windows wheels from PyPI (compiled extensions, a universal2 wheel with vendored
dylibs), read byte for byte (Mach-O with macholib, PE with pefile) and checked against their tags
and each queue; delvewheel repairing them; the worker configurations, the launchd plist, the
Windows service definition and the GitHub Actions workflow, parsed and checked against the farm's
own settings and command-line parser; `farm worker --self-test` building, repairing and verifying
the bundled sample for real on this Linux host.

Fake (marked `fake_os`, because those hosts cannot run here): interpreter discovery (a fake file
tree of python.org and Homebrew installs, a fake `py` launcher, fake interpreters that answer the
farm's probe), delocate-wheel, and a Windows venv layout (Scripts\\python.exe) made on Linux.
"""

from __future__ import annotations

import io
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from farm.errors import ConfigError, PackageFailure
from farm.worker.platforms import get_platform
from farm.worker.platforms.macos import MacOSPlatform, binary_problems, macho_binaries
from farm.worker.platforms.windows import WindowsPlatform, binary_problems as pe_problems, launcher_listing
from tests.helpers.env import CACHE, ONE_PYTHON, ROOT, UPSTREAM, installer_env
from tests.helpers.platforms import FAKE_DELOCATE, bin_on_path, calls, fake_tool  # noqa: F401 - fixture


MAC_ARM64 = "MarkupSafe-3.0.2-cp311-cp311-macosx_11_0_arm64.whl"
MAC_UNIVERSAL2 = "MarkupSafe-3.0.2-cp311-cp311-macosx_10_9_universal2.whl"
MAC_DYLIBS = "pyzmq-26.2.0-cp311-cp311-macosx_10_15_universal2.whl"  # vendors libzmq and libsodium
WIN_AMD64 = "MarkupSafe-3.0.2-cp311-cp311-win_amd64.whl"
WIN_PYZMQ = "pyzmq-26.2.0-cp311-cp311-win_amd64.whl"
# file name -> (pip's --platform, requirement)
REAL_WHEELS = {
    MAC_ARM64: ("macosx_11_0_arm64", "markupsafe==3.0.2"),
    MAC_UNIVERSAL2: ("macosx_10_9_x86_64", "markupsafe==3.0.2"),
    MAC_DYLIBS: ("macosx_11_0_arm64", "pyzmq==26.2.0"),
    WIN_AMD64: ("win_amd64", "markupsafe==3.0.2"),
    WIN_PYZMQ: ("win_amd64", "pyzmq==26.2.0"),
}
WORKERS = ROOT / "workers"


def real_wheel(filename: str) -> Path:
    """A real wheel from PyPI, downloaded once into ~/.cache/wheel-farm/wheels (pip picks the file for
    the platform, as it would on that host: universal2 when that is what the release has)."""
    folder = CACHE / "wheels"
    path = folder / filename
    if not path.is_file():
        platform, requirement = REAL_WHEELS[filename]
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--platform", platform,
                        "--python-version", "3.11", "--no-deps", "--index-url", UPSTREAM, "-d", str(folder),
                        requirement], env=installer_env(), check=True, capture_output=True, timeout=300)
    assert path.is_file(), f"pip did not download {filename}"
    return path


def renamed(wheel: Path, folder: Path, platform_tag: str, *, patch: tuple[bytes, bytes] | None = None) -> Path:
    """The same wheel's bytes under another platform tag (and with one byte string replaced in its
    binaries, same length, so they stay valid files)."""
    name, version, _, tags = parse_wheel_filename(wheel.name)
    [tag] = {(t.interpreter, t.abi) for t in tags}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{wheel.name.split('-')[0]}-{version}-{tag[0]}-{tag[1]}-{platform_tag}.whl"
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if patch and info.filename.endswith((".so", ".dylib", ".pyd")) and patch[0] in data:
                assert len(patch[0]) == len(patch[1])
                data = data.replace(patch[0], patch[1])
            zout.writestr(info, data)
    return out


# Mach-O and PE files of real wheels, read on Linux (real) ----------------------------------------


@pytest.mark.network
def test_macho_binaries_of_real_macos_wheels():
    """The farm reads each Mach-O file's architectures, minimum macOS and loaded libraries from its
    bytes: an arm64-only extension, a universal2 one (x86_64 from 10.9, arm64 from 11.0) and pyzmq's
    extension with the two dylibs delocate vendored into zmq/.dylibs."""
    [arm] = macho_binaries(real_wheel(MAC_ARM64))
    assert arm.name == "markupsafe/_speedups.cpython-311-darwin.so"
    assert arm.min_macos == {"arm64": (11, 0)} and arm.libraries == ("/usr/lib/libSystem.B.dylib",)
    [fat] = macho_binaries(real_wheel(MAC_UNIVERSAL2))
    assert fat.min_macos == {"x86_64": (10, 9), "arm64": (11, 0)}
    zmq = {b.name: b for b in macho_binaries(real_wheel(MAC_DYLIBS))}
    assert set(zmq) == {"zmq/backend/cython/_zmq.cpython-311-darwin.so", "zmq/.dylibs/libzmq.5.dylib",
                        "zmq/.dylibs/libsodium.26.dylib"}
    ext = zmq["zmq/backend/cython/_zmq.cpython-311-darwin.so"]
    assert ext.archs == {"arm64", "x86_64"} and ext.min_macos["x86_64"] == (10, 15)
    assert "@loader_path/../../.dylibs/libzmq.5.dylib" in ext.libraries
    assert "@loader_path/libsodium.26.dylib" in zmq["zmq/.dylibs/libzmq.5.dylib"].libraries
    for name in (MAC_ARM64, MAC_UNIVERSAL2, MAC_DYLIBS):
        assert binary_problems(real_wheel(name)) == [], name


@pytest.mark.network
def test_macho_reading_agrees_with_delocate():
    """delocate-wheel checks the deployment target with its own macholib reader (the one part of
    delocate that runs without the Xcode tools); the farm's reading gives the same versions."""
    from delocate.delocating import _get_macos_min_version  # delocate's own target check

    wheel = real_wheel(MAC_DYLIBS)
    ours = {b.name: b.min_macos for b in macho_binaries(wheel)}
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        for name, versions in ours.items():
            path = Path(tmp) / Path(name).name
            path.write_bytes(zf.read(name))
            theirs = {arch.lower(): (v.major, v.minor) for arch, v in _get_macos_min_version(path)}
            assert theirs == versions, name


@pytest.mark.network
def test_mismatched_macos_wheels_are_caught(tmp_path):
    """Real binaries under a false tag, or loading a library from outside the wheel, are found:
    the checks delocate's repair is followed by on a macOS worker."""
    folder = tmp_path / "renamed"
    x86 = renamed(real_wheel(MAC_ARM64), folder, "macosx_11_0_x86_64")
    assert binary_problems(x86) == ["markupsafe/_speedups.cpython-311-darwin.so has no x86_64 code (arm64 only)"]
    old = renamed(real_wheel(MAC_DYLIBS), folder, "macosx_10_9_universal2")
    problems = binary_problems(old)
    assert len(problems) == 3 and all("(x86_64) needs macOS 10.15, newer than the tag's 10.9" in p for p in problems)
    system = b"/usr/lib/libSystem.B.dylib"
    outside = b"/opt/" + b"z" * (len(system) - 11) + b".dylib"
    linked = renamed(real_wheel(MAC_ARM64), tmp_path / "linked", "macosx_11_0_arm64", patch=(system, outside))
    assert binary_problems(linked) == [
        f"markupsafe/_speedups.cpython-311-darwin.so loads {outside.decode()}, which is neither in the wheel "
        "nor the system's"]


@pytest.mark.network
def test_each_queue_takes_only_its_real_wheels(monkeypatch):
    """The tag checks of macos.py and windows.py on real file names, with each queue's default
    deployment target: an arm64 wheel only on macos-arm64, universal2 from 10.9 on every macOS
    queue, pyzmq's (10.15) only where the target is 10.15 or later, Windows wheels only on Windows."""
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    queues = ["macos-arm64", "macos-x86_64", "macos-universal2", "windows-amd64", "windows-arm64", "windows-x86",
              "linux-x86_64"]
    accepted = {name: [q for q in queues if get_platform(q).platform_tag_ok(
        sorted(str(t) for t in parse_wheel_filename(real_wheel(name).name)[3]))] for name in REAL_WHEELS}
    assert accepted == {
        MAC_ARM64: ["macos-arm64"],
        MAC_UNIVERSAL2: ["macos-arm64", "macos-x86_64", "macos-universal2"],
        MAC_DYLIBS: ["macos-arm64"],
        WIN_AMD64: ["windows-amd64"],
        WIN_PYZMQ: ["windows-amd64"],
    }
    monkeypatch.setenv("MACOSX_DEPLOYMENT_TARGET", "10.15")
    assert MacOSPlatform("x86_64").platform_tag_ok([f"cp311-cp311-{MAC_DYLIBS[:-4].split('-')[-1]}"])


@pytest.mark.network
def test_pe_files_of_real_windows_wheels(tmp_path):
    """Each .pyd and .dll is read (pefile): built for the machine its tag names, or the wheel is refused."""
    assert pe_problems(real_wheel(WIN_AMD64)) == [] and pe_problems(real_wheel(WIN_PYZMQ)) == []
    win32 = renamed(real_wheel(WIN_PYZMQ), tmp_path, "win32")
    assert WindowsPlatform("x86").platform_tag_ok(["cp311-cp311-win32"])  # the name alone would pass
    assert pe_problems(win32) == ["zmq/backend/cython/_zmq.cp311-win_amd64.pyd is built for "
                                  "IMAGE_FILE_MACHINE_AMD64, not x86"]


@pytest.mark.network
def test_delvewheel_repairs_real_wheels_and_checks_their_machine(tmp_path):
    """delvewheel (real, on Linux) repairs pyzmq's wheel (libzmq linked in: nothing to vendor); a
    wheel whose tag lies about the machine fails the repair step as the package's failure
    (delvewheel finds it first; the farm's own PE check stands behind it)."""
    pytest.importorskip("delvewheel")
    log = io.StringIO()
    out = WindowsPlatform("amd64").repair(real_wheel(WIN_PYZMQ), tmp_path / "ok", exclude=[], log=log)
    assert out.name == WIN_PYZMQ and "analyzing package-level extension module zmq/backend/cython" in log.getvalue()
    win32 = renamed(real_wheel(WIN_PYZMQ), tmp_path / "in", "win32")
    with pytest.raises(PackageFailure, match="_zmq.cp311-win_amd64.pyd has a CPU architecture that is not compatible"):
        WindowsPlatform("x86").repair(win32, tmp_path / "bad", exclude=[], log=io.StringIO())


@pytest.mark.fake_os
@pytest.mark.network
def test_macos_repair_checks_the_binaries_delocate_returns(bin_on_path, tmp_path, monkeypatch):  # noqa: F811
    """Fake delocate-wheel and Xcode tools (scripts: delocate needs macOS), real binaries: a wheel
    whose extension still loads a library from /opt after the repair fails it."""
    for tool in ("otool", "install_name_tool"):
        fake_tool(bin_on_path, tool, "")
    fake_tool(bin_on_path, "delocate-wheel", FAKE_DELOCATE)
    monkeypatch.setattr("farm.worker.platforms.macos.tool", lambda name: str(bin_on_path / name))
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    platform = MacOSPlatform("arm64")
    good = platform.repair(real_wheel(MAC_ARM64), tmp_path / "good", exclude=[], log=io.StringIO())
    assert good.name == MAC_ARM64
    system = b"/usr/lib/libSystem.B.dylib"
    linked = renamed(real_wheel(MAC_ARM64), tmp_path / "in", "macosx_11_0_arm64",
                     patch=(system, b"/opt/" + b"z" * (len(system) - 11) + b".dylib"))
    with pytest.raises(PackageFailure, match=r"after delocate: .* loads /opt/z+\.dylib"):
        platform.repair(linked, tmp_path / "bad", exclude=[], log=io.StringIO())
    assert len(calls(bin_on_path, "delocate-wheel")) == 2


# interpreter discovery (fake file trees, fake launcher, fake interpreters) -------------------------


def fake_python(path: Path, version: tuple[int, int], *, threaded: bool = False) -> Path:
    """A stand-in interpreter: answers the farm's probe (`-c CODE`) as CPython `version` would (its
    free-threaded build with `threaded`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '[\"cpython\", [{version[0]}, {version[1]}], {str(threaded).lower()}]'\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def mac_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake macOS file tree: python.org's 3.9, 3.12 and free-threaded 3.13t, Homebrew's 3.12 and 3.13 (Apple silicon
    prefix) and 3.10 (Intel prefix), a framework `Current` link and a non-executable leftover."""
    from farm.worker.platforms import _common

    root = tmp_path / "mac"
    versions = root / "Library/Frameworks/Python.framework/Versions"
    for v in ((3, 9), (3, 12)):
        fake_python(versions / f"{v[0]}.{v[1]}" / "bin" / "python3", v)
    (versions / "Current").symlink_to(versions / "3.12")
    (versions / "3.8" / "bin").mkdir(parents=True)
    (versions / "3.8" / "bin" / "python3").write_text("not executable")
    for prefix, v in (("opt/homebrew", (3, 12)), ("opt/homebrew", (3, 13)), ("usr/local", (3, 10))):
        fake_python(root / prefix / "opt" / f"python@{v[0]}.{v[1]}" / "bin" / f"python{v[0]}.{v[1]}", v)
    fake_python(root / "Library/Frameworks/PythonT.framework/Versions/3.13/bin/python3.13t", (3, 13), threaded=True)
    monkeypatch.setattr("farm.worker.platforms.macos._ROOT", root)
    monkeypatch.setenv("PATH", "/nonexistent")  # no python3.X on PATH: only the tree's
    _common.probe_interpreter.cache_clear()
    yield root
    _common.probe_interpreter.cache_clear()


@pytest.mark.fake_os
def test_macos_discovery_in_a_fake_tree(mac_tree):
    """Fake file tree and interpreters (a Mac's folders cannot exist here): python.org's framework
    builds, then Homebrew's, each version once, python.org's winning; the probe decides the tag."""
    from farm.worker.platforms.macos import framework_pythons, homebrew_pythons, installed_pythons

    fw = mac_tree / "Library/Frameworks/Python.framework/Versions"
    ft = mac_tree / "Library/Frameworks/PythonT.framework/Versions/3.13/bin/python3.13t"
    assert framework_pythons() == {"3.9": fw / "3.9/bin/python3", "3.12": fw / "3.12/bin/python3", "3.13t": ft}
    assert homebrew_pythons() == {
        "3.10": mac_tree / "usr/local/opt/python@3.10/bin/python3.10",
        "3.12": mac_tree / "opt/homebrew/opt/python@3.12/bin/python3.12",
        "3.13": mac_tree / "opt/homebrew/opt/python@3.13/bin/python3.13"}
    assert list(installed_pythons()) == ["3.9", "3.10", "3.12", "3.13", "3.13t"]
    assert installed_pythons()["3.12"] == fw / "3.12/bin/python3"

    platform = MacOSPlatform("arm64")
    found = {i.tag: i.path for i in platform.interpreters([])}  # nothing configured: every one found
    assert {tag: found[tag] for tag in ("cp39", "cp310", "cp312", "cp313", "cp313t")} == {
        "cp39": fw / "3.9/bin/python3", "cp310": mac_tree / "usr/local/opt/python@3.10/bin/python3.10",
        "cp312": fw / "3.12/bin/python3", "cp313": mac_tree / "opt/homebrew/opt/python@3.13/bin/python3.13",
        "cp313t": ft}
    [i12, i13, i13t] = platform.interpreters(["3.12", "3.13", "3.13t"])  # versions: framework first, else Homebrew
    assert (i12.path, i13.path, i13t.path) == (fw / "3.12/bin/python3",
                                               mac_tree / "opt/homebrew/opt/python@3.13/bin/python3.13", ft)
    assert i13t.tag == "cp313t"
    with pytest.raises(ConfigError, match=r"no macos-arm64 interpreter for '3\.8'"):
        platform.interpreters(["3.8"])  # there, but not executable


PY_LISTING = r"""
 -V:3.13-arm64    {arm}
 -V:3.12 *        {py312}
 -V:3.11-32       {x86}
 -V:3.13t         {ft}
 -V:ContinuumAnalytics/Anaconda39-64 C:\Anaconda3\python.exe
"""


@pytest.mark.fake_os
def test_windows_launcher_listing_formats():
    """`py -0p` as the launcher of 3.11+ prints it, and as the older one did (real formats, typed in)."""
    new = launcher_listing(textwrap.dedent(r"""
         -V:3.12 *        C:\Users\me\AppData\Local\Programs\Python\Python312\python.exe
         -V:3.11          C:\Program Files\Python311\python.exe
         -V:3.11-32       C:\Program Files (x86)\Python311-32\python.exe
         -V:3.13-arm64    C:\Program Files\Python313-arm64\python.exe
         -V:3.13t         C:\Program Files\Python313\python3.13t.exe
         -V:3.14t-32      C:\Program Files (x86)\Python314-32\python3.14t.exe
         -V:ContinuumAnalytics/Anaconda39-64 C:\Anaconda3\python.exe
        """))
    assert new == [("3.12", "amd64", r"C:\Users\me\AppData\Local\Programs\Python\Python312\python.exe"),
                   ("3.11", "amd64", r"C:\Program Files\Python311\python.exe"),
                   ("3.11", "x86", r"C:\Program Files (x86)\Python311-32\python.exe"),
                   ("3.13", "arm64", r"C:\Program Files\Python313-arm64\python.exe"),
                   ("3.13t", "amd64", r"C:\Program Files\Python313\python3.13t.exe"),
                   ("3.14t", "x86", r"C:\Program Files (x86)\Python314-32\python3.14t.exe")]
    old = launcher_listing("Installed Pythons found by py Launcher for Windows\n"
                           " -3.9-64        C:\\Python39\\python.exe *\n -3.8-32        C:\\Python38-32\\python.exe\n")
    assert old == [("3.9", "amd64", r"C:\Python39\python.exe"), ("3.8", "x86", r"C:\Python38-32\python.exe")]


@pytest.mark.fake_os
def test_windows_discovery_with_a_fake_launcher_and_install_folders(bin_on_path, tmp_path, monkeypatch):  # noqa: F811
    """Fake `py` launcher, fake %LOCALAPPDATA% and Program Files trees, fake interpreters (Windows
    cannot run here): each architecture queue finds its own, the launcher's first."""
    from farm.worker.platforms import _common

    interp = tmp_path / "interp"
    paths = {"arm": fake_python(interp / "arm" / "python.exe", (3, 13)),
             "py312": fake_python(interp / "312" / "python.exe", (3, 12)),
             "x86": fake_python(interp / "x86" / "python.exe", (3, 11)),
             "ft": fake_python(interp / "ft" / "python3.13t.exe", (3, 13), threaded=True)}
    fake_tool(bin_on_path, "py", f"""
        if args == ["-0p"]:
            print({PY_LISTING.format(**{k: str(v) for k, v in paths.items()})!r})
            sys.exit(0)
        sys.exit(103)
        """)
    local, program_files = tmp_path / "AppData" / "Local", tmp_path / "Program Files"
    monkeypatch.setenv("LOCALAPPDATA", str(local))
    monkeypatch.setenv("ProgramFiles", str(program_files))
    monkeypatch.setenv("ProgramFiles(x86)", str(tmp_path / "Program Files (x86)"))
    per_user = fake_python(local / "Programs" / "Python" / "Python310" / "python.exe", (3, 10))
    fake_python(local / "Programs" / "Python" / "Python312" / "python.exe", (3, 12))  # the launcher's 3.12 wins
    all_users = fake_python(program_files / "Python39" / "python.exe", (3, 9))
    fake_python(program_files / "Python313-arm64" / "python.exe", (3, 13))
    py314 = fake_python(program_files / "Python314" / "python.exe", (3, 14))
    py314t = fake_python(program_files / "Python314" / "python3.14t.exe", (3, 14), threaded=True)  # beside it
    fake_python(tmp_path / "Program Files (x86)" / "Python39-32" / "python.exe", (3, 9))
    _common.probe_interpreter.cache_clear()

    assert WindowsPlatform("amd64").installed_pythons() == {
        "3.9": str(all_users), "3.10": str(per_user), "3.12": str(paths["py312"]), "3.13t": str(paths["ft"]),
        "3.14": str(py314), "3.14t": str(py314t)}
    assert WindowsPlatform("arm64").installed_pythons() == {"3.13": str(paths["arm"])}
    assert WindowsPlatform("x86").installed_pythons() == {
        "3.9": str(tmp_path / "Program Files (x86)" / "Python39-32" / "python.exe"), "3.11": str(paths["x86"])}
    found = {i.tag: i.path for i in WindowsPlatform("amd64").interpreters([])}
    assert {t: found[t] for t in ("cp39", "cp310", "cp312", "cp313t", "cp314", "cp314t")} == {
        "cp39": all_users, "cp310": per_user, "cp312": paths["py312"], "cp313t": paths["ft"],
        "cp314": py314, "cp314t": py314t}
    assert calls(bin_on_path, "py")[0] == ["-0p"]
    _common.probe_interpreter.cache_clear()


# the Windows verification path (Scripts\python.exe), on Linux with a Windows venv layout -------------

FAKE_UV = """
    # uv with a Windows venv layout: `venv` makes a real venv and puts its interpreter at
    # Scripts/python.exe too; everything else runs the real uv.
    real = os.environ["REAL_UV"]
    if args[0] == "venv":
        subprocess.run([real, *args], check=True)
        venv = pathlib.Path(args[-1])
        (venv / "Scripts").mkdir()
        (venv / "Scripts" / "python.exe").symlink_to((venv / "bin" / "python").resolve())
        shutil.rmtree(venv / "bin")
        sys.exit(0)
    sys.exit(subprocess.run([real, *args]).returncode)
    """


@pytest.mark.fake_os
def test_windows_host_verification_uses_scripts_python_exe(bin_on_path, tmp_path, monkeypatch):  # noqa: F811
    """Fake: a venv laid out as on Windows (Scripts\\python.exe, no bin/) by a uv wrapper, because
    Windows cannot run here. The wheel is installed with --python <venv>/Scripts/python.exe and the
    import test runs with that interpreter; a real install and a real import of a real wheel."""
    import functools

    from farm.worker import verify
    from farm.worker.engines.native import uv_bin, venv_python
    from farm.worker.platforms.base import Interpreter
    from farm.recipes.schema import Options
    from farm.worker.sandbox import Unsandboxed

    script = fake_tool(bin_on_path, "uv", "import subprocess\n" + textwrap.dedent(FAKE_UV))
    monkeypatch.setenv("REAL_UV", uv_bin())
    monkeypatch.setattr(verify, "uv_bin", lambda: str(script))
    monkeypatch.setattr(verify, "venv_python", functools.partial(venv_python, windows=True))
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", "ANSWER = 42\n")
        zf.writestr("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
        zf.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("demo-1.0.dist-info/RECORD", "")
    index = tmp_path / "index" / "simple"
    index.mkdir(parents=True)
    interp = Interpreter(tag="cp311", path=Path(sys.executable), version=sys.version_info[:2])
    outcome = verify.verify_on_host(wheel=wheel, interp=interp, index_url=index.as_uri(), options=Options(test_imports=["demo"]),
                                    project=None, work=tmp_path / "work", log=io.StringIO(), timeout=120,
                                    sandbox=Unsandboxed(), limits=_limits())
    scripts_python = str(tmp_path / "work" / "verify-venv" / "Scripts" / "python.exe")
    assert outcome.passed, outcome.detail
    assert f"--python {scripts_python}" in outcome.install_command
    assert [scripts_python, "-c", "import demo"] in [shlex.split(c)[:3] for c in outcome.commands], outcome.commands
    assert not (tmp_path / "work" / "verify-venv" / "bin").exists()


def _limits():
    from farm.config import Settings
    from farm.recipes.schema import Options
    from farm.worker.sandbox import job_limits

    return job_limits(Settings(), Options())


# farm worker --self-test (real builds on this Linux host) ----------------------------------------


def self_test(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli", "--home", str(home), "worker", "--self-test", *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "FARM_PYTHONS": ONE_PYTHON, **env})


def test_sample_sdist_is_the_same_bytes_every_time(tmp_path):
    """The bundled sample, packed at run time: a PEP 625 name, PKG-INFO, and the same digest each time."""
    from farm.worker.selftest import sample_sdist

    first, second = sample_sdist(tmp_path / "a"), sample_sdist(tmp_path / "b")
    assert first.name == "farm_selftest-1.0.tar.gz" and first.read_bytes() == second.read_bytes()
    import tarfile

    with tarfile.open(first) as tar:
        assert sorted(tar.getnames()) == [f"farm_selftest-1.0/{n}" for n in (
            "PKG-INFO", "farm_selftest/__init__.py", "pyproject.toml", "setup.py", "src/native.c")]


def test_self_test_of_an_unknown_platform_fails_at_once(tmp_path):
    res = self_test(tmp_path / "home", "--platform", "plan9-x86")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "  FAIL  platform" in res.stdout and "unknown platform 'plan9-x86'" in res.stdout


@pytest.mark.slow
@pytest.mark.network
def test_self_test_builds_repairs_and_verifies_on_this_host(tmp_path):
    """`farm worker --self-test` on Linux, native engine, sandbox on: every step of the worker's
    pipeline passes for the sample, and the wheel it made is a repaired manylinux wheel."""
    keep = tmp_path / "keep"
    res = self_test(tmp_path / "home", "--keep", str(keep))
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for step in ("platform", "interpreters", *(f"{tag} {s}" for s in (
            "fetching", "building", "repairing", "verifying", "attesting", "uploading")), f"build+verify {tag}"):
        assert f"  PASS  {step} " in out, step
    assert "FAIL" not in out and "self-test passed: 1 of 1 Pythons" in out
    [wheel] = keep.glob(f"{tag}/storage/**/farm_selftest-1.0-*.whl")
    assert "manylinux" in wheel.name and wheel.name in out
    with zipfile.ZipFile(wheel) as zf:
        assert any(n.startswith("farm_selftest/_native.") and n.endswith(".so") for n in zf.namelist())


@pytest.mark.slow
@pytest.mark.network
def test_self_test_names_the_step_a_host_cannot_do(tmp_path):
    """The macOS queue's self-test on this Linux host (sandbox off: sandbox-exec is macOS's): the
    build runs, and the repair fails for want of the Xcode tools, with the fix in the message."""
    res = self_test(tmp_path / "home", "--platform", "macos-arm64", FARM_SANDBOX="false")
    assert res.returncode == 1
    assert "  PASS  cp3" in res.stdout and "building" in res.stdout
    failing = [line for line in res.stdout.splitlines() if "FAIL" in line]
    assert "repairing" in failing[0] and "xcode-select --install" in res.stdout
    assert "self-test FAILED: 0 of 1 Pythons" in res.stdout


# worker configuration, service definitions and the CI workflow (real files, parsed and checked) ----


def farm_args(argv: list[str]):
    """`argv` (after the program) parsed by the farm's own command-line parser."""
    from farm.cli.commands import parser

    return parser().parse_args(argv)


@pytest.mark.parametrize("family", ["macos", "windows"])
def test_worker_configuration_uses_the_api_and_no_shared_folder(family, tmp_path, monkeypatch):
    """workers/*/farm.toml as $FARM_HOME/farm.toml: valid settings, storage over the farm's API
    (HttpStorage with the token), verification from the API's index, nothing on a shared folder."""
    from farm.config import get_settings, reset_settings
    from farm.storage import get_storage
    from farm.storage_http import HttpStorage

    for name in [k for k in os.environ if k.startswith("FARM_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(WORKERS / family / "farm.toml", home / "farm.toml")
    raw = tomllib.loads((home / "farm.toml").read_text())
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.setattr("farm.storage._owner", False)  # a worker process (an in-process API test may have owned it)
    reset_settings()
    try:
        settings = get_settings()
        assert {"storage_root", "index_root", "farm_index_url"}.isdisjoint(raw)
        assert settings.server_url.startswith("http") and settings.token and settings.broker_url.startswith("redis://")
        assert get_platform(settings.platform).family == family and settings.engine == "native"
        storage = get_storage()
        assert isinstance(storage, HttpStorage) and storage.base_url == settings.server_url
        assert storage._headers == {"Authorization": f"Bearer {settings.token}"}
        assert settings.verify_index_url == settings.server_url + "/simple/"
    finally:
        reset_settings()


def test_launchd_plist_runs_a_worker_the_cli_accepts():
    """workers/macos/org.wheel-farm.worker.plist, parsed as launchd does (plistlib): the program is
    the venv's farm, its arguments are a `farm worker` command the parser accepts for a macOS queue,
    FARM_HOME, working folder and logs agree, and Homebrew is on PATH."""
    plist = plistlib.loads((WORKERS / "macos" / "org.wheel-farm.worker.plist").read_bytes())
    assert plist["Label"] == "org.wheel-farm.worker" and plist["UserName"] == "farm"
    program, *argv = plist["ProgramArguments"]
    assert program.endswith("/bin/farm") and Path(program).is_absolute()
    args = farm_args(argv)
    assert args.command == "worker" and not args.self_test
    config = tomllib.loads((WORKERS / "macos" / "farm.toml").read_text())
    assert args.platform == config["platform"] and get_platform(args.platform).family == "macos"
    env = plist["EnvironmentVariables"]
    home = env["FARM_HOME"]
    assert plist["WorkingDirectory"] == home and plist["StandardOutPath"].startswith(home + "/logs/")
    assert plist["StandardErrorPath"] == plist["StandardOutPath"]
    assert "/opt/homebrew/bin" in env["PATH"].split(":") and "/usr/bin" in env["PATH"].split(":")
    assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
    assert not any(k.startswith("FARM_") and k != "FARM_HOME" for k in env)  # the rest is in farm.toml


def test_windows_service_definition_runs_a_worker_the_cli_accepts():
    """workers/windows/farm-worker.xml (WinSW) and install-service.ps1: the service runs the venv's
    Scripts\\farm.exe with a `farm worker` command the parser accepts, restarts it on failure, and
    the install script's own farm command (the self-test) is one the parser accepts too."""
    root = ET.parse(WORKERS / "windows" / "farm-worker.xml").getroot()
    assert root.tag == "service" and root.findtext("id") == "farm-worker"
    assert root.findtext("executable").endswith("\\Scripts\\farm.exe")
    args = farm_args(root.findtext("arguments").split())
    assert args.command == "worker" and get_platform(args.platform).family == "windows"
    home = root.findtext("workingdirectory")
    assert {e.get("name"): e.get("value") for e in root.findall("env")}["FARM_HOME"] == home
    assert root.findtext("logpath").startswith(home) and root.find("onfailure").get("action") == "restart"
    assert root.find("serviceaccount") is None  # no password in the repository

    script = (WORKERS / "windows" / "install-service.ps1").read_text()
    calls_of_farm = [line.split("& $farm ", 1)[1] for line in script.splitlines() if "& $farm " in line]
    assert calls_of_farm == ["worker --self-test --platform $Platform"]
    for platform in ("windows-amd64", "windows-arm64", "windows-x86"):
        assert f"'{platform}'" in script  # the ValidateSet
        args = farm_args(calls_of_farm[0].replace("$Platform", platform).split())
        assert args.self_test and args.platform == platform
    # what the script sets in the XML is there to be set
    for element in ("executable", "arguments", "name", "workingdirectory", "logpath"):
        assert f"$xml.service.{element} = " in script and root.find(element) is not None
    assert "$xml.service.serviceaccount" in script and "RemoveChild" in script


def test_github_actions_workflow_runs_the_self_test_on_macos_and_windows():
    """workers/github-actions/self-test.yml (it cannot run here): valid YAML, one job per runner whose
    queue is of that runner's OS, every `farm` command in it accepted by the parser, and the Pythons
    it configures valid settings."""
    import json

    import yaml

    from farm.config import Settings

    workflow = yaml.safe_load((WORKERS / "github-actions" / "self-test.yml").read_text())
    job = workflow["jobs"]["self-test"]
    runs = {(m["os"], m["platform"]) for m in job["strategy"]["matrix"]["include"]}
    assert {os_ for os_, _ in runs} >= {"macos-latest", "windows-latest"}
    for os_, platform in runs:
        assert get_platform(platform).family == os_.split("-")[0]
    lines = [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]
    farm_lines = [line for line in lines if line.startswith("farm ")]
    assert farm_lines and any("--self-test" in line for line in farm_lines)
    for line in farm_lines:
        for _, platform in runs:
            argv = shlex.split(line.replace("${{ matrix.platform }}", platform))[1:]
            args = farm_args([a.replace("$RUNNER_TEMP", "/tmp") for a in argv])
            assert args.command == "worker" and args.self_test and args.platform == platform
    assert "python -m pip install ." in lines
    pythons = json.loads(job["env"]["FARM_PYTHONS"])
    assert Settings(pythons=pythons).pythons == ["3.9", "3.12", "3.13"]
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    offered = setup["with"]["python-version"].split()
    assert set(pythons) <= set(offered) and tuple(map(int, offered[-1].split("."))) >= (3, 11)  # farm's own


@pytest.mark.fake_os
def test_the_probe_tells_a_free_threaded_build_from_its_gil_build(tmp_path: Path) -> None:
    """Fake interpreters answering the probe: the free-threaded 3.13 is cp313t, the other cp313; the real
    interpreter running the tests answers for itself."""
    import sys
    import sysconfig

    from farm.worker.platforms._common import probe_interpreter

    gil = probe_interpreter(str(fake_python(tmp_path / "gil" / "python3", (3, 13))))
    threaded = probe_interpreter(str(fake_python(tmp_path / "ft" / "python3", (3, 13), threaded=True)))
    assert (gil.tag, gil.version, threaded.tag, threaded.version) == ("cp313", (3, 13), "cp313t", (3, 13))
    link = tmp_path / "real" / "python3"  # another path: the probe runs it instead of asking itself
    link.parent.mkdir()
    link.symlink_to(Path(sys.executable).resolve())
    real = probe_interpreter(str(link))
    here = f"cp{sys.version_info[0]}{sys.version_info[1]}{'t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''}"
    assert real.tag == here
