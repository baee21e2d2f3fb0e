"""linux-aarch64 on this x86_64 host, under QEMU user emulation (farm/util/emulation.py, farm/images/arch.py).

Real parts: the kernel's binfmt_misc registration of Debian's qemu-aarch64-static
(scripts/install-qemu.sh), arm64 bullseye images made by `farm image build --arch arm64`'s functions
(`debootstrap --foreign`, the second stage in a chroot under the emulator; cached in
~/.cache/wheel-farm like the x86_64 ones), the private Docker engine, `farm up` with one worker for
linux-aarch64, a real C-extension sdist, cibuildwheel, auditwheel and pip inside the arm64 containers. One
emulated root file system (the build one) serves both images: the verification image is it with the
compiler and -dev packages purged.

Bad inputs covered: binfmt_misc not mounted, no emulator registered, a disabled one, one without the
F (fix-binary) flag; an unknown architecture name; an x86_64 wheel offered as linux-aarch64; compiled
CPythons asked for an arm64 image.
"""

from __future__ import annotations

import json
import struct
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import ConfigError, InfrastructureFault
from farm.util import emulation as arches
from farm.images.debootstrap import ImageResult, build_image, build_verify_image, default_tag
from farm.worker.platforms import get_platform
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import CACHE, SUITE, _Log, client, container_env, docker_host, image_builder_or_skip, run_in  # noqa: F401
from tests.helpers.sdists import make_project, make_sdist

X86_64_HOST = arches.host_machine() == "x86_64"


# The kernel's registration, as /proc/sys/fs/binfmt_misc shows it ---------------------------------

_REGISTERED = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\n"
               "magic 7f454c460201010000000000000000000200b700\n")


def _binfmt(tmp_path: Path, *, mounted: bool = True, entry: str | None = None) -> Path:
    folder = tmp_path / "binfmt_misc"
    folder.mkdir()
    if mounted:
        (folder / "register").write_text("")
    if entry is not None:
        (folder / "qemu-aarch64").write_text(entry)
    return folder


def test_registered_emulator_is_read(tmp_path: Path) -> None:
    got = arches.emulator(arches.arch("arm64"), _binfmt(tmp_path, entry=_REGISTERED.format(flags="PF")))
    assert got == {"interpreter": "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "flags": "PF"}


@pytest.mark.parametrize(("mounted", "entry", "says"), [
    (False, None, "binfmt_misc is not mounted"),
    (True, None, "no qemu-aarch64 emulator is registered"),
    (True, _REGISTERED.format(flags="PF").replace("enabled", "disabled"), "update-binfmts --enable qemu-aarch64"),
    (True, _REGISTERED.format(flags="P"), "F (fix-binary) flag"),
])
def test_missing_or_unusable_emulator_says_how_to_fix_it(tmp_path: Path, mounted: bool, entry: str | None,
                                                         says: str) -> None:
    with pytest.raises(InfrastructureFault, match=r"(?s)" + says.replace("(", r"\(").replace(")", r"\)")):
        arches.emulator(arches.arch("aarch64"), _binfmt(tmp_path, mounted=mounted, entry=entry))


def test_architecture_names() -> None:
    assert arches.arch("arm64") == arches.arch("aarch64")
    assert arches.arch("arm64").docker == "linux/arm64" and arches.arch("arm64").elf_machine == 183
    with pytest.raises(ConfigError, match="unknown architecture 'sparc'"):
        arches.arch("sparc")


@pytest.mark.skipif(not X86_64_HOST, reason="the tags and names of another architecture, seen from x86_64")
def test_aarch64_platform_on_x86_64_is_emulated(tmp_path: Path) -> None:
    aarch64, native = get_platform("linux-aarch64"), get_platform("linux-x86_64")
    assert aarch64.emulated and not native.emulated  # type: ignore[attr-defined]
    assert native.emulation() is None  # type: ignore[attr-defined]
    tags = {str(t) for t in aarch64.supported_tags((3, 9))}
    assert "cp39-cp39-manylinux_2_17_aarch64" in tags and not any(t.endswith("x86_64") for t in tags)
    assert not aarch64.platform_tag_ok(["cp39-cp39-manylinux_2_17_x86_64"])
    assert aarch64.platform_tag_ok(["cp39-cp39-manylinux_2_31_aarch64"])
    # The host's Pythons cannot import aarch64 wheels: verified in an image only, never on the host.
    from farm.config import ImageConfig, Settings
    from farm.worker.verify import Target

    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    settings = Settings(home=tmp_path / "home", pythons=[sys.executable])
    assert Target.for_job(here, native, settings).interp is not None
    with pytest.raises(InfrastructureFault, match="no verify image for linux-aarch64"):
        Target.for_job(here, aarch64, settings)
    settings = Settings(home=tmp_path / "home", pythons=[sys.executable],
                        verify_images={"linux-aarch64": [ImageConfig(image="arm64-verify", pythons=[here])]})
    target = Target.for_job(here, aarch64, settings)
    assert target.interp is None and target.image == "arm64-verify" and target.env["platform_machine"] == "aarch64"
    assert default_tag("bullseye", "build", "arm64") == "wheel-farm/debian-bullseye-arm64:latest"
    assert default_tag("bullseye", "verify", "arm64") == "wheel-farm/debian-bullseye-arm64-verify:latest"
    assert default_tag("bullseye", "build", "amd64") == "wheel-farm/debian-bullseye:latest"


# Under QEMU, for real ----------------------------------------------------------------------------


def _emulator_or_skip() -> None:
    if not X86_64_HOST:
        pytest.skip("emulates aarch64 on an x86_64 host")
    try:
        arches.emulator(arches.arch("arm64"))
    except InfrastructureFault as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def arm64_build(docker_host: str) -> ImageResult:  # noqa: F811
    image_builder_or_skip()
    _emulator_or_skip()
    from farm.images import default_ca_bundle

    return build_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                       docker_host=docker_host, arch="arm64")


@pytest.fixture(scope="module")
def arm64_verify(docker_host: str) -> ImageResult:  # noqa: F811
    image_builder_or_skip()
    _emulator_or_skip()
    from farm.images import default_ca_bundle

    return build_verify_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                              docker_host=docker_host, arch="arm64")


@pytest.mark.slow
@pytest.mark.docker
def test_arm64_images_run_under_the_emulator(arm64_build: ImageResult, arm64_verify: ImageResult, client) -> None:  # noqa: F811
    for result in (arm64_build, arm64_verify):
        image = client.images.get(result.tag)
        assert image.attrs["Architecture"] == "arm64", result.tag
        assert image.attrs["Config"]["Labels"]["farm.arch"] == "aarch64"
        code, out = run_in(client, result.tag, "uname -m; python3 -c 'import platform; print(platform.machine())'")
        assert code == 0 and out.split() == ["aarch64", "aarch64"], out
    assert arm64_build.pythons == ["cp39"]
    # One emulated second stage serves both: the verification image is the build root file system with
    # the compiler and the -dev packages purged (apt's history says so), and python3 -m venv still works.
    code, out = run_in(client, arm64_build.tag, "command -v gcc g++ && dpkg -s python3-dev > /dev/null && echo ok")
    assert code == 0 and out.split()[-1] == "ok", out
    code, out = run_in(client, arm64_verify.tag, "grep '^Purge:' /var/log/apt/history.log; "
                       "for p in gcc g++ cc make; do command -v $p && exit 1; done; "
                       "dpkg -s python3-dev libc6-dev > /dev/null 2>&1 && exit 2; "
                       "python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import ssl, ctypes; print(\"venv-ok\")'")
    assert code == 0 and "gcc-10:arm64" in out and "python3-dev:arm64" in out and "venv-ok" in out, out
    assert list(CACHE.joinpath("rootfs").glob(f"{SUITE}-arm64-*.tar")), "the arm64 root file systems are cached"


@pytest.fixture(scope="module")
def aarch64_farm(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
                 arm64_build: ImageResult, arm64_verify: ImageResult) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("aarch64") / "home", free_port())
    f.env.update({
        **container_env(docker_host, arm64_build, arm64_verify, platform="linux-aarch64"),
        "FARM_PLATFORM": "linux-aarch64",  # the one local worker serves linux-aarch64
        "FARM_PLATFORMS": json.dumps(["linux-aarch64"]),
    })
    f.start()
    yield f
    f.stop()


def _elf_machines(wheel: Path) -> set[int]:
    """e_machine of every shared object in the wheel."""
    machines = set()
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if ".so" in name.rsplit("/", 1)[-1]:
                head = zf.read(name)[:20]
                assert head[:4] == b"\x7fELF", name
                machines.add(struct.unpack("<H", head[18:20])[0])
    return machines


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.network
def test_c_extension_built_and_verified_for_aarch64_under_qemu(aarch64_farm: Farm, arm64_verify: ImageResult,  # noqa: PLR0915
                                                               client, tmp_path: Path) -> None:  # noqa: F811
    sdist = make_sdist(make_project(tmp_path / "src", "armadd", body="return a + b"), tmp_path / "dist")
    res = aarch64_farm.farm("submit", "--wait", "--timeout", "1500", str(sdist), timeout=1600)
    assert res.returncode == 0, res.stdout + res.stderr

    wheel = next((aarch64_farm.home / "index/files/armadd").glob("*.whl"))
    assert wheel.name.startswith("armadd-0.1.0-cp39-cp39-manylinux") and wheel.name.endswith("_aarch64.whl"), wheel.name
    assert _elf_machines(wheel) == {arches.ELF_MACHINES["aarch64"]}

    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    emulation = statement["predicate"]["buildDefinition"]["internalParameters"]["isolation"]["emulation"]
    assert emulation["host"] == "x86_64" and emulation["target"] == "aarch64"
    assert emulation["emulator"] == "qemu-aarch64" and emulation["qemu"] != "unknown"
    assert statement["predicate"]["runDetails"]["builder"]["version"]["qemu"] == emulation["qemu"]
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["environment"].endswith("emulated=qemu-aarch64")
    logs = "".join(p.read_text() for p in aarch64_farm.home.rglob("attempt-*.log"))
    assert "building for aarch64 under emulation" in logs and "verifying for aarch64 under emulation" in logs

    # A fresh environment in the arm64 image installs it from the farm's index and runs it, emulated.
    code, out = run_in(client, arm64_verify.tag, network="host", script=(
        "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --no-cache-dir --index-url "
        f"{aarch64_farm.index_url} armadd && cd /tmp && /tmp/v/bin/python -c "
        "'import platform, armadd; print(platform.machine(), armadd.add(40, 2))'"))
    assert code == 0 and out.split()[-2:] == ["aarch64", "42"], out


@pytest.mark.skipif(not X86_64_HOST, reason="arm64 is another architecture on x86_64 only")
def test_cli_compiles_no_cpython_for_another_architecture_by_default(tmp_path: Path) -> None:
    """`farm image build --arch arm64` takes the suite's python3 only (compiling under emulation is not
    done); naming a CPython source for it is refused before anything is built."""
    import argparse

    from farm.errors import FarmError
    from farm.images import add_arguments, image_build, python_sources

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert python_sources(parser.parse_args(["--suite", "bullseye", "--arch", "arm64"])) == []
    assert python_sources(parser.parse_args(["--suite", "bullseye"]))  # the host's architecture: compiled ones
    sources = python_sources(parser.parse_args(["--suite", "bullseye", "--arch", "arm64",
                                                "--debian-pythons", "python3.13/trixie"]))
    with pytest.raises(FarmError, match="not compiled into arm64 images"):
        image_build(suite="bullseye", arch="arm64", python_sources=sources, docker_host="unix:///nonexistent",
                    index_url="https://pypi.org/simple", cache_dir=tmp_path)
