"""Python 2.7 through the container path (farm/worker/engines/python2_container.py): bullseye's images
carry Debian's CPython 2.7, the cibuildwheel engine builds a cp27 job in the build image itself with
virtualenv 16 and pip 20.3, repairs it with auditwheel, and verifies it in the clean image.

The slow test builds a real sdist with a C extension (MarkupSafe 1.1.1, its last release for Python
2) for cp27 and cp39 through the images, and installs the cp27 wheel from the farm's index with pip
20.3 on pyenv's CPython 2.7 on this host.

Bad inputs covered: config-settings for a Python 2 build (pip 20.3 has none), an image asked for
2.7 on a suite that has none.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.errors import FarmError, PackageFailure
from farm.images.debootstrap import PYTHON2_PACKAGES, build_image, default_python2
from farm.recipes.load import default_options
from farm.worker import python2
from farm.worker.engines import python2_container
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import (  # noqa: F401 - fixtures and helpers
    build_image_result, client, container_env, docker_host, verify_image_result)
from tests.helpers.sdists import cached_sdist

PYENV = Path.home() / ".pyenv" / "versions"


def test_python2_is_in_the_images_of_the_suites_that_have_it(tmp_path: Path) -> None:
    assert default_python2("bullseye") and default_python2("buster")
    assert not default_python2("bookworm") and not default_python2("trixie")  # Debian has none since bookworm
    assert not default_python2("bullseye", foreign=True)  # nothing added under emulation unless asked
    assert "python2.7-dev" in PYTHON2_PACKAGES["build"]
    assert not [p for p in PYTHON2_PACKAGES["verify"] if p.endswith("-dev")]  # the clean image has no headers
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    with pytest.raises(FarmError, match="bookworm has no CPython 2.7"):  # refused before any engine or download
        build_image(suite="bookworm", ca_bundle=ca, cache_dir=tmp_path, log=io.StringIO(), python2=True,
                    docker_host="unix:///nonexistent")


def test_the_build_script(tmp_path: Path) -> None:
    """In the container: a virtualenv with only the build requirements' wheels, pip's build without
    isolation or index, before-build with {python} meaning the build environment's, auditwheel's repair."""
    options = default_options().model_copy(update={"before_build": ["{python} -c 'print(1)' {project}"],
                                                   "environment": {"CFLAGS": "-O1"}})
    ctx = SimpleNamespace(options=options)
    tools = python2.Tools(pip_wheel=Path("/h/pip-20.3.4-py2.py3-none-any.whl"), virtualenv=Path("/h/virtualenv-16.7.12/virtualenv.py"))
    script = python2_container.build_script(ctx, interpreter="/opt/python/cp27-cp27/bin/python",  # type: ignore[arg-type]
                                            tree="odd name-1.0", tools=tools, repair="auditwheel repair {wheel} -w {dest_dir}",
                                            have_wheels=True)
    lines = script.splitlines()
    assert "/opt/python/cp27-cp27/bin/python /farm/python2/virtualenv/virtualenv.py --quiet --no-download --no-pip " \
           "--no-setuptools --no-wheel /tmp/farm/env" in script
    install = next(line for line in lines if " install " in line)
    assert "--no-index" in install and "--only-binary=:all:" in install and "/farm/build-wheels/*.whl" in install
    assert "cd /tmp/farm/'odd name-1.0'" in lines
    assert "python -c 'print(1)' ." in lines  # {python}: the build environment's, first on PATH
    build = next(line for line in lines if " wheel " in line)
    assert "--no-build-isolation" in build and "--no-index" in build and "--no-deps" in build
    assert build.startswith("/tmp/farm/env/bin/python /farm/python2/pip-20.3.4-py2.py3-none-any.whl/pip wheel")
    assert lines.index("set -e") < lines.index(build) < lines.index(next(x for x in lines if x.startswith("set +e")))
    assert '(auditwheel repair "$wheel" -w /tmp/farm/out) || exit 1;;' in script
    assert 'CFLAGS="-O1"' in lines[0] and "PIP_NO_INDEX=1" in lines[0]
    no_wheels = python2_container.build_script(ctx, interpreter="python2.7", tree="t", tools=tools,  # type: ignore[arg-type]
                                               repair="r", have_wheels=False)
    assert " install " not in no_wheels


def test_config_settings_are_refused_for_python2() -> None:
    """Bad input: a recipe's config-settings reaching a cp27 job: pip 20.3 cannot pass them. Refused at
    once, before any container starts, with the way out."""
    ctx = SimpleNamespace(options=SimpleNamespace(config_settings={"setup-args": "-Dx=1"}))
    with pytest.raises(PackageFailure, match="config-settings cannot be passed to a Python 2 build"):
        python2_container.build(ctx, None, image="i", digest="d", family="apt", docker_host="unix:///x",  # type: ignore[arg-type]
                                job_label="l", as_of=None, emulation=None)


@pytest.fixture(scope="module")
def py2_container_farm(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
                       build_image_result, verify_image_result):  # type: ignore[no-untyped-def]  # noqa: F811
    f = Farm(tmp_path_factory.mktemp("py2-containers") / "home", free_port())
    f.env.update(container_env(docker_host, build_image_result, verify_image_result, python2=True))
    f.start()
    yield f
    f.stop()


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.network
def test_a_c_extension_is_built_for_python27_in_the_bullseye_image(py2_container_farm: Farm,  # type: ignore[no-untyped-def]
                                                                   client, verify_image_result,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    farm = py2_container_farm
    res = farm.farm("submit", "--wait", "--timeout", "1500", str(cached_sdist("markupsafe==1.1.1")))
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = sorted(p.name for p in (farm.home / "index/files/markupsafe").glob("*.whl"))
    assert [w.split("-")[2:4] for w in wheels] == [["cp27", "cp27mu"], ["cp39", "cp39"]], wheels
    for wheel in wheels:  # repaired by auditwheel, manylinux_2_31 or older: bullseye's glibc
        glibcs = [tuple(map(int, m.groups())) for m in re.finditer(r"manylinux_(\d+)_(\d+)_x86_64", wheel)]
        assert glibcs and max(glibcs) <= (2, 31), wheel

    jobs = {j["build_id"].split("-")[0]: j for j in json.loads(farm.farm("status", "--json").stdout)
            if j["name"] == "markupsafe"}
    log = farm.farm("logs", str(jobs["cp27"]["id"])).stdout
    assert "--no-build-isolation" in log and "setuptools==44." in log  # pip 20.3's build, setuptools for 2.7
    assert "auditwheel repair" in log and "virtualenv.py" in log
    assert re.search(r"verifying markupsafe-1\.1\.1-cp27-cp27mu\S+ in \S+-verify\S* .*network none", log, re.I)  # the clean image
    assert "/opt/python/cp27-cp27/bin/python" in log.split("===== verifying")[1]  # on 2.7, not the image's python3
    statement = json.loads(next((farm.home / "index/files/markupsafe").glob("*cp27mu*.provenance.json")).read_text())
    tools = statement["predicate"]["runDetails"]["builder"]["version"]
    assert tools["pip"] == "20.3.4" and tools["virtualenv"] == "16.7.12" and tools["python"] == "2.7"
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["environment"].startswith("container:")

    # pip 20.3 on pyenv's CPython 2.7 (this host, not the image) installs it from the farm's index.
    found = sorted(PYENV.glob("2.7.*/bin/python2.7")) if PYENV.is_dir() else []
    if not found:
        pytest.skip("pyenv has no CPython 2.7 to install the wheel on")
    tools_ = python2.tools(farm.home, "https://pypi.org/simple/")
    python = python2.make_env(SimpleNamespace(path=found[-1]), tmp_path / "py27", tools_)  # type: ignore[arg-type]
    pip = subprocess.run([*tools_.pip(python), "install", "--no-python-version-warning", "--index-url", farm.index_url,
                          "markupsafe"], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "HOME": str(tmp_path)})
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(python), "-c", "import sys, markupsafe._speedups as s; sys.stdout.write("
                          "'%d.%d %s' % (sys.version_info[0], sys.version_info[1], s.escape('<a>')))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "2.7 &lt;a&gt;", out.stdout + out.stderr

