"""Linux container builds: the cibuildwheel engine, verification in a clean container, the container helper.

The Docker tests build the real pyyaml 6.0.2 sdist with cibuildwheel in the bullseye build image
(libyaml-dev from apt in before-all), check that libyaml was grafted, verify the wheel in the
clean bullseye image without network, and show that an unrepaired wheel fails there.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import docker
import pytest

from farm.config import ImageConfig, Settings
from farm.messages import JobSpec, SdistRef
from farm.recipes.schema import Options
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.engines.cibuildwheel import (
    CibuildwheelEngine,
    before_all_script,
    choose_image,
    cibw_environment,
    config_settings,
    engine_config,
    repair_command,
    system_packages_command,
)
from farm.worker.platforms import get_platform
from farm.worker.verify_container import ContainerVerifyResult, verify_in_container
from tests.conftest import cached_sdist
from tests.test_images import build_image_result, client, docker_host, verify_image_result  # noqa: F401

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
                   sdist=SdistRef(filename=sdist.name, sha256="0" * 64, size=sdist.stat().st_size, storage_key="s"),
                   platform=plat.name, python=python, build_id=plat.build_identifier(python), engine="cibuildwheel",
                   recipe_name="pyyaml", recipe_digest="d", options={}, upstream_index="https://pypi.org/simple/")
    settings = Settings(home=tmp / "home", docker_host=docker_host, build_memory="2g", build_pids=2048,
                        images=images or {"linux-x86_64": [ImageConfig(image="wheel-farm/debian-bullseye:latest",
                                                                       pythons=["cp39"])]})
    work = tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    from farm.worker.source import SdistSource

    from farm.worker.sandbox import job_limits

    options = options or Options()
    return BuildContext(spec=spec, options=options, platform=plat, settings=settings,
                        src=SdistSource.unpacked(sdist, source), work=work, log=log or io.StringIO(),
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
    assert env["CIBW_BEFORE_ALL"] == ("set -e\napt-get update -qq && apt-get install -y --no-install-recommends "
                                      "libyaml-dev\necho python {project}")
    assert env["CIBW_BEFORE_BUILD"] == "python -m pip --version"
    assert env["CIBW_REPAIR_WHEEL_COMMAND"] == "auditwheel repair --exclude libfoo.so.1 -w {dest_dir} {wheel}"
    assert env["CIBW_CONFIG_SETTINGS"] == "--build-option=--a '--build-option=--b c' setup-args=-Dx=1"
    # cibuildwheel's own parser reads back exactly the values (recipe values expand $VARS in the container).
    parsed = parse_environment(env["CIBW_ENVIRONMENT"]).as_dictionary({"CFLAGS": "-g"})
    assert parsed["CFLAGS"] == "-O2 -g"
    assert parsed["QUOTED"] == 'say "hi" `no` \\ end' and parsed["PLAIN"] == "a b"
    assert parsed["PIP_INDEX_URL"] == "https://pypi.org/simple/" and parsed["UV_DEFAULT_INDEX"] == parsed["PIP_INDEX_URL"]
    assert parsed["PIP_CERT"] == parsed["SSL_CERT_FILE"] == "/farm/ca-bundle.crt"


def test_container_engine_never_mounts_the_host(tmp_path: Path, pyyaml_sdist: Path) -> None:
    from cibuildwheel.oci_container import OCIContainerEngineConfig

    ctx = make_ctx(tmp_path, sdist=pyyaml_sdist)
    config = OCIContainerEngineConfig.from_config_string(engine_config(ctx, ca=tmp_path / "ca.crt", job_label="j"))
    assert config.name == "docker" and config.disable_host_mount
    args = config.create_args
    assert "--network=host" in args and "--memory=2g" in args and "--pids-limit=2048" in args
    assert f"--volume={tmp_path / 'ca.crt'}:/farm/ca-bundle.crt:ro" in args
    assert "--label=farm.cibuildwheel-job=j" in args


def test_system_packages_per_family() -> None:
    assert system_packages_command("apt", []) is None
    assert system_packages_command("apk", ["yaml-dev"]) == "apk add --no-cache yaml-dev"
    assert "dnf install -y libyaml-devel" in system_packages_command("yum", ["libyaml-devel"])  # type: ignore[operator]
    assert repair_command([]) == "auditwheel repair -w {dest_dir} {wheel}"
    assert config_settings({"k": "v w"}) == "'k=v w'"


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
                   options=Options(system_packages={"apt": ["libyaml-dev"]}, test_imports=["yaml", "_yaml"]),
                   images={"linux-x86_64": [ImageConfig(image=build_image_result.tag, pythons=["cp39"])]})
    start = time.monotonic()
    output = CibuildwheelEngine().build(ctx)
    seconds = time.monotonic() - start
    print(f"cibuildwheel build of pyyaml took {seconds:.1f} s", file=sys.stderr)
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
    (command,) = ctx.commands
    assert "-m cibuildwheel" in command and str(ctx.sdist) in command
    assert "CIBW_MANYLINUX_X86_64_IMAGE=wheel-farm/debian-bullseye:latest" in command
    assert "apt-get install -y --no-install-recommends libyaml-dev" in log


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
