"""cibuildwheel offline: nothing it runs downloads a tool at build time.

An abi3 sdist (written here, `Py_LIMITED_API` for 3.9) is built by a farm whose engine is
cibuildwheel, in the Debian-made build image, once for the platform, and verified in the clean image
on the oldest and newest Python that image has. The upstream index is a static PEP 503 folder on
127.0.0.1 holding the build requirement (setuptools) and nothing else; every other address is cut
off (the farm's processes get proxies to a closed port), so cibuildwheel's own audit step, which
makes a venv and installs abi3audit with cibuildwheel's pins from an index, would fail the build.
The farm audits the abi3 wheel with its own abi3audit instead, offline.

Bad input covered: a wheel tagged abi3 for 3.9 that calls a function 3.9's limited API lacks is
refused by that audit (before: by cibuildwheel's, had it been able to download abi3audit).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.util.python_tags import sort_key
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import build_image_result, container_env, docker_host, verify_image_result  # noqa: F401
from tests.helpers.indexes import StaticIndex
from tests.helpers.sdists import cached_wheel, make_abi3_project, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.docker]

CLOSED = "http://127.0.0.1:9"  # nothing listens there: any download through a proxy fails at once


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
            build_image_result, verify_image_result) -> Iterator[tuple[Farm, StaticIndex]]:  # noqa: F811
    scratch = tmp_path_factory.mktemp("offline-cibw")
    upstream = StaticIndex(scratch / "upstream")
    wheel = cached_wheel("setuptools>=61,<81")
    upstream.add("setuptools", wheel.name, wheel.read_bytes())
    farm = Farm(scratch / "home", free_port())
    farm.env.update({
        **container_env(docker_host, build_image_result, verify_image_result),
        "FARM_UPSTREAM_INDEX": upstream.url,
        **{k: CLOSED for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")},
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    farm.start(timeout=240)
    yield farm, upstream
    farm.stop()
    upstream.stop()


def test_an_abi3_sdist_builds_once_offline_and_is_audited_by_the_farm(offline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm, upstream = offline
    sdist = make_sdist(make_abi3_project(tmp_path, "offabi"), tmp_path / "dist")
    res = farm.farm("submit", "--wait", "--timeout", "1500", str(sdist), timeout=1600)
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = [line for line in res.stdout.splitlines() if line.endswith(" queued") and ": queued" not in line]
    assert len(jobs) == 1, res.stdout  # abi3: one job for the platform
    (wheel,) = (farm.home / "index/files/offabi").glob("*.whl")
    assert "-cp39-abi3-manylinux" in wheel.name
    job_id = jobs[0].split()[1].rstrip(":")
    log = farm.farm("logs", job_id).stdout
    assert "Installing audit dependencies" not in log and "audit_venv" not in log, log  # cibuildwheel's audit did not run
    assert "-m abi3audit --strict" in log and "0 ABI version mismatches and 0 ABI violations" in " ".join(log.split())
    # the constraints cibuildwheel was given are the farm's: what its wheelhouse holds
    assert "CIBW_DEPENDENCY_VERSIONS=" in log and "CIBW_AUDIT_COMMAND=\n" in log
    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    assert "abi3audit" in statement["predicate"]["runDetails"]["builder"]["version"]
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    # verified on the oldest and the newest Python the farm's verification image is configured with
    # (cp27 is not offered: container_env; an abi3 wheel does not install on 2.7 anyway), and the
    # worker's own interpreter may add a newer one: the newest of all is the last
    offered = json.loads(farm.env["FARM_VERIFY_IMAGES"])["linux-x86_64"][0]["pythons"]
    image_pythons = sorted(offered, key=sort_key)
    verified = verification["annotations"].get("pythons") or []
    assert verified[0] == f"{image_pythons[0][2]}.{image_pythons[0][3:]}", verified
    assert f"{image_pythons[-1][2]}.{image_pythons[-1][3:]}" in verified, verified
    # the upstream index was asked for the build requirement only: no abi3audit, virtualenv or pip
    asked = {path.split("/")[2] for path, _ in upstream.requests if path.startswith("/simple/")}
    assert asked <= {"setuptools", "offabi"}, asked


def test_an_abi3_wheel_outside_its_limited_api_is_refused_by_the_farms_audit(offline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm, _ = offline
    sdist = make_sdist(make_abi3_project(tmp_path, "offbad", outside_limited_api=True), tmp_path / "dist")
    res = farm.farm("submit", "--wait", "--timeout", "1500", str(sdist), timeout=1600)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "tagged abi3 but abi3audit finds it uses more than the limited API" in res.stderr, res.stderr
    assert "PyUnicode_AsUTF8AndSize" in res.stderr
    assert not (farm.home / "index/files/offbad").exists()  # nothing published
