"""A real sdist that needs a -dev package the clean build image lacks, built by a container farm with
the package found automatically (farm/worker/sysdeps.py), verified in the clean image, and the
recipe it suggests.

pylibacl 0.7.0 compiles `#include <sys/acl.h>`, which Debian's libacl1-dev provides; the farm's
bullseye build image (debootstrap minbase + compilers) does not have it and the farm has no recipe
for pylibacl. The first attempt fails (the log keeps its compiler error); the worker reads bullseye's
Contents index from the image's own mirror, downloads libacl1-dev for the root phase (the build
container has no network) and builds again; the wheel (libacl grafted by auditwheel) is verified
in the clean image without network, and published.

Bad input covered: a project that includes a header no Debian package provides fails with that
said, and is not built again.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import build_image_result, container_env, client, docker_host, run_in, verify_image_result  # noqa: F401
from tests.helpers.sdists import cached_sdist, make_project, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]


@pytest.fixture(scope="module")
def container_farm(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
                   build_image_result, verify_image_result) -> Iterator[Farm]:  # noqa: F811
    f = Farm(tmp_path_factory.mktemp("sysdeps") / "home", free_port())
    f.env.update(container_env(docker_host, build_image_result, verify_image_result))
    try:
        f.start()
    except RuntimeError:  # a loaded host: `farm up` may take longer than the helper's minute to answer
        if not _answers(f, within=300):
            f.stop()
            raise
    yield f
    f.stop()


def _answers(f: Farm, *, within: float) -> bool:
    import time

    import httpx

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if httpx.get(f.url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(1)
    return False


def test_pylibacl_builds_with_the_package_found_for_it(container_farm: Farm, client, build_image_result,  # noqa: F811
                                                       verify_image_result) -> None:  # noqa: F811
    # the clean build image lacks the header (what makes the first attempt fail)
    code, _ = run_in(client, build_image_result.tag, "test -e /usr/include/x86_64-linux-gnu/sys/acl.h "
                     "|| test -e /usr/include/sys/acl.h")
    assert code != 0

    res = container_farm.farm("submit", "--wait", "--timeout", "1500", "--python", "3.9",
                              str(cached_sdist("pylibacl==0.7.0")))
    log = container_farm.farm("logs", "1").stdout
    assert res.returncode == 0, res.stdout + res.stderr + log[-6000:]
    # the first attempt failed for the header, the second ran with the package, offline in the root phase
    assert "fatal error: sys/acl.h: No such file or directory" in log
    assert "sys/acl.h (header): libacl1-dev" in log
    assert "retry: with the system packages libacl1-dev" in log
    assert "libacl1-dev" in log.split("retry: with the system packages", 1)[1].split("root phase", 1)[0]

    wheel = next((container_farm.home / "index/files/pylibacl").glob("*-cp39-cp39-manylinux*.whl"))
    assert any(n.startswith("pylibacl.libs/libacl") for n in zipfile.ZipFile(wheel).namelist())
    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    found = statement["predicate"]["buildDefinition"]["internalParameters"]["adjustments"]["systemPackages"]
    assert found["packages"] == ["libacl1-dev"] and found["retry"] is True and found["outcome"] == "built"
    assert found["found"][0]["missing"] == "sys/acl.h" and "bullseye/amd64" in found["lookup"]
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["environment"].startswith("container:")

    # the suggested recipe, from the command and on the job
    suggested = container_farm.farm("recipe", "suggest", "pylibacl")
    assert suggested.returncode == 0, suggested.stderr
    assert '[system-packages]\napt = ["libacl1-dev"]' in suggested.stdout
    recipes = container_farm.home / "suggested"
    recipes.mkdir()
    (recipes / "pylibacl.toml").write_text(suggested.stdout)
    assert container_farm.farm("recipe", "check", str(recipes)).returncode == 0
    shown = json.loads(container_farm.farm("show", "pylibacl==0.7.0", "--json").stdout)
    assert shown["jobs"][0]["suggested_recipe"] == suggested.stdout

    # the wheel works in the clean image: the ACL library it carries is the one it loads
    code, out = run_in(client, verify_image_result.tag, network="host", script=(
        "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --index-url "
        f"{container_farm.index_url} pylibacl && cd /tmp && /tmp/v/bin/python -c "
        "'import posix1e; a = posix1e.ACL(text=\"u::rw,g::r,o::r\"); assert a.valid(); print(a.to_any_text())'"))
    assert code == 0 and "user::rw-" in out, out


def test_a_header_no_package_provides_fails_clearly(container_farm: Farm, tmp_path: Path) -> None:
    proj = make_project(tmp_path, "farmtest-nosuchheader")
    native = proj / "farmtest_nosuchheader" / "_native.c"
    native.write_text("#include <farm_no_such_header_q7.h>\n" + native.read_text())
    sdist = make_sdist(proj, tmp_path / "dist")
    res = container_farm.farm("submit", "--wait", "--timeout", "900", "--python", "3.9", str(sdist))
    assert res.returncode != 0
    jobs = json.loads(container_farm.farm("status", "--json").stdout)
    job = next(j for j in jobs if j["name"] == "farmtest-nosuchheader")
    assert job["state"] == "failed"
    assert ("no package in the Contents index of bullseye/amd64" in job["error"]
            and "provides farm_no_such_header_q7.h (header); nothing was installed" in job["error"]), job["error"]
    log = container_farm.farm("logs", str(job["id"])).stdout
    assert "retry: with the system packages" not in log
    assert container_farm.farm("recipe", "suggest", "farmtest-nosuchheader").returncode != 0
