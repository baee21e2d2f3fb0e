"""The macOS and Windows platforms, checked from a Linux host.

What runs for real here: names, build identifiers, wheel tags, tag checks, the repair command lines,
system-package selection, the errors of a host that lacks the OS's tools, and delvewheel itself
(pure Python: it reads and rewrites real Windows wheels on Linux). What cannot run here is delocate
(it needs otool and install_name_tool), Homebrew, Chocolatey and the `py` launcher: the tests that
replace those with small scripts are marked `fake_os` and say so.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.tags import Tag

from farm.errors import ConfigError, InfrastructureFault, PackageFailure
from farm.recipes.load import select_matches
from farm.recipes.schema import SystemPackages
from farm.util.cmd import run
from farm.worker.platforms import get_platform
from farm.worker.platforms._common import wheel_tags
from farm.worker.platforms.linux import LinuxPlatform
from farm.worker.platforms.macos import MacOSPlatform
from farm.worker.platforms.windows import WindowsPlatform, choco_list_command
from tests.helpers.env import CACHE, UPSTREAM, installer_env
from tests.helpers.platforms import FAKE_DELOCATE, bin_on_path, calls, fake_tool  # noqa: F401 - fixtures


PYTHONS = ("cp39", "cp310", "cp311", "cp312", "cp313")
WINDOWS_WHEEL = "MarkupSafe-3.0.2-cp311-cp311-win_amd64.whl"
PYD = "markupsafe/_speedups.cp311-win_amd64.pyd"


# helpers ----------------------------------------------------------------------------------------


def make_wheel(folder: Path, tag: str, *, name: str = "demo", version: str = "1.0",
               files: dict[str, bytes] | None = None) -> Path:
    """A minimal wheel with the given tag (`cp311-cp311-win_amd64`) and files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    contents = {
        f"{name}/__init__.py": b"",
        **(files or {}),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n".encode(),
    }
    record = "".join(f"{n},,\n" for n in contents) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in contents.items():
            zf.writestr(member, data)
        zf.writestr(f"{info}/RECORD", record)
    return path


def call_env(bin_dir: Path, tool: str) -> dict[str, str | None]:
    return [json.loads(line) for line in (bin_dir / "calls.jsonl").read_text().splitlines()
            if json.loads(line)["tool"] == tool][-1]["env"]


def windows_wheel() -> Path:
    """A real win_amd64 wheel of a C extension, downloaded once into ~/.cache/wheel-farm/wheels."""
    folder = CACHE / "wheels"
    path = folder / WINDOWS_WHEEL
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--platform", "win_amd64",
                        "--python-version", "3.11", "--no-deps", "--index-url", UPSTREAM, "-d", str(folder),
                        "markupsafe==3.0.2"], env=installer_env(), check=True, capture_output=True, timeout=300)
    return path


def needs_delvewheel() -> None:
    pytest.importorskip("delvewheel", reason="delvewheel is not installed (a dependency of the Windows worker)")


def patched_windows_wheel(folder: Path) -> Path:
    """The real MarkupSafe wheel whose extension imports FARMTEST0001.dll instead of VCRUNTIME140.dll.

    The import table entry is renamed in place (same length), so the .pyd stays a valid PE file that
    needs one DLL delvewheel does not assume present: a wheel with an external DLL, from real bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / WINDOWS_WHEEL
    with zipfile.ZipFile(windows_wheel()) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == PYD:
                assert data.count(b"VCRUNTIME140.dll") == 1
                data = data.replace(b"VCRUNTIME140.dll", b"FARMTEST0001.dll")
            zout.writestr(info, data)
    return out


def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


# names, identifiers, tags (real) ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "cls", "family", "arch", "build_id"), [
    ("macos-arm64", MacOSPlatform, "macos", "arm64", "cp311-macosx_arm64"),
    ("macos-x86_64", MacOSPlatform, "macos", "x86_64", "cp311-macosx_x86_64"),
    ("macos-universal2", MacOSPlatform, "macos", "universal2", "cp311-macosx_universal2"),
    ("windows-amd64", WindowsPlatform, "windows", "amd64", "cp311-win_amd64"),
    ("windows-arm64", WindowsPlatform, "windows", "arm64", "cp311-win_arm64"),
    ("windows-x86", WindowsPlatform, "windows", "x86", "cp311-win32"),
])
def test_registry_names_and_build_identifiers(name, cls, family, arch, build_id):
    platform = get_platform(name)
    assert isinstance(platform, cls)
    assert (platform.name, platform.family, platform.arch) == (name, family, arch)
    assert platform.build_identifier("cp311") == build_id
    with pytest.raises(dataclasses.FrozenInstanceError):
        platform.arch = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["macos-ppc", "macos-aarch64", "macos-", "windows-x86_64", "windows-ia64"])
def test_unknown_architecture_is_a_configuration_error(name):
    with pytest.raises(ConfigError, match="architecture"):
        get_platform(name)


def test_macos_deployment_target(monkeypatch):
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    assert MacOSPlatform("arm64").target == (11, 0)
    assert MacOSPlatform("x86_64").target == (10, 13)
    assert MacOSPlatform("universal2").target == (10, 13)
    monkeypatch.setenv("MACOSX_DEPLOYMENT_TARGET", "12")
    assert MacOSPlatform("x86_64").target == (12, 0)
    monkeypatch.setenv("MACOSX_DEPLOYMENT_TARGET", "10.15")
    assert MacOSPlatform("arm64").target == (11, 0)  # Apple silicon starts at 11.0
    assert MacOSPlatform("x86_64", deployment_target="10.14").target == (10, 14)  # explicit beats the variable
    monkeypatch.setenv("MACOSX_DEPLOYMENT_TARGET", "eleven")
    with pytest.raises(ConfigError, match="MACOSX_DEPLOYMENT_TARGET"):
        _ = MacOSPlatform("arm64").target
    with pytest.raises(ConfigError, match="older than 10.9"):
        _ = MacOSPlatform("x86_64", deployment_target="10.6").target


def test_macos_build_environment(monkeypatch):
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    assert MacOSPlatform("arm64").build_environment() == {
        "MACOSX_DEPLOYMENT_TARGET": "11.0", "ARCHFLAGS": "-arch arm64", "_PYTHON_HOST_PLATFORM": "macosx-11.0-arm64"}
    assert MacOSPlatform("universal2").build_environment()["ARCHFLAGS"] == "-arch arm64 -arch x86_64"
    assert MacOSPlatform("x86_64").build_environment()["_PYTHON_HOST_PLATFORM"] == "macosx-10.13-x86_64"


def test_macos_supported_tags(monkeypatch):
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    arm = [str(t) for t in MacOSPlatform("arm64").supported_tags((3, 11))]
    assert arm[0] == "cp311-cp311-macosx_11_0_arm64"
    assert {"cp311-abi3-macosx_11_0_arm64", "cp39-abi3-macosx_11_0_arm64", "cp311-cp311-macosx_10_9_universal2",
            "py3-none-macosx_11_0_arm64", "py3-none-any"} <= set(arm)
    assert not [t for t in arm if "x86_64" in t or "macosx_12" in t or t.startswith("cp312")]

    intel = [str(t) for t in MacOSPlatform("x86_64").supported_tags((3, 12))]
    assert intel[0] == "cp312-cp312-macosx_10_13_x86_64"
    assert "cp312-cp312-macosx_10_9_x86_64" in intel and "cp312-cp312-macosx_10_14_x86_64" not in intel
    assert not [t for t in intel if t.endswith("_arm64")]

    universal = {str(t).split("-")[-1] for t in MacOSPlatform("universal2").supported_tags((3, 11))}
    assert universal - {"any"} and all(p == "any" or p.endswith("_universal2") for p in universal)

    monkeypatch.setenv("MACOSX_DEPLOYMENT_TARGET", "14.0")
    assert str(MacOSPlatform("arm64").supported_tags((3, 13))[0]) == "cp313-cp313-macosx_14_0_arm64"


@pytest.mark.parametrize(("arch", "tag"), [("amd64", "win_amd64"), ("arm64", "win_arm64"), ("x86", "win32")])
def test_windows_supported_tags(arch, tag):
    tags = WindowsPlatform(arch).supported_tags((3, 11))
    assert tags[0] == Tag("cp311", "cp311", tag)
    assert Tag("cp38", "abi3", tag) in tags and Tag("py3", "none", "any") in tags
    assert {t.platform for t in tags} == {tag, "any"}


@pytest.mark.parametrize(("arch", "accepted", "rejected"), [
    ("arm64",
     ["cp311-cp311-macosx_11_0_arm64", "cp311-cp311-macosx_10_9_universal2", "py3-none-any",
      "cp311-abi3-macosx_11_0_arm64"],
     ["cp311-cp311-macosx_10_13_x86_64", "cp311-cp311-macosx_12_0_arm64", "cp311-cp311-manylinux_2_28_aarch64",
      "cp311-cp311-win_arm64", "cp311-cp311-macosx_11_0_intel"]),
    ("x86_64",
     ["cp311-cp311-macosx_10_13_x86_64", "cp311-cp311-macosx_10_9_x86_64", "cp311-cp311-macosx_10_9_universal2"],
     ["cp311-cp311-macosx_11_0_arm64", "cp311-cp311-macosx_10_14_x86_64", "cp311-cp311-linux_x86_64",
      "cp311-cp311-win_amd64"]),
    ("universal2",
     ["cp311-cp311-macosx_10_9_universal2", "cp311-cp311-macosx_10_13_universal2"],
     ["cp311-cp311-macosx_10_13_x86_64", "cp311-cp311-macosx_11_0_arm64", "cp311-cp311-macosx_11_0_universal2"]),
])
def test_macos_platform_tag_ok(monkeypatch, arch, accepted, rejected):
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    platform = MacOSPlatform(arch)
    for tag in accepted:
        assert platform.platform_tag_ok([tag]), tag
    for tag in rejected:
        assert not platform.platform_tag_ok([tag]), tag
        assert not platform.platform_tag_ok([accepted[0], tag]), tag  # every tag must be acceptable


def test_windows_platform_tag_ok():
    amd64, arm64, x86 = WindowsPlatform("amd64"), WindowsPlatform("arm64"), WindowsPlatform("x86")
    assert amd64.platform_tag_ok(["cp311-cp311-win_amd64"]) and amd64.platform_tag_ok(["py3-none-any"])
    assert amd64.platform_tag_ok(["cp39-abi3-win_amd64"])
    assert arm64.platform_tag_ok(["cp311-cp311-win_arm64"]) and x86.platform_tag_ok(["cp311-cp311-win32"])
    for tag in ("cp311-cp311-win32", "cp311-cp311-win_arm64", "cp311-cp311-macosx_11_0_x86_64",
                "cp311-cp311-manylinux_2_17_x86_64"):
        assert not amd64.platform_tag_ok([tag]), tag
    assert not x86.platform_tag_ok(["cp311-cp311-win_amd64"])


def test_wheel_file_names_of_each_platform_pass_its_own_check_only(monkeypatch):
    """The Linux round trip: build ids never collide, and each platform's tag check rejects the
    others' wheels (pure wheels pass everywhere)."""
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    wheels = {
        "linux-x86_64": "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "linux-aarch64": "demo-1.0-cp311-cp311-manylinux_2_28_aarch64.whl",
        "musllinux-x86_64": "demo-1.0-cp311-cp311-musllinux_1_2_x86_64.whl",
        "macos-arm64": "demo-1.0-cp311-cp311-macosx_11_0_arm64.whl",
        "macos-x86_64": "demo-1.0-cp311-cp311-macosx_10_13_x86_64.whl",
        "macos-universal2": "demo-1.0-cp311-cp311-macosx_10_9_universal2.whl",
        "windows-amd64": "demo-1.0-cp311-cp311-win_amd64.whl",
        "windows-arm64": "demo-1.0-cp311-cp311-win_arm64.whl",
        "windows-x86": "demo-1.0-cp311-cp311-win32.whl",
    }
    platforms = {name: get_platform(name) for name in wheels}
    assert isinstance(platforms["linux-x86_64"], LinuxPlatform)
    ids = [p.build_identifier(py) for p in platforms.values() for py in PYTHONS]
    assert len(ids) == len(set(ids))
    assert len({p.name for p in platforms.values()}) == len(platforms)
    for name, platform in platforms.items():
        for other, wheel in wheels.items():
            if platform.family == "linux" and other.split("-")[0] == name.split("-")[0]:
                continue  # LinuxPlatform checks the manylinux/musllinux family, not the architecture
            ok = platform.platform_tag_ok(wheel_tags(wheel))
            # a universal2 wheel is also one of the arm64 and x86_64 queues' own
            expected = other == name or (other == "macos-universal2" and name in ("macos-arm64", "macos-x86_64"))
            assert ok == expected, (name, wheel)
        assert platform.platform_tag_ok(wheel_tags("demo-1.0-py3-none-any.whl"))
    # Recipe globs pick the families apart the way cibuildwheel's do.
    assert [n for n, p in platforms.items() if select_matches(["*-macosx_*"], p.build_identifier("cp311"))] == [
        "macos-arm64", "macos-x86_64", "macos-universal2"]
    assert [n for n, p in platforms.items() if select_matches(["*-win*"], p.build_identifier("cp311"))] == [
        "windows-amd64", "windows-arm64", "windows-x86"]
    assert all(select_matches(["cp311-*"], p.build_identifier("cp311")) for p in platforms.values())


# repair command lines and system packages (real) -----------------------------------------------


def test_repair_command_lines(tmp_path):
    wheel, dest = tmp_path / "demo-1.0-cp311-cp311-macosx_11_0_arm64.whl", tmp_path / "out"
    argv = MacOSPlatform("arm64").repair_command(wheel, dest, ["libgfortran", "libquadmath"])
    assert Path(argv[0]).name == "delocate-wheel"
    assert argv[1:] == ["--require-archs", "arm64", "-w", str(dest), "-e", "libgfortran", "-e", "libquadmath",
                        "-v", str(wheel)]
    assert MacOSPlatform("universal2").repair_command(wheel, dest, [])[1:3] == ["--require-archs", "universal2"]

    wheel = tmp_path / "demo-1.0-cp311-cp311-win_amd64.whl"
    argv = WindowsPlatform("amd64").repair_command(wheel, dest, ["cudart64_12.dll", "nvcuda.dll"])
    assert Path(argv[0]).name in ("delvewheel", "delvewheel.exe")
    assert argv[1:] == ["repair", "-w", str(dest), "--exclude", "cudart64_12.dll", "--exclude", "nvcuda.dll",
                        "-v", str(wheel)]
    assert WindowsPlatform("x86").repair_command(wheel, dest, [])[1:] == ["repair", "-w", str(dest), "-v", str(wheel)]


def test_system_package_selection():
    wanted = SystemPackages(apt=["libxml2-dev"], yum=["libxml2-devel"], brew=["libxml2", "pkg-config"],
                            choco=["pkgconfiglite"])
    assert MacOSPlatform("arm64").system_packages(wanted) == ("brew", ["libxml2", "pkg-config"])
    assert WindowsPlatform("amd64").system_packages(wanted) == ("choco", ["pkgconfiglite"])
    assert MacOSPlatform("x86_64").system_packages(SystemPackages(apt=["zlib1g-dev"])) == ("brew", [])
    assert WindowsPlatform("arm64").system_packages(SystemPackages()) == ("choco", [])


@pytest.mark.parametrize("platform", [MacOSPlatform("arm64"), WindowsPlatform("amd64")], ids=["macos", "windows"])
def test_system_packages_without_package_manager(platform, monkeypatch):
    """This Linux host has neither Homebrew nor Chocolatey: nothing asked, nothing needed; something
    asked is the worker's fault (retried elsewhere), not the package's."""
    if shutil.which("brew") or shutil.which("choco") or any(os.access(p, os.X_OK) for p in
                                                            ("/opt/homebrew/bin/brew", "/usr/local/bin/brew")):
        pytest.skip("this host has a package manager of another OS")
    monkeypatch.delenv("ChocolateyInstall", raising=False)
    log = io.StringIO()
    platform.install_system_packages([], mode="install", log=log)
    platform.install_system_packages(["zlib"], mode="ignore", log=log)
    assert log.getvalue() == ""
    with pytest.raises(InfrastructureFault, match=r"prepare: (Homebrew|Chocolatey)"):
        platform.install_system_packages(["zlib"], mode="check", log=log)


def test_choco_list_command_by_version():
    assert choco_list_command("choco", "1.4.0") == ["choco", "list", "--local-only", "--limit-output"]
    assert choco_list_command("choco", "2.2.2\n") == ["choco", "list", "--limit-output"]
    with pytest.raises(InfrastructureFault):
        choco_list_command("choco", "Chocolatey")


@pytest.mark.parametrize("platform", [MacOSPlatform("arm64"), WindowsPlatform("amd64")], ids=["macos", "windows"])
def test_pure_wheels_are_copied_as_they_are(platform, tmp_path):
    wheel = make_wheel(tmp_path / "in", "py3-none-any")
    log = io.StringIO()
    out = platform.repair(wheel, tmp_path / "out", exclude=[], log=log)
    assert out == tmp_path / "out" / wheel.name and out.read_bytes() == wheel.read_bytes()
    assert "pure Python" in log.getvalue() and "$ " not in log.getvalue()  # no tool ran


def test_macos_repair_without_xcode_tools(tmp_path):
    """delocate needs otool/install_name_tool: a host without them is an infrastructure fault."""
    if shutil.which("otool") or shutil.which("install_name_tool"):
        pytest.skip("this host has the Xcode command line tools")
    wheel = make_wheel(tmp_path / "in", "cp311-cp311-macosx_11_0_arm64", files={"demo/_x.so": b"\xcf\xfa\xed\xfe"})
    with pytest.raises(InfrastructureFault, match="xcode-select --install"):
        MacOSPlatform("arm64").repair(wheel, tmp_path / "out", exclude=[], log=io.StringIO())


def test_interpreters_by_path_and_missing_versions(tmp_path):
    """A configured path is probed as it is; a version no known place has is a configuration error."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    for platform in (MacOSPlatform("arm64"), WindowsPlatform("amd64")):
        [interp] = platform.interpreters([sys.executable, sys.executable])
        assert interp.tag == tag and interp.version == sys.version_info[:2]
        with pytest.raises(ConfigError, match="9.99"):
            platform.interpreters(["9.99"])


def test_macos_interpreter_by_version_on_path(bin_on_path):
    """`3.X` finds python3.X on PATH (here this very interpreter under that name)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (bin_on_path / f"python{version}").symlink_to(sys.executable)
    [interp] = MacOSPlatform("x86_64").interpreters([version])
    assert interp.path == bin_on_path / f"python{version}" and interp.dotted == version


def test_windows_interpreter_locations(monkeypatch):
    monkeypatch.setenv("ProgramFiles", r"C:\Program Files")
    monkeypatch.setenv("ProgramFiles(x86)", r"C:\Program Files (x86)")
    monkeypatch.setenv("LOCALAPPDATA", r"C:\Users\build\AppData\Local")
    assert WindowsPlatform("amd64").candidate_paths("3.11") == [
        r"C:\Program Files\Python311\python.exe", r"C:\Users\build\AppData\Local\Programs\Python\Python311\python.exe"]
    assert WindowsPlatform("x86").candidate_paths("3.9")[0] == r"C:\Program Files (x86)\Python39-32\python.exe"
    assert WindowsPlatform("arm64").candidate_paths("3.13")[0] == r"C:\Program Files\Python313-arm64\python.exe"
    assert WindowsPlatform("amd64").candidate_paths("3.13t")[0] == r"C:\Program Files\Python313\python3.13t.exe"
    assert [WindowsPlatform(a).launcher_selector("3.12") for a in ("amd64", "x86", "arm64")] == [
        "-3.12", "-3.12-32", "-V:3.12-arm64"]


# delvewheel on real Windows wheels (real tool, network for the wheel) ---------------------------


@pytest.mark.network
def test_delvewheel_show_on_a_real_windows_wheel():
    needs_delvewheel()
    tool = WindowsPlatform("amd64").repair_command(Path("w"), Path("d"), [])[0]
    result = run([tool, "show", windows_wheel()], timeout=120)
    out = result.output
    assert "The following DLLs will be copied into the wheel.\n    None" in out
    assumed = out.split("will not be copied into the wheel.")[1]
    assert "python311.dll" in assumed and "kernel32.dll" in assumed


@pytest.mark.network
def test_windows_repair_of_a_real_wheel(tmp_path):
    """MarkupSafe needs only system DLLs: delvewheel repairs it into the same wheel name."""
    needs_delvewheel()
    log = io.StringIO()
    dest = tmp_path / "repaired"
    out = WindowsPlatform("amd64").repair(windows_wheel(), dest, exclude=[], log=log)
    assert out == dest / WINDOWS_WHEEL and out.is_file()
    assert [p.name for p in dest.iterdir()] == [WINDOWS_WHEEL]  # the work folder is gone
    assert "delvewheel repair -w" in log.getvalue() and "no external dependencies are needed" in log.getvalue()
    assert set(names(out)) >= {PYD, "markupsafe/__init__.py"}


@pytest.mark.network
def test_windows_repair_vendors_a_dll_found_on_path(tmp_path, monkeypatch):
    """A wheel whose extension needs FARMTEST0001.dll: missing, the repair is the package's failure;
    on PATH, delvewheel copies it into MarkupSafe.libs; excluded, it is left out."""
    needs_delvewheel()
    wheel = patched_windows_wheel(tmp_path / "in")
    platform = WindowsPlatform("amd64")
    with pytest.raises(PackageFailure, match="Unable to find library: farmtest0001.dll"):
        platform.repair(wheel, tmp_path / "failed", exclude=[], log=io.StringIO())

    excluded = platform.repair(wheel, tmp_path / "excluded", exclude=["farmtest0001.dll"], log=io.StringIO())
    assert not [n for n in names(excluded) if n.startswith("MarkupSafe.libs")]

    dlls = tmp_path / "dlls"  # a real x64 DLL under that name: the unpatched extension module
    dlls.mkdir()
    with zipfile.ZipFile(windows_wheel()) as zf:
        (dlls / "farmtest0001.dll").write_bytes(zf.read(PYD))
    monkeypatch.setenv("PATH", f"{dlls}{os.pathsep}{os.environ['PATH']}")
    log = io.StringIO()
    out = platform.repair(wheel, tmp_path / "vendored", exclude=[], log=log)
    vendored = [n for n in names(out) if n.startswith("MarkupSafe.libs/") and not n.endswith("/")]
    assert len(vendored) == 1 and vendored[0].startswith("MarkupSafe.libs/farmtest0001-")
    assert "copying DLLs into MarkupSafe.libs" in log.getvalue()


@pytest.mark.network
def test_windows_repair_rejects_another_architecture(tmp_path):
    """delvewheel does not know the queue: the tag check after it refuses an amd64 wheel on arm64."""
    needs_delvewheel()
    with pytest.raises(PackageFailure, match="no win_arm64 tag"):
        WindowsPlatform("arm64").repair(windows_wheel(), tmp_path / "out", exclude=[], log=io.StringIO())


# what the platform answers for engines, the planner and the index (real) -------------------------


def test_linux_repair_command_line(tmp_path):
    """The one auditwheel command line: the worker's own tool on the host, the image's in cibuildwheel."""
    wheel, dest = tmp_path / "demo-1.0-cp311-cp311-linux_x86_64.whl", tmp_path / "out"
    argv = LinuxPlatform("x86_64").repair_command(wheel, dest, ["libcuda.so.1"])
    assert Path(argv[0]).name == "auditwheel" and Path(argv[0]).is_file()  # installed beside this interpreter
    assert argv[1:] == ["repair", "--exclude", "libcuda.so.1", "-w", str(dest), str(wheel)]
    assert LinuxPlatform("aarch64").repair_command("W", "D", [], program="auditwheel") == \
        ["auditwheel", "repair", "-w", "D", "W"]


def test_package_managers():
    """Each platform names its package manager; a Linux build image's is chosen by its family."""
    linux = LinuxPlatform("x86_64")
    assert linux.package_manager("apt").install_argv("apt-get", ["zlib1g-dev"]) == \
        ["apt-get", "install", "-y", "--no-install-recommends", "zlib1g-dev"]
    assert linux.package_manager("yum").programs == ("dnf", "yum")
    assert linux.package_manager("apk").install_argv("apk", ["zlib-dev"]) == ["apk", "add", "--no-cache", "zlib-dev"]
    assert linux.package_manager().family in ("apt", "yum", "apk")
    with pytest.raises(ConfigError, match="pacman"):
        linux.package_manager("pacman")
    brew = MacOSPlatform("arm64").package_manager()
    assert brew.install_argv("/opt/homebrew/bin/brew", ["libxml2"]) == ["/opt/homebrew/bin/brew", "install", "libxml2"]
    choco = WindowsPlatform("amd64").package_manager()
    assert choco.install_argv("choco", ["pkgconfiglite"]) == ["choco", "install", "-y", "--no-progress", "pkgconfiglite"]
    with pytest.raises(ConfigError, match="fetch brew packages"):
        brew.download_script(["libxml2"], "/d")  # only Linux images get package files ahead of a build
    with pytest.raises(ConfigError, match="not apt"):
        WindowsPlatform("amd64").package_manager("apt")
    from farm.worker.platforms.linux import image_package_family, package_manager_programs

    assert package_manager_programs() == ["apt-get", "dnf", "yum", "apk"]
    assert image_package_family({"uv", "yum"}) == "yum" and image_package_family({"apk"}) == "apk"
    assert image_package_family({"uv"}) == ""


def test_marker_environment_of_each_platform():
    """Known before any build: the target's Python and platform; what neither says is this host's."""
    from packaging.markers import default_environment

    from farm.index.promote import marker_environment as of_job
    from farm.worker.platforms import marker_environment

    host = default_environment()
    env = get_platform("windows-amd64").marker_environment("cp39")
    assert (env["sys_platform"], env["platform_system"], env["os_name"], env["platform_machine"]) == \
        ("win32", "Windows", "nt", "amd64")
    assert (env["python_version"], env["python_full_version"], env["implementation_name"]) == ("3.9", "3.9.0", "cpython")
    assert env["platform_release"] == host["platform_release"]
    env = get_platform("macos-arm64").marker_environment("pp310")
    assert (env["sys_platform"], env["platform_system"], env["platform_machine"]) == ("darwin", "Darwin", "arm64")
    assert (env["implementation_name"], env["platform_python_implementation"]) == ("pypy", "PyPy")
    env = get_platform("musllinux-aarch64").marker_environment("cp313")
    assert (env["sys_platform"], env["os_name"], env["platform_machine"], env["python_version"]) == \
        ("linux", "posix", "aarch64", "3.13")
    # The index asks the same of a job's platform and Python; a name that is no platform's keeps the host's.
    job = type("Job", (), {"platform": "windows-arm64", "python": "cp312"})()
    assert of_job(job) == get_platform("windows-arm64").marker_environment("cp312")
    odd = marker_environment("plan9-x86_64", "cp311")
    assert odd["sys_platform"] == host["sys_platform"] and odd["python_version"] == "3.11"
    assert of_job(None) == host


def test_marker_environment_matches_real_interpreters():
    """The prediction for this Linux host, against what each CPython found here reports itself."""
    from farm.worker.platforms import host_platform_name
    from farm.worker.verify import marker_environment as probed

    platform = get_platform(host_platform_name())
    # This interpreter, and pyenv's CPython 3 builds where the machine has them (their PATH shims need a
    # selected version, so their folders are used).
    paths = [sys.executable, *map(str, sorted(Path.home().glob(".pyenv/versions/3.*/bin/python3")))]
    interpreters = [i for path in paths for i in _found(platform, path)]
    assert interpreters, "no CPython found on this host"
    for interp in interpreters:
        real = probed(str(interp.path))
        predicted = platform.marker_environment(interp.tag)
        keys = ("python_version", "sys_platform", "platform_system", "os_name", "platform_machine",
                "implementation_name", "platform_python_implementation")
        assert {k: predicted[k] for k in keys} == {k: real[k] for k in keys}, interp


def _found(platform, path):  # type: ignore[no-untyped-def]
    try:
        return platform.interpreters([path])
    except ConfigError:
        return []


def test_offered_pythons(tmp_path):
    """What a worker of a platform builds for: its images' Pythons (cibuildwheel on Linux), else its interpreters'."""
    from farm.config import ImageConfig, Settings

    images = {"linux-x86_64": [ImageConfig(image="a", pythons=["cp311", "cp312"]),
                               ImageConfig(image="b", pythons=["cp39", "cp312"])]}
    containers = Settings(home=tmp_path, engine="cibuildwheel", images=images)
    assert [(o.python, o.image) for o in get_platform("linux-x86_64").offered_pythons(containers)] == \
        [("cp311", "a"), ("cp312", "a"), ("cp39", "b")]
    assert get_platform("linux-aarch64").offered_pythons(containers) == []
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    native = Settings(home=tmp_path, engine="native", pythons=[sys.executable])
    for name in ("linux-x86_64", "macos-arm64", "windows-amd64"):
        assert [(o.python, o.image) for o in get_platform(name).offered_pythons(native)] == [(tag, None)]
    # macOS and Windows builds run on the host, whatever the engine
    assert [o.python for o in get_platform("macos-arm64").offered_pythons(
        Settings(home=tmp_path, engine="cibuildwheel", pythons=[sys.executable]))] == [tag]


def test_default_images_come_from_the_platforms(tmp_path):
    from farm.config import Settings

    images = Settings(home=tmp_path).images
    assert {name: [(i.image, tuple(i.pythons)) for i in imgs] for name, imgs in images.items()} == {
        "linux-x86_64": [("quay.io/pypa/manylinux_2_28_x86_64", PYTHONS)],
        "linux-aarch64": [("quay.io/pypa/manylinux_2_28_aarch64", PYTHONS)],
        "musllinux-x86_64": [("quay.io/pypa/musllinux_1_2_x86_64", PYTHONS)],
    }
    assert get_platform("macos-arm64").default_images() == get_platform("windows-amd64").default_images() == []
    assert get_platform("musllinux-aarch64").default_images() == []


def test_cibuildwheel_engine_needs_a_linux_platform():
    from farm.worker.platforms.linux import container_platform

    linux = LinuxPlatform("aarch64", musl=True)
    assert container_platform(linux) is linux
    assert linux.cibuildwheel_options("img") == ("linux", {"CIBW_ARCHS": "aarch64", "CIBW_MUSLLINUX_AARCH64_IMAGE": "img"})
    assert linux.image_python("cp313") == "/opt/python/cp313-cp313/bin/python"
    assert linux.image_python("cp314t") == "/opt/python/cp314-cp314t/bin/python"  # manylinux's folder
    with pytest.raises(ConfigError, match="not for macos-arm64"):
        container_platform(MacOSPlatform("arm64"))


# fakes of the OS tools (macOS and Windows cannot run here) -------------------------------------

@pytest.fixture
def fake_xcode(bin_on_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for tool in ("otool", "install_name_tool"):
        fake_tool(bin_on_path, tool, "")
    script = fake_tool(bin_on_path, "delocate-wheel", FAKE_DELOCATE)
    monkeypatch.setattr("farm.worker.platforms.macos.tool", lambda name: str(bin_on_path / name))
    monkeypatch.delenv("MACOSX_DEPLOYMENT_TARGET", raising=False)
    return script


@pytest.mark.fake_os
def test_macos_repair_runs_delocate(fake_xcode, bin_on_path, tmp_path):
    """Fake: delocate-wheel, otool and install_name_tool are scripts, because delocate cannot run
    without macOS.
    Checks what the farm does around it: the exact command, the deployment target it is given, the
    one wheel it takes back."""
    wheel = make_wheel(tmp_path / "in", "cp311-cp311-macosx_11_0_arm64", files={"demo/_x.so": b"\xcf\xfa\xed\xfe"})
    log = io.StringIO()
    out = MacOSPlatform("arm64").repair(wheel, tmp_path / "out", exclude=["libgfortran"], log=log)
    assert out == tmp_path / "out" / wheel.name and out.is_file()
    [argv] = calls(bin_on_path, "delocate-wheel")
    work = argv[argv.index("-w") + 1]
    assert argv == ["--require-archs", "arm64", "-w", work, "-e", "libgfortran", "-v", str(wheel)]
    assert Path(work).parent == tmp_path / "out" and not Path(work).exists()
    assert call_env(bin_on_path, "delocate-wheel")["MACOSX_DEPLOYMENT_TARGET"] == "11.0"
    assert f"delocate-wheel --require-archs arm64 -w {work}" in log.getvalue()


@pytest.mark.fake_os
def test_macos_repair_failures(fake_xcode, tmp_path, monkeypatch):
    """Fake: delocate-wheel and the Xcode tools are scripts, because delocate cannot run without
    macOS. A failing delocate, and a wheel for the wrong architecture or a newer macOS than the
    target, are the package's failures."""
    wheel = make_wheel(tmp_path / "in", "cp311-cp311-macosx_11_0_arm64", files={"demo/_x.so": b"\xcf\xfa\xed\xfe"})
    platform = MacOSPlatform("arm64")
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(PackageFailure, match="do not satisfy target MacOS version"):
        platform.repair(wheel, tmp_path / "a", exclude=[], log=io.StringIO())
    monkeypatch.delenv("FAKE_FAIL")
    for tag in ("macosx_11_0_x86_64", "macosx_14_0_arm64"):
        monkeypatch.setenv("FAKE_TAG", tag)
        with pytest.raises(PackageFailure, match="no macos-arm64 platform tag for macOS 11.0"):
            platform.repair(wheel, tmp_path / tag, exclude=[], log=io.StringIO())
    monkeypatch.setenv("FAKE_TAG", "macosx_10_9_universal2")
    assert platform.repair(wheel, tmp_path / "u", exclude=[], log=io.StringIO()).name.endswith("universal2.whl")


FAKE_BREW = """
    installed = {"pkg-config": "pkg-config 0.29.2_3", "zlib": "zlib 1.3.1"}
    if args[:2] == ["list", "--versions"]:
        if args[2] in installed:
            print(installed[args[2]])
            sys.exit(0)
        sys.exit(1)
    if args[0] == "install":
        sys.exit(1 if "no-such-formula" in args else 0)
    sys.exit(2)
    """


@pytest.mark.fake_os
def test_brew_system_packages(bin_on_path):
    """Fake `brew` (a script), because Homebrew runs on macOS only: the farm asks
    `brew list --versions` per formula, installs only the missing ones, and never installs in
    check mode."""
    fake_tool(bin_on_path, "brew", FAKE_BREW)
    platform = MacOSPlatform("arm64")
    log = io.StringIO()
    platform.install_system_packages(["pkg-config", "zlib"], mode="check", log=log)
    assert "system packages present: pkg-config zlib" in log.getvalue()
    assert calls(bin_on_path, "brew") == [["list", "--versions", "pkg-config"], ["list", "--versions", "zlib"]]

    with pytest.raises(PackageFailure, match="missing on this worker: libxml2"):
        platform.install_system_packages(["zlib", "libxml2"], mode="check", log=io.StringIO())
    assert not [c for c in calls(bin_on_path, "brew") if c[0] == "install"]

    log = io.StringIO()
    platform.install_system_packages(["zlib", "libxml2", "openssl@3"], mode="install", log=log)
    assert calls(bin_on_path, "brew")[-1] == ["install", "libxml2", "openssl@3"]
    assert call_env(bin_on_path, "brew")["HOMEBREW_NO_AUTO_UPDATE"] == "1"
    assert "brew install libxml2 openssl@3" in log.getvalue()

    with pytest.raises(PackageFailure, match="could not install Homebrew formulae"):
        platform.install_system_packages(["no-such-formula"], mode="install", log=io.StringIO())


FAKE_CHOCO = """
    version = os.environ.get("FAKE_CHOCO_VERSION", "2.2.2")
    if args == ["--version"]:
        print(version)
        sys.exit(0)
    if args[0] == "list":
        if "--local-only" in args and not version.startswith("1."):
            print("Invalid argument --local-only. This argument has been removed from the list command.")
            sys.exit(1)
        print("chocolatey|" + version + "\\nNASM|2.16.1\\npkgconfiglite|0.28")
        sys.exit(0)
    if args[:3] == ["install", "-y", "--no-progress"]:
        sys.exit(int(os.environ.get("FAKE_CHOCO_EXIT", "0")))
    sys.exit(2)
    """


@pytest.mark.fake_os
@pytest.mark.parametrize(("version", "listing"), [("2.2.2", ["list", "--limit-output"]),
                                                  ("1.4.0", ["list", "--local-only", "--limit-output"])])
def test_choco_system_packages(bin_on_path, monkeypatch, version, listing):
    """Fake `choco` (a script), because Chocolatey runs on Windows only: the listing flags follow
    the Chocolatey version, names compare case-insensitively, only missing packages are installed,
    and a failed install is the package's failure."""
    fake_tool(bin_on_path, "choco", FAKE_CHOCO)
    monkeypatch.setenv("FAKE_CHOCO_VERSION", version)
    platform = WindowsPlatform("amd64")
    log = io.StringIO()
    platform.install_system_packages(["nasm", "pkgconfiglite"], mode="check", log=log)
    assert "system packages present" in log.getvalue()
    assert calls(bin_on_path, "choco") == [["--version"], listing]

    with pytest.raises(PackageFailure, match="missing on this worker: strawberryperl"):
        platform.install_system_packages(["nasm", "strawberryperl"], mode="check", log=io.StringIO())

    platform.install_system_packages(["nasm", "strawberryperl", "ninja"], mode="install", log=io.StringIO())
    assert calls(bin_on_path, "choco")[-1] == ["install", "-y", "--no-progress", "strawberryperl", "ninja"]

    monkeypatch.setenv("FAKE_CHOCO_EXIT", "1")
    with pytest.raises(PackageFailure, match="choco exited with 1"):
        platform.install_system_packages(["ninja"], mode="install", log=io.StringIO())


FAKE_PY = """
    # py -3.11 -c CODE: answer with the path in FAKE_PY_EXE when the selector is the expected one
    if args[0] == os.environ["FAKE_PY_SELECTOR"]:
        print(os.environ["FAKE_PY_EXE"])
        sys.exit(0)
    print("No suitable Python runtime found")
    sys.exit(103)
    """


@pytest.mark.fake_os
def test_windows_interpreters_through_the_py_launcher(bin_on_path, monkeypatch):
    """Fake `py` launcher (a script), because it exists on Windows only: a version is resolved to
    the path the launcher prints for this architecture's selector, then probed for real."""
    fake_tool(bin_on_path, "py", FAKE_PY)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    monkeypatch.setenv("FAKE_PY_EXE", sys.executable)
    monkeypatch.setenv("FAKE_PY_SELECTOR", f"-V:{version}-arm64")
    [interp] = WindowsPlatform("arm64").interpreters([version])
    assert interp.path == Path(sys.executable) and interp.dotted == version
    assert calls(bin_on_path, "py") == [[f"-V:{version}-arm64", "-c", "import sys; print(sys.executable)"]]
    with pytest.raises(ConfigError, match=r"no windows-x86 interpreter for '3.99' \(tried py -3.99-32, python3.99, "):
        WindowsPlatform("x86").interpreters(["3.99"])


def test_verify_venv_interpreter_per_os(tmp_path):
    """The host verification venv's interpreter: Scripts\\python.exe on Windows, bin/python elsewhere."""
    from farm.worker.verify import venv_python

    assert venv_python(tmp_path, windows=True) == tmp_path / "Scripts" / "python.exe"
    assert venv_python(tmp_path, windows=False) == tmp_path / "bin" / "python"


def test_command_timeout_ends_the_whole_process_group(tmp_path):
    """A command that outlives its timeout is ended with what it started (here a grandchild sleep)."""
    import time

    from farm.util.cmd import CommandFailed, run

    pid_file = tmp_path / "grandchild.pid"
    start = time.monotonic()
    with pytest.raises(CommandFailed) as exc:
        run([f"sleep 60 & echo $! > {pid_file}; wait"], shell=True, timeout=1)
    assert exc.value.timed_out and time.monotonic() - start < 20
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_free_threaded_target_takes_its_own_abi_and_never_abi3():
    """cp314t: python_version 3.14 for markers; wheels tagged cp314-cp314t or pure, not cp314-cp314 and
    not abi3 (PEP 703); the GIL build's tags are unchanged."""
    linux = LinuxPlatform("x86_64")
    assert linux.marker_environment("cp314t")["python_version"] == "3.14"
    assert linux.marker_environment("cp314t")["implementation_name"] == "cpython"
    threaded = {str(t) for t in linux.supported_tags((3, 14), threaded=True)}
    gil = {str(t) for t in linux.supported_tags((3, 14))}
    assert "cp314-cp314t-manylinux_2_17_x86_64" in threaded and "py3-none-any" in threaded
    assert not any("-abi3-" in t or t.startswith("cp314-cp314-") for t in threaded)
    assert "cp39-abi3-manylinux_2_17_x86_64" in gil and "cp314-cp314-manylinux_2_17_x86_64" in gil
    assert not any("cp314t" in t for t in gil)
    assert linux.build_identifier("cp314t") == "cp314t-manylinux_x86_64"
