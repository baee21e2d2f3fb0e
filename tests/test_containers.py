"""Linux container builds: the cibuildwheel engine, verification in a clean container, the container helper.

The Docker tests build the real pyyaml 6.0.2 sdist with cibuildwheel in the bullseye build image
without network (its build requirements from a wheelhouse the farm downloads, libyaml-dev from
package files the farm downloads and before-all installs), check that libyaml was grafted, verify
the wheel in the clean bullseye image without network, and show that an unrepaired wheel fails
there. Small generated sdists show that a build cannot reach the host's loopback, that a
backend's dynamic requirement is found and built offline, that a build requirement without a
wheel fails with that reason, and that one asked for only inside the build cannot be fetched there.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import time
import uuid
import zipfile
from pathlib import Path

import docker
import pytest

from farm.config import ImageConfig, Settings
from farm.messages import JobSpec, SdistRef
from farm.recipes.schema import Options
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.engines.cibuildwheel import (
    CibuildwheelEngine, before_all_script, choose_image, cibw_environment, config_settings, engine_config, repair_command, system_packages_command)
from farm.worker.platforms import get_platform
from farm.worker.platforms.linux import LinuxPlatform
from farm.worker.verify_container import ContainerVerifyResult, verify_in_container
from tests.helpers.images import build_image_result, client, docker_host, verify_image_result  # noqa: F401
from tests.helpers.sdists import cached_sdist


PYYAML = "pyyaml==6.0.2"
LIBYAML_CHECK = '{python} -c "import yaml; assert yaml.__with_libyaml__, yaml.__file__; print(yaml.dump({1: 2}))"'


def make_ctx(tmp: Path, *, sdist: Path, options: Options | None = None, images: dict | None = None,
             docker_host: str = "", platform: str = "linux-x86_64", python: str = "cp39",
             log: io.TextIOBase | None = None) -> BuildContext:
    plat = get_platform(platform)
    source_root = tmp / "src"
    source_root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(source_root, filter="data")
    source = next(p for p in source_root.iterdir() if p.is_dir())
    spec = JobSpec(job_id=7, attempt=1, name="pyyaml", version="6.0.2",
                   sdist=SdistRef(filename=sdist.name, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(), size=sdist.stat().st_size, storage_key="s"),
                   platform=plat.name, python=python, build_id=plat.build_identifier(python), engine="cibuildwheel",
                   recipe_name="pyyaml", recipe_digest="d", options={}, upstream_index="https://pypi.org/simple/")
    settings = Settings(home=tmp / "home", docker_host=docker_host, build_memory="2g", build_pids=2048,
                        images=images or {"linux-x86_64": [ImageConfig(image="wheel-farm/debian-bullseye:latest",
                                                                       pythons=["cp39"])]})
    work = tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    from farm.util.archive import Limits as ArchiveLimits
    from farm.worker.sandbox import job_limits
    from farm.worker.source import SdistSource

    options = options or Options()
    return BuildContext(spec=spec, options=options, platform=plat, settings=settings,
                        src=SdistSource.unpacked(sdist, source, ArchiveLimits.from_settings(settings)), work=work,
                        log=log or io.StringIO(),
                        sandbox=plat.sandbox(settings), limits=job_limits(settings, options))


@pytest.fixture(scope="module")
def pyyaml_sdist() -> Path:
    return cached_sdist(PYYAML)


# Without Docker: how recipe options become cibuildwheel's configuration ---------------------------
def test_options_become_cibuildwheel_variables(tmp_path: Path, pyyaml_sdist: Path) -> None:
    from cibuildwheel.environment import parse_environment

    options = Options(
        environment={"CFLAGS": "-O2 $CFLAGS", "QUOTED": 'say "hi" `no` \\ end', "PLAIN": "a b"},
        before_all=["echo {python} {project}"], before_build=["{python} -m pip --version"],
        config_settings={"--build-option": ["--a", "--b c"], "setup-args": "-Dx=1"},
        system_packages={"apt": ["libyaml-dev"], "yum": ["libyaml-devel"]},
        repair_exclude=["libfoo.so.1"])
    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist, options=options, docker_host="unix:///x/docker.sock")
    env = cibw_environment(ctx, image="img:1", family="apt", has_uv=True, job_label="j1", docker_host="unix:///x/docker.sock")
    assert env["CIBW_BUILD"] == "cp39-manylinux_x86_64" and env["CIBW_ARCHS"] == "x86_64"
    assert env["CIBW_MANYLINUX_X86_64_IMAGE"] == "img:1"
    assert env["CIBW_BUILD_FRONTEND"] == "build[uv]" and env["CIBW_TEST_SKIP"] == "*"
    assert env["DOCKER_HOST"] == "unix:///x/docker.sock"
    assert env["PIP_CONFIG_FILE"] == "/dev/null" and "PIP_FIND_LINKS" not in env
    # Everything cibuildwheel writes on the host stays in the job's folder.
    for var in ("TMPDIR", "CIBW_CACHE_PATH", "DOCKER_CONFIG"):
        assert Path(env[var]).is_relative_to(ctx.work)
    # System packages and before-all run as root in the root phase, not in cibuildwheel's container.
    assert "CIBW_BEFORE_ALL" not in env
    assert before_all_script(ctx, "apt") == ('set -e\nset -- /farm/system-packages/*.deb; if [ -e "$1" ]; then '
                                             'apt-get install -y --no-install-recommends "$@"; fi\n'
                                             'echo python /farm/project')
    assert env["CIBW_BEFORE_BUILD"] == "python -m pip --version"
    assert env["CIBW_REPAIR_WHEEL_COMMAND"].startswith(
        "out=$(auditwheel repair --exclude libfoo.so.1 -w {dest_dir} {wheel} 2>&1)")
    assert env["CIBW_CONFIG_SETTINGS"] == "--build-option=--a '--build-option=--b c' setup-args=-Dx=1"
    # cibuildwheel's own parser reads back exactly the values (recipe values expand $VARS in the container).
    parsed = parse_environment(env["CIBW_ENVIRONMENT"]).as_dictionary({"CFLAGS": "-g"})
    assert parsed["CFLAGS"] == "-O2 -g"
    assert parsed["QUOTED"] == 'say "hi" `no` \\ end' and parsed["PLAIN"] == "a b"
    # The front end installs from the mounted wheelhouse only: no index for pip, no network for uv.
    assert parsed["PIP_NO_INDEX"] == "1" and parsed["PIP_FIND_LINKS"] == "/farm/build-wheels"
    assert parsed["UV_OFFLINE"] == "1" and parsed["UV_FIND_LINKS"] == "/farm/build-wheels"
    assert not {"PIP_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX_URL"} & set(parsed)
    assert parsed["PIP_CERT"] == parsed["SSL_CERT_FILE"] == "/farm/ca-bundle.crt"


def test_container_engine_never_mounts_the_host(tmp_path: Path, pyyaml_sdist: Path) -> None:
    from cibuildwheel.oci_container import OCIContainerEngineConfig

    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist)
    config = OCIContainerEngineConfig.from_config_string(engine_config(ctx, ca=tmp_path / "ca.crt", job_label="j"))
    assert config.name == "docker" and config.disable_host_mount
    args = config.create_args
    assert "--network=none" in args and "--memory=2g" in args and "--pids-limit=2048" in args
    assert not any(a.startswith("--network=") and a != "--network=none" for a in args)
    assert f"--volume={tmp_path / 'ca.crt'}:/farm/ca-bundle.crt:ro" in args
    assert f"--volume={ctx.work / 'build-wheels'}:/farm/build-wheels:ro" in args
    assert not any("system-packages" in a for a in args)  # installed in the root phase
    assert "--label=farm.cibuildwheel-job=j" in args
    # Package code runs as the sandbox's unprivileged uid with no capability at all.
    assert "--user=65534:65534" in args and "--cap-drop=ALL" in args
    assert "--security-opt=no-new-privileges" in args
    assert not any(a.startswith("--cap-add") or a.startswith("--privileged") for a in args)
    # A recipe that grants network gets the host's (recorded in the provenance), as with the native engine.
    granted = make_ctx(tmp_path / "granted", sdist=pyyaml_sdist, options=Options(network=True))
    args = OCIContainerEngineConfig.from_config_string(engine_config(granted, ca=tmp_path / "ca.crt", job_label="j")).create_args
    assert "--network=host" in args and "--network=none" not in args


def test_system_packages_per_family() -> None:
    """Downloaded (with the host's network, the package manager only) and installed offline from the mount."""
    linux = LinuxPlatform("x86_64")
    apt, yum, apk = (linux.package_manager(f) for f in ("apt", "yum", "apk"))
    assert system_packages_command(apt, []) is None
    assert system_packages_command(apk, ["yaml-dev"]) == \
        'set -- /farm/system-packages/*.apk; if [ -e "$1" ]; then apk add --no-network "$@"; fi'
    assert "rpm -Uvh --replacepkgs" in system_packages_command(yum, ["libyaml-devel"])  # type: ignore[operator]
    assert "apt-get install -y -qq --download-only --no-install-recommends -o Dir::Cache::Archives=/d libyaml-dev" \
        in apt.download_script(["libyaml-dev"], "/d")
    assert "dnf install -y --downloadonly --downloaddir=/d libyaml-devel" in yum.download_script(["libyaml-devel"], "/d")
    assert apk.download_script(["yaml-dev"], "/d").endswith("apk fetch --recursive --output /d yaml-dev")
    # Names and folders are quoted for the shell.
    assert apk.download_script(["a b", "c;d"], "/x y").endswith("apk fetch --recursive --output '/x y' 'a b' 'c;d'")
    assert config_settings({"k": "v w"}) == "'k=v w'"


def test_repair_command_is_the_platforms(tmp_path: Path, pyyaml_sdist: Path) -> None:
    """cibuildwheel runs the image's auditwheel with the command line the Linux platform gives."""
    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist)
    assert repair_command(ctx).startswith("out=$(auditwheel repair -w {dest_dir} {wheel} 2>&1)")
    assert ctx.platform.repair_command("{wheel}", "{dest_dir}", [], program="auditwheel") == \
        ["auditwheel", "repair", "-w", "{dest_dir}", "{wheel}"]


def test_wheelhouse_target_tags() -> None:
    """The wheels downloaded for the build must install in the image: its Python and C library decide."""
    from farm.worker.platforms.linux import parse_libc
    from farm.worker.wheelhouse import target

    x86_64, aarch64, ppc64le = LinuxPlatform("x86_64"), LinuxPlatform("aarch64"), LinuxPlatform("ppc64le")
    assert parse_libc("ldd (Debian GLIBC 2.31-13+deb11u11) 2.31\nCopyright (C) 2020\n") == ("glibc", 2, 31)
    assert parse_libc("musl libc (x86_64)\nVersion 1.2.4\n") == ("musl", 1, 2)
    t = target("cp39", x86_64, ("glibc", 2, 31))
    assert (t.python, t.implementation, t.abi, t.resolver) == ("3.9", "cp", "cp39", "x86_64-manylinux_2_31")
    assert t.platforms[0] == "manylinux_2_31_x86_64" and t.platforms[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"} <= set(t.platforms)
    assert not any(p.startswith("linux_") for p in t.platforms)  # never a wheel that is not portable
    assert target("cp313t", aarch64, ("glibc", 2, 30)).resolver == "aarch64-manylinux_2_28"
    assert target("cp313t", aarch64, ("glibc", 2, 30)).abi == "cp313t"
    # a free-threaded build takes no abi3 wheel (PEP 703), its GIL build does
    assert target("cp314t", x86_64, ("glibc", 2, 31)).abis == ["cp314t", "none"]
    assert t.abis == ["cp39", "abi3", "none"]
    from farm.worker.wheelhouse import _target_tags

    threaded = _target_tags(target("cp314t", x86_64, ("glibc", 2, 31)))
    assert "cp314-cp314t-manylinux_2_17_x86_64" in threaded and "py3-none-any" in threaded
    assert not any("-abi3-" in tag for tag in threaded) and "cp39-abi3-manylinux_2_17_x86_64" in _target_tags(t)
    musl = target("cp312", LinuxPlatform("x86_64", musl=True), ("musl", 1, 2))
    assert musl.platforms == ("musllinux_1_2_x86_64", "musllinux_1_1_x86_64")
    assert musl.resolver == "x86_64-unknown-linux-musl"
    assert target("cp312", ppc64le, ("glibc", 2, 28)).resolver is None  # pip resolves alone there


def test_build_requirements_are_only_pep508() -> None:
    """Attack: a pyproject.toml or a backend's get_requires_for_build_wheel answering with installer
    options (`--index-url`, `-r FILE`, a newline and an option) or a local path, which would become
    arguments or requirement-file lines of pip and uv on the worker host."""
    from farm.errors import PackageFailure
    from farm.worker.build_requires import checked

    assert checked(["Cython; python_version < '3.13'", "x @ https://example.org/x-1-py3-none-any.whl"], "declares") \
        == ['Cython; python_version < "3.13"', "x @ https://example.org/x-1-py3-none-any.whl"]
    for bad in ["--index-url=http://evil/", "-r /etc/passwd", "ok\n--extra-index-url http://evil/",
                "x @ file:///etc/shadow", "x @ /root/.ssh/id_rsa"]:
        with pytest.raises(PackageFailure):
            checked([bad], "asks for")


def test_musllinux_and_missing_images(tmp_path: Path, pyyaml_sdist: Path) -> None:
    from farm.errors import ConfigError

    images = {"musllinux-x86_64": [ImageConfig(image="a", pythons=["cp312"]), ImageConfig(image="b", pythons=["cp39"])]}
    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist, platform="musllinux-x86_64", images=images)
    assert choose_image(ctx).image == "b"
    env = cibw_environment(ctx, image="b", family="apk", has_uv=False, job_label="j", docker_host="")
    assert env["CIBW_MUSLLINUX_X86_64_IMAGE"] == "b" and env["CIBW_BUILD"] == "cp39-musllinux_x86_64"
    assert env["CIBW_BUILD_FRONTEND"] == "pip" and "CIBW_BEFORE_ALL" not in env
    ctx = make_ctx(tmp_path / "2", sdist=pyyaml_sdist, python="cp313")
    with pytest.raises(ConfigError, match="no build image for cp313"):
        choose_image(ctx)
    assert before_all_script(ctx, "apk") is None


def test_unreachable_engine_is_an_infrastructure_fault(tmp_path: Path, pyyaml_sdist: Path) -> None:
    from farm.errors import InfrastructureFault

    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist, docker_host=f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(InfrastructureFault, match="does not answer"):
        CibuildwheelEngine().build(ctx)


# With Docker ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, pyyaml_sdist: Path, docker_host: str,  # noqa: F811
          build_image_result) -> tuple[BuildContext, BuildOutput, float]:  # noqa: F811
    import time

    tmp = tmp_path_factory.mktemp("cibw")
    ctx = make_ctx(tmp, sdist=pyyaml_sdist, docker_host=docker_host, log=io.StringIO(),
                   # a variable of its own: the root phase runs here rather than reusing an earlier prepared image
                   options=Options(system_packages={"apt": ["libyaml-dev"]}, test_imports=["yaml", "_yaml"],
                                   environment={"FARMTEST_RUN": uuid.uuid4().hex}),
                   images={"linux-x86_64": [ImageConfig(image=build_image_result.tag, pythons=["cp39"])]})
    start = time.monotonic()
    output = CibuildwheelEngine().build(ctx)
    seconds = time.monotonic() - start
    prepared = re.search(r"wheelhouse for the offline build \(([\d.]+) s\)", ctx.log.getvalue())  # type: ignore[attr-defined]
    print(f"cibuildwheel build of pyyaml took {seconds:.1f} s (wheelhouse {prepared and prepared.group(1)} s)",
          file=sys.stderr)
    return ctx, output, seconds


@pytest.fixture(scope="module")
def unrepaired_wheel(tmp_path_factory: pytest.TempPathFactory, pyyaml_sdist: Path, client,  # noqa: F811
                     build_image_result) -> Path:  # noqa: F811
    """pyyaml built against libyaml for the image's CPython 3.9, without auditwheel repair.

    Built in the build image rather than on the host so that its Python tag matches the verify
    image's interpreter: the verification must fail for the missing library, not for the tag.
    """
    from farm.containers import Container, Limits

    out = tmp_path_factory.mktemp("unrepaired")
    env = {"PIP_CONFIG_FILE": "/dev/null", "PIP_INDEX_URL": "https://pypi.org/simple"}
    with Container(client, build_image_result.tag, network="host", limits=Limits(memory="2g")) as box:
        box.copy_into(pyyaml_sdist, "/src")
        box.call(["sh", "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends libyaml-dev"],
                 timeout=600)
        box.call(["/opt/python/cp39-cp39/bin/python", "-m", "pip", "wheel", "--no-deps", "-w", "/out",
                  f"/src/{pyyaml_sdist.name}"], env=env, timeout=600)
        box.copy_out("/out", out)
    return next((out / "out").glob("*.whl"))


@pytest.mark.docker
@pytest.mark.slow
def test_cibuildwheel_builds_a_repaired_manylinux_wheel(built) -> None:  # type: ignore[no-untyped-def]
    ctx, output, _seconds = built
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    assert output.repaired and len(output.wheels) == 1, log
    wheel = output.wheels[0]
    assert wheel.name.startswith("pyyaml-6.0.2-cp39-cp39-") and "manylinux" in wheel.name and wheel.parent.is_relative_to(ctx.work)
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pyyaml.libs/libyaml") for n in names), names  # libyaml grafted
    assert output.image_digest and output.image_digest.startswith("sha256:")
    assert output.tools["cibuildwheel"].startswith("4.") and output.tools["build-frontend"] == "build[uv]"
    assert "setuptools" in output.effective_build_requires  # type: ignore[operator]
    # The recorded command says what ran: the sdist file itself, in the configured image.
    (command,) = [c for c in ctx.commands if "-m cibuildwheel" in c]
    assert str(ctx.sdist) in command
    # cibuildwheel starts from the image the root phase made of the configured one.
    root = output.isolation["sandbox"]["rootPhase"]
    assert root["reused"] is False and root["preparedImage"].startswith("sha256:")
    assert f"CIBW_MANYLINUX_X86_64_IMAGE={root['preparedImage']}" in command
    assert output.tools["image"] == "wheel-farm/debian-bullseye:latest"
    assert output.isolation["sandbox"]["user"] == "65534:65534" and output.isolation["sandbox"]["capabilities"] == []
    assert "--user=65534:65534" in command and "--cap-drop=ALL" in command and "--cap-add" not in command
    # Built without network: the build requirements came from the farm's wheelhouse, libyaml-dev from
    # package files downloaded beforehand and installed offline by before-all.
    assert output.isolation["network"] == "none" and "--network=none" in command
    wheels = output.isolation["buildWheels"]
    assert any(w.startswith("setuptools-") for w in wheels) and any(w.lower().startswith("cython-") for w in wheels), wheels
    assert all("manylinux" in w or w.endswith("-none-any.whl") for w in wheels), wheels
    assert any(c.startswith("sh -c 'mkdir -p /tmp/farm/pkgs/partial && apt-get update") for c in ctx.commands)
    (installed,) = [c for c in ctx.commands if 'apt-get install -y --no-install-recommends "$@"' in c]
    assert "libyaml-dev_" in log and "CIBW_BEFORE_ALL" not in command and "-m cibuildwheel" not in installed
    # setuptools adds nothing to what pyyaml declares: the backend's hook was not probed, one build ran.
    assert not any("get_requires_for_build_wheel" in c for c in ctx.commands)
    assert sum("-m cibuildwheel" in c for c in ctx.commands) == 1


@pytest.mark.docker
@pytest.mark.slow
def test_cibuildwheel_leaves_no_container(built, client) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """No container of this job is left (other farms on the same engine may be building right now)."""
    import re

    ctx = built[0]
    mine = re.findall(r"--label=farm\.cibuildwheel-job=(\S+)", ctx.log.getvalue())  # type: ignore[attr-defined]
    assert mine and mine[0].startswith(f"{ctx.spec.job_id}-{ctx.spec.attempt}-")  # job, attempt, a random part
    labelled = client.containers.list(all=True, filters={"label": f"farm.cibuildwheel-job={mine[0]}"})
    assert not labelled


@pytest.mark.docker
@pytest.mark.slow
def test_build_failure_is_a_package_failure(tmp_path: Path, pyyaml_sdist: Path, docker_host: str,  # noqa: F811
                                            build_image_result) -> None:  # noqa: F811
    from farm.errors import PackageFailure

    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist, docker_host=docker_host,
                   options=Options(before_build=["echo recipe says no >&2; exit 3"]),
                   images={"linux-x86_64": [ImageConfig(image=build_image_result.tag, pythons=["cp39"])]})
    with pytest.raises(PackageFailure, match="recipe says no"):
        CibuildwheelEngine().build(ctx)


@pytest.mark.docker
@pytest.mark.slow
def test_repaired_wheel_passes_in_the_clean_image(built, verify_image_result, docker_host: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    ctx, output, _ = built
    log = io.StringIO()
    result = verify_in_container(wheel=output.wheels[0], dependency_wheels=[], image=verify_image_result.tag,
                                 requires=[], imports=["yaml", "_yaml", "yaml._yaml"],
                                 test_command=LIBYAML_CHECK + " && ls {project}",
                                 project=ctx.source, log=log, timeout=300, docker_host=docker_host)
    print(f"verification took {result.seconds:.1f} s", file=sys.stderr)
    assert isinstance(result, ContainerVerifyResult)
    assert result.passed, result.output
    assert result.image_digest == verify_image_result.digest
    assert "1: 2" in result.output and "setup.py" in result.output  # the test ran, with the project copied in
    assert any("--no-index --find-links /tmp/farm/wheels" in c for c in result.commands)
    assert "(as farm)" in log.getvalue()
    # the worker's uv, mounted read-only (the engine is on this host), made the venv; one import call
    assert result.commands[0].startswith("/tmp/farm-tools/uv venv"), result.commands
    assert sum(" -c 'import " in c for c in result.commands) == 1, result.commands
    # the container was killed on the way out and the engine removes it (auto-remove)
    import re

    (box_id,) = re.findall(r"container ([0-9a-f]{12}) \(killed afterwards", log.getvalue())
    wait_gone(docker.DockerClient(base_url=docker_host), box_id)


@pytest.mark.docker
@pytest.mark.slow
def test_unrepaired_wheel_fails_in_the_clean_image(unrepaired_wheel: Path, verify_image_result,  # noqa: F811
                                                   docker_host: str) -> None:  # noqa: F811
    names = zipfile.ZipFile(unrepaired_wheel).namelist()
    assert unrepaired_wheel.name.endswith("-cp39-cp39-linux_x86_64.whl")
    assert any(n.startswith("yaml/_yaml") and n.endswith(".so") for n in names)
    assert not any(".libs/" in n for n in names)
    result = verify_in_container(wheel=unrepaired_wheel, dependency_wheels=[], image=verify_image_result.tag,
                                 requires=[], imports=["yaml", "yaml._yaml"], test_command=LIBYAML_CHECK, project=None,
                                 log=io.StringIO(), timeout=300, docker_host=docker_host)
    assert not result.passed
    assert "libyaml-0.so.2: cannot open shared object file" in result.output, result.output


@pytest.mark.docker
@pytest.mark.slow
def test_verification_installs_only_what_it_is_given(built, verify_image_result, docker_host: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _ctx, output, _ = built
    result = verify_in_container(wheel=output.wheels[0], dependency_wheels=[], image=verify_image_result.tag,
                                 requires=["six"], imports=["yaml"], test_command=None, project=None,
                                 log=io.StringIO(), timeout=300, docker_host=docker_host)
    assert not result.passed  # no network and no six wheel given: the install must fail
    assert "six" in result.output


def wait_gone(client, container_id: str, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    """The engine removes a killed auto-remove container shortly after; fail if it is still there."""
    from docker.errors import NotFound as DockerNotFound

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.containers.get(container_id)
        except DockerNotFound:
            return
        time.sleep(0.2)
    pytest.fail(f"container {container_id} still there {seconds:.0f} s after it was killed")


@pytest.mark.docker
@pytest.mark.slow
def test_verification_container_started_early_is_used_or_killed(built, verify_image_result, docker_host: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A container started while the build runs (VerifyBox.start_early) is the one verification uses;
    one that is never used is killed by close() and removed by the engine."""
    from farm.worker.verify_container import VerifyBox

    _ctx, output, _ = built
    early = VerifyBox.start_early(image=verify_image_result.tag, docker_host=docker_host, timeout=300)
    assert early.ready().box is not None
    early_id = early.box.id
    log = io.StringIO()
    result = verify_in_container(wheel=output.wheels[0], dependency_wheels=[], image=verify_image_result.tag,
                                 requires=[], imports=["yaml"], test_command=None, project=None, log=log,
                                 timeout=300, docker_host=docker_host, early=early)
    assert result.passed, result.output
    assert f"container {early_id[:12]} " in log.getvalue()

    unused = VerifyBox.start_early(image=verify_image_result.tag, docker_host=docker_host, timeout=300).ready()
    assert unused.box is not None
    box_id = unused.box.id
    client = docker.DockerClient(base_url=docker_host)
    assert client.containers.get(box_id).status == "running"
    unused.close()
    unused.close()  # twice is harmless
    wait_gone(client, box_id)


def make_pure_wheel(folder: Path, name: str = "farmdep", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, written by hand."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(wheel, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))
    return wheel


@pytest.mark.docker
@pytest.mark.slow
def test_dependency_wheels_are_the_only_index(tmp_path: Path, built, verify_image_result,  # type: ignore[no-untyped-def]  # noqa: F811
                                              docker_host: str) -> None:  # noqa: F811
    _ctx, output, _ = built
    dep = make_pure_wheel(tmp_path)
    result = verify_in_container(wheel=output.wheels[0], dependency_wheels=[dep], image=verify_image_result.tag,
                                 requires=["farmdep==1.0"], imports=["yaml", "farmdep"],
                                 test_command="{python} -c 'import farmdep; assert farmdep.VALUE == 42'",
                                 project=None, log=io.StringIO(), timeout=300, docker_host=docker_host)
    assert result.passed, result.output
    # uv ("+ farmdep==1.0") where the worker's uv runs in the image, else pip ("Successfully installed ...").
    assert ("+ farmdep==1.0" in result.output and "+ pyyaml==6.0.2" in result.output) or \
        "Successfully installed farmdep-1.0 pyyaml-6.0.2" in result.output, result.output


@pytest.mark.docker
@pytest.mark.slow
def test_verification_falls_back_to_pip_where_uv_does_not_run(tmp_path: Path, built, verify_image_result,  # type: ignore[no-untyped-def]  # noqa: F811
                                                              docker_host: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    _ctx, output, _ = built
    not_uv = tmp_path / "uv"
    not_uv.write_text("not a program for this image\n")
    not_uv.chmod(0o755)
    monkeypatch.setattr("farm.worker.engines.native.uv_bin", lambda: str(not_uv))
    result = verify_in_container(wheel=output.wheels[0], dependency_wheels=[], image=verify_image_result.tag,
                                 requires=[], imports=["yaml"], test_command=LIBYAML_CHECK, project=None,
                                 log=io.StringIO(), timeout=300, docker_host=docker_host)
    assert result.passed, result.output
    assert result.install_command.endswith("-m pip install --no-index --find-links /tmp/farm/wheels")


def test_bind_mounts_only_for_an_engine_on_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.containers import local_engine

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert local_engine("unix:///root/.cache/wheel-farm/docker/docker.sock") and local_engine("")
    assert local_engine("npipe:////./pipe/docker_engine")
    assert not local_engine("tcp://10.0.0.5:2376") and not local_engine("ssh://builder@host")
    monkeypatch.setenv("DOCKER_HOST", "ssh://builder@host")
    assert not local_engine("")


# The container helper --------------------------------------------------------------------------
@pytest.mark.docker
@pytest.mark.slow
def test_container_helper(tmp_path: Path, client, verify_image_result) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from farm.containers import Container, ContainerCommandFailed, Limits

    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f.txt").write_text("hello")
    with Container(client, verify_image_result.tag, network="none", limits=Limits(memory="256m", pids=64),
                   user="farm") as box:
        box.call(["mkdir", "-p", "/tmp/w"])
        assert box.copy_into(tmp_path / "tree", "/tmp/w", owner=1000) == "/tmp/w/tree"
        box.call(["sh", "-c", "echo more >> /tmp/w/tree/sub/f.txt"])  # owned by the user
        box.write_file("/tmp/w/note", "n\n", owner=1000)
        out = box.copy_out("/tmp/w", tmp_path / "back")
        assert out == [tmp_path / "back" / "w"]
        assert (tmp_path / "back" / "w" / "tree" / "sub" / "f.txt").read_text() == "hellomore\n"
        interfaces = box.call(["cat", "/proc/net/dev"]).output
        assert "lo:" in interfaces and "eth0" not in interfaces  # network none
        host_config = client.containers.get(box.id).attrs["HostConfig"]
        assert host_config["PidsLimit"] == 64 and host_config["Memory"] == 256 * 1024 * 1024
        assert host_config["NetworkMode"] == "none" and not host_config.get("Binds")
        with pytest.raises(ContainerCommandFailed) as failed:
            box.call(["sh", "-c", "echo partial; exit 4"])
        assert failed.value.result.exit_code == 4 and "partial" in failed.value.result.output
        with pytest.raises(ContainerCommandFailed) as slow:
            box.call(["sleep", "30"], timeout=1)
        assert slow.value.timed_out
        container_id = box.id
    from docker.errors import NotFound

    with pytest.raises(NotFound):
        client.containers.get(container_id)


# Offline container builds: small generated sdists ------------------------------------------------
C_MODULE = """#include <Python.h>
#include <stdlib.h>
static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, NULL}};
/* getenv: a libc symbol, so that auditwheel sees which libc the extension needs */
PyMODINIT_FUNC PyInit_{name}(void) {{ (void)getenv("{name}"); return PyModule_Create(&def); }}
"""
NO_WHEEL = "the build requirements cannot be installed from the index as wheels"


def make_sdist(folder: Path, name: str, *, requires: list[str], setup_prefix: str = "",  # noqa: PLR0913
               backend: str = "setuptools.build_meta", backend_path: list[str] | None = None,
               extra: dict[str, str] | None = None) -> Path:
    """`name-1.0.tar.gz`: a setuptools project with one C extension (cibuildwheel refuses pure wheels)."""
    import json

    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        "pyproject.toml": f"[build-system]\nrequires = {json.dumps(requires)}\nbuild-backend = {json.dumps(backend)}\n"
                          + (f"backend-path = {json.dumps(backend_path)}\n" if backend_path else ""),
        "setup.py": setup_prefix + "from setuptools import Extension, setup\n"
                    f"setup(name={name!r}, version='1.0', ext_modules=[Extension({name!r}, [{name + '.c'!r}])])\n",
        f"{name}.c": C_MODULE.format(name=name),
        **(extra or {}),
    }
    sdist = folder / f"{name}-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-1.0/{rel}")
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return sdist


def small_ctx(tmp: Path, sdist: Path, docker_host: str, image: str) -> BuildContext:  # noqa: F811
    return make_ctx(tmp, sdist=sdist, docker_host=docker_host, log=io.StringIO(),
                    images={"linux-x86_64": [ImageConfig(image=image, pythons=["cp39"])]})


LOOPBACK_PROBE = """import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
except OSError as exc:
    print("farm-probe: the host's loopback is unreachable:", repr(exc), flush=True)
else:
    raise SystemExit("farm-probe: REACHED the host's loopback port {port} from the build")
"""


@pytest.mark.docker
@pytest.mark.slow
def test_build_container_cannot_reach_the_hosts_loopback(tmp_path: Path, docker_host: str,  # noqa: F811
                                                         build_image_result) -> None:  # noqa: F811
    """Attack: a setup.py that connects to a service on the worker's loopback (Redis, the farm's API)
    while the wheel is built. The same code run on the host reaches the test's server, so the
    build (and the farm's probe of the backend's requirements) would fail with its message if the
    container shared the host's network."""
    import socket
    import subprocess
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[tuple] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        probe = LOOPBACK_PROBE.format(port=port)
        control = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
        assert "REACHED" in control.stderr and len(accepted) == 1, (control, accepted)  # the probe works
        sdist = make_sdist(tmp_path, "farmprobe", requires=["setuptools"], setup_prefix=probe)
        ctx = small_ctx(tmp_path, sdist, docker_host, build_image_result.tag)
        output = CibuildwheelEngine().build(ctx)
    finally:
        stop.set()
        thread.join(5)
        server.close()
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    assert len(accepted) == 1, accepted  # nothing from the build
    assert output.wheels[0].name.startswith("farmprobe-1.0-cp39-cp39-") and "manylinux" in output.wheels[0].name
    # setup.py ran in the build container (its hooks) and found no loopback service
    assert log.count("farm-probe: the host's loopback is unreachable") >= 1, log
    assert output.isolation["network"] == "none"


@pytest.mark.docker
@pytest.mark.slow
def test_dynamic_build_requirement_is_in_the_wheelhouse(tmp_path: Path, docker_host: str,  # noqa: F811
                                                        build_image_result) -> None:  # noqa: F811
    """Bad input: an sdist whose backend asks for more than it declares. setuptools before 70.1
    declares nothing about `wheel` but returns it from get_requires_for_build_wheel; without the
    farm's probe of that hook the offline front end could not install it and the build would fail."""
    identity = ("import os, re\ncaps = re.search(r'CapEff:\\s*(\\w+)', open('/proc/self/status').read()).group(1)\n"
                "print(f'farm-identity: uid={os.getuid()} caps={caps} net={sorted(os.listdir(\"/sys/class/net\"))}')\n")
    sdist = make_sdist(tmp_path, "farmdyn", requires=["setuptools<70"], setup_prefix=identity)
    ctx = small_ctx(tmp_path, sdist, docker_host, build_image_result.tag)
    output = CibuildwheelEngine().build(ctx)
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    assert output.wheels[0].name.startswith("farmdyn-1.0-cp39-cp39-"), log
    assert "the build backend adds: wheel" in log
    # Built first without asking the backend; its offline front end missed `wheel`; the probe of the
    # hook added it and the build ran again.
    assert sum("-m cibuildwheel" in c for c in ctx.commands) == 2 and "wheel was not found in the cache" in log
    assert output.effective_build_requires == ["setuptools<70", "wheel"]
    wheels = output.isolation["buildWheels"]
    assert any(w.startswith("setuptools-69.") for w in wheels) and any(w.startswith("wheel-") for w in wheels), wheels
    assert output.isolation["network"] == "none"
    # The probe of the hook and the build itself are package code: not root, no capabilities, no network.
    assert any("_in_process.py get_requires_for_build_wheel" in c for c in ctx.commands), ctx.commands
    seen = re.findall(r"farm-identity: (.*)", log)
    assert len(seen) >= 2 and set(seen) == {"uid=65534 caps=0000000000000000 net=['lo']"}, seen


BACKEND_ADDING = """from setuptools.build_meta import *  # noqa: F403
from setuptools import build_meta as _setuptools


def get_requires_for_build_wheel(config_settings=None):
    return [*_setuptools.get_requires_for_build_wheel(config_settings), "docopt==0.6.2"]
"""


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("how", ["declared", "dynamic"])
def test_build_requirement_without_a_wheel_fails_with_the_reason(tmp_path: Path, docker_host: str, how: str,  # noqa: F811
                                                                 build_image_result) -> None:  # noqa: F811
    """Bad input: a build requirement that exists only as an sdist (docopt 0.6.2), declared in
    [build-system] or returned by an in-tree backend (backend-path) from get_requires_for_build_wheel.
    Building it would run its setup.py with network; the job fails as the package's, saying why."""
    from farm.errors import PackageFailure

    if how == "declared":
        sdist = make_sdist(tmp_path, "farmnowheel", requires=["setuptools", "docopt==0.6.2"])
    else:
        sdist = make_sdist(tmp_path, "farmnowheel", requires=["setuptools"], backend="farm_backend",
                           backend_path=["_backend"], extra={"_backend/farm_backend.py": BACKEND_ADDING})
    ctx = small_ctx(tmp_path, sdist, docker_host, build_image_result.tag)
    with pytest.raises(PackageFailure, match=NO_WHEEL) as failed:
        CibuildwheelEngine().build(ctx)
    assert failed.value.step == "build"
    assert "docopt" in str(failed.value) and "cp39 manylinux_2_31_x86_64" in str(failed.value)
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    if how == "dynamic":
        assert "the build backend adds: docopt==0.6.2" in log
        # the build ran first, missed docopt offline; the probe of the hook named it; it has no wheel
        # (once more with the build requirements as of the sdist's date, which changes nothing here)
        retried = "retry: build requirements as of the release" in log
        assert sum("-m cibuildwheel" in c for c in ctx.commands) == (2 if retried else 1), ctx.commands
    else:
        assert "-m cibuildwheel" not in log  # nothing was built


BACKEND_ONLY_IN_THE_BUILD = """import os
from setuptools.build_meta import *  # noqa: F403
from setuptools import build_meta as _setuptools


def get_requires_for_build_wheel(config_settings=None):
    extra = ["wheel"] if os.environ.get("CIBUILDWHEEL") else []  # cibuildwheel's container, not the farm's probe
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]
"""


@pytest.mark.docker
@pytest.mark.slow
def test_requirement_asked_only_in_the_build_fails_offline(tmp_path: Path, docker_host: str,  # noqa: F811
                                                           build_image_result) -> None:  # noqa: F811
    """Bad input: a backend that asks for more in the build container than in the farm's probe.
    The front end cannot fetch it (no index, no network): the build fails, saying the wheelhouse
    lacked a requirement."""
    from farm.errors import PackageFailure

    sdist = make_sdist(tmp_path, "farmsly", requires=["setuptools>=70.1"], backend="farm_backend",
                       backend_path=["_backend"], extra={"_backend/farm_backend.py": BACKEND_ONLY_IN_THE_BUILD})
    ctx = small_ctx(tmp_path, sdist, docker_host, build_image_result.tag)
    with pytest.raises(PackageFailure, match="not in the farm's wheelhouse") as failed:
        CibuildwheelEngine().build(ctx)
    assert "wheel was not found in the cache" in str(failed.value)
    assert "the build backend adds" not in ctx.log.getvalue()  # type: ignore[attr-defined]


def test_prepared_image_key_follows_its_inputs(tmp_path: Path, pyyaml_sdist: Path) -> None:
    """A prepared image (system packages and before-all, made as root) is reused only by a build with
    the same inputs; the sdist itself counts only when before-all reads the project."""
    from farm.worker.engines import prepared_image

    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist)
    base: dict = {"digest": "sha256:a", "family": "apt", "packages": ["libyaml-dev", "b"], "script": "set -e\nx",
                  "env_script": "A=1", "user": "65534:65534"}
    key = prepared_image.key(ctx, **base)
    assert key == prepared_image.key(ctx, **{**base, "packages": ["b", "libyaml-dev"]})
    for change in ({"digest": "sha256:b"}, {"packages": ["other"]}, {"script": "y"}, {"script": None},
                   {"env_script": "A=2"}, {"user": "1000:1000"}, {"family": "yum"}):
        assert prepared_image.key(ctx, **{**base, **change}) != key, change
    other = make_ctx(tmp_path / "other", sdist=pyyaml_sdist)
    other.spec = other.spec.model_copy(update={"sdist": other.spec.sdist.model_copy(update={"sha256": "1" * 64})})
    assert prepared_image.key(other, **base) == key
    reads = {**base, "script": "set -e\nmake -C /farm/project/tools"}
    assert prepared_image.key(other, **reads) != prepared_image.key(ctx, **reads)
    # Without a root script the environment does not matter: one prepared image serves every such build.
    assert prepared_image.key(ctx, **{**base, "script": None}) == prepared_image.key(ctx, **{**base, "script": None, "env_script": "B=2"})
    # ... nor the Python: every Python of a matrix starts from one prepared image; a script runs with it on PATH.
    py313 = make_ctx(tmp_path / "py313", sdist=pyyaml_sdist)
    py313.spec = py313.spec.model_copy(update={"python": "cp313"})
    assert py313.spec.python != ctx.spec.python
    assert prepared_image.key(py313, **{**base, "script": None}) == prepared_image.key(ctx, **{**base, "script": None})
    assert prepared_image.key(py313, **base) != key
    assert prepared_image.root_script(ctx, install=None, before_all=[]) is None
    assert prepared_image.root_script(ctx, install=None, before_all=["ls {project}"]) == "set -e\nls /farm/project"


@pytest.mark.docker
@pytest.mark.slow
def test_the_pythons_of_a_matrix_prepare_one_image_at_a_time(tmp_path: Path, pyyaml_sdist: Path, client,  # noqa: F811
                                                              docker_host: str, build_image_result) -> None:  # noqa: F811
    """Two jobs of one sdist, two Pythons, same host (FARM_HOME), at once, no root script: one prepared
    image is made and the other job reuses it. Before, both made one and the second removed the
    first's while its build was about to start it ('No such image'), a fault retried in place."""
    import threading

    from farm.worker.engines import prepared_image

    digest = client.images.get(build_image_result.tag).id
    ctxs = [make_ctx(tmp_path / py, sdist=pyyaml_sdist, docker_host=docker_host, python=py) for py in ("cp39", "cp313")]
    for ctx in ctxs:  # one FARM_HOME, as a worker's job slots have
        ctx.settings = ctxs[0].settings
    # a key no earlier run made (the test's own user id), so both jobs find nothing at first
    user = f"{65000 + uuid.uuid4().int % 500}:{65000 + uuid.uuid4().int % 500}"
    keys = {prepared_image.key(ctx, digest=digest, family="apt", packages=[], script=None, env_script="",
                               user=user) for ctx in ctxs}
    assert len(keys) == 1
    (key,) = keys
    results: list[prepared_image.Prepared] = []
    barrier = threading.Barrier(2)

    def job(ctx: BuildContext) -> None:
        barrier.wait()
        results.append(prepared_image.prepare(ctx, client, image=build_image_result.tag, prepared_key=key, script=None,
                                              env_script="", user=user, python="/opt/python/cp39-cp39/bin/python",
                                              mounts={}, labels={}))

    threads = [threading.Thread(target=job, args=(ctx,)) for ctx in ctxs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert len(results) == 2
        assert results[0].image == results[1].image and client.images.get(results[0].image)
        assert sorted(r.reused for r in results) == [False, True]
        assert len(client.images.list(filters={"label": f"{prepared_image.KEY_LABEL}={key}"})) == 1
    finally:
        for image in client.images.list(filters={"label": f"{prepared_image.KEY_LABEL}={key}"}):
            client.images.remove(image.id, force=True)
