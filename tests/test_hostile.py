"""Hostile sdists on the embedded farm (`farm up`, native engine): package code cannot touch the farm.

A real farm builds and verifies real hostile sdists (tests/hostile/). Their setup.py (build time)
and their package's import (verification) each try every attack of tests/hostile/attacks.py and
print what happened into the job's log; the tests check that log and the farm from outside:

- the key, the database and farm.toml cannot be read, farm.toml cannot be changed;
- another project's published wheel cannot be overwritten: its sha256 is the same before and
  after, and `farm verify` still passes;
- neither the build nor the verification can reach the API, Redis, the upstream host or the
  Docker socket, nor `nsenter` back into the host's namespaces;
- no FARM_*, token or DOCKER_* variable reaches package code;
- no process is left after the job, and a daemon holding the build's output does not hold the job;
- a fork bomb, an allocation and a huge file hit the sandbox's limits (lowered by a recipe) and
  the job fails with a reason that names the limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist
from tests.hostile import (allocating_project, assert_blocked, forking_project, hostile_project, impostor_project,
                           sdist, writing_project)

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    recipes = tmp_path_factory.mktemp("hostile-recipes")
    (recipes / "farmtest-forkbomb.toml").write_text("[limits]\nprocesses = 64\n")
    (recipes / "farmtest-allocator.toml").write_text('[limits]\nmemory = "1g"\n')
    (recipes / "farmtest-bigfile.toml").write_text('[limits]\nfile-size = "16m"\n')
    f = Farm(tmp_path_factory.mktemp("hostile") / "home", free_port())
    f.env["FARM_RECIPES_DIRS"] = json.dumps([str(recipes)])
    f.home.mkdir(parents=True)
    (f.home / "farm.toml").write_text("# the farm's own configuration\nheartbeat_interval = 5.0\n")
    f.start()
    yield f
    f.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def submit(farm: Farm, sdist: Path) -> subprocess.CompletedProcess[str]:
    return farm.farm("submit", "--wait", "--timeout", "600", str(sdist))


def job_of(farm: Farm, name: str) -> dict:
    return next(j for j in json.loads(farm.farm("status", "--json", "--limit", "200").stdout) if j["name"] == name)


@pytest.fixture(scope="module")
def victim(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("victim")
    res = submit(farm, make_sdist(make_project(tmp, "farmtest-victim"), tmp / "dist"))
    assert res.returncode == 0, res.stdout + res.stderr
    return next((farm.home / "index" / "files" / "farmtest-victim").glob("*.whl"))


def test_hostile_package_cannot_touch_the_farm(farm: Farm, victim: Path, tmp_path: Path) -> None:
    """Attacks: read keys/farm.key, farm.db and farm.toml; append to farm.toml; overwrite another
    project's published wheel; yank it through the API; reach Redis, the upstream host and the
    Docker socket; nsenter out; read FARM_*/token variables; leave a daemon behind; write into the
    host's /tmp. Each from build_wheel and again from import-time code at verification."""
    home = farm.home
    key, db, config = home / "keys" / "farm.key", home / "farm.db", home / "farm.toml"
    assert key.is_file() and db.is_file() and config.is_file()
    before = {p: sha256(p) for p in (key, config, victim)}
    marker = f"farm-hostile-daemon-{uuid.uuid4().hex}"
    host_tmp = Path("/tmp") / f"farm-hostile-{uuid.uuid4().hex}"
    docker = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    targets = {"home": str(home), "key": str(key), "db": str(db), "config": str(config),
               "victim": "farmtest-victim", "victim_wheel": str(victim), "api": farm.url, "redis_port": 6379,
               "upstream_host": "pypi.org", "docker_socket": docker, "marker": marker,
               "host_tmp_marker": str(host_tmp)}
    res = submit(farm, sdist(hostile_project(tmp_path, "farmtest-hostile", targets), tmp_path / "dist"))
    assert res.returncode == 0, res.stdout + res.stderr  # it builds and verifies: the attacks just fail
    job = job_of(farm, "farmtest-hostile")
    assert_blocked(farm.farm("logs", str(job["id"])).stdout)

    assert {p: sha256(p) for p in before} == before, "the key, farm.toml or the other project's wheel changed"
    verify = farm.farm("verify", "farmtest-victim==0.1.0")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    page = httpx.get(farm.index_url + "farmtest-victim/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert not any(f.get("yanked") for f in page.json()["files"])
    assert not host_tmp.exists()
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip()
    assert left == "", f"processes left after the job: {left}"


@pytest.mark.parametrize(("make", "name", "said"), [
    (forking_project, "farmtest-forkbomb", "process limit (64 processes)"),
    (allocating_project, "farmtest-allocator", "memory limit (1g per process)"),
    (writing_project, "farmtest-bigfile", "file size limit (16m)"),
], ids=["fork", "memory", "file-size"])
def test_resource_exhaustion_fails_with_the_limit_named(farm: Farm, tmp_path: Path, make, name: str,  # type: ignore[no-untyped-def]
                                                        said: str) -> None:
    """Attacks: a fork bomb, a 3 GiB allocation and a 64 MiB file at build time, against limits a
    recipe lowered. The job fails, its reason names the limit, and nothing is published."""
    res = submit(farm, sdist(make(tmp_path, name), tmp_path / "dist"))
    assert res.returncode == 1, res.stdout + res.stderr
    job = job_of(farm, name)
    assert job["state"] == "failed" and said in job["error"], job["error"]
    assert httpx.get(farm.index_url + name + "/").status_code == 404


def test_impostor_build_cannot_publish_as_another_project(farm: Farm, victim: Path, tmp_path: Path) -> None:
    """Attack: the sdist farmtest-impostor-0.1.0.tar.gz whose pyproject names the distribution
    farmtest-victim, so that its build makes farmtest_victim-0.1.0-*.whl. The worker fails the job
    before verification (the coordinator would refuse it too); the victim's wheel is unchanged."""
    before = sha256(victim)
    proj = impostor_project(tmp_path, "farmtest-impostor", victim="farmtest-victim")
    res = submit(farm, sdist(proj, tmp_path / "dist"))
    assert res.returncode == 1, res.stdout + res.stderr
    job = job_of(farm, "farmtest-impostor")
    assert job["state"] == "failed" and "a build publishes only its own project and version" in job["error"], job
    assert sha256(victim) == before
    assert httpx.get(farm.index_url + "farmtest-impostor/").status_code == 404


@pytest.mark.parametrize("name, requirement, refusal", [
    ("farmtest-optinject", "--extra-index-url=http://127.0.0.1:9/simple", "a build requirement that is not PEP 508"),
    ("farmtest-pathinject", "farmkey @ file:///etc/shadow", "a build requirement from a local path"),
])
def test_build_requirements_that_are_installer_options_are_refused(farm: Farm, tmp_path: Path, name: str,
                                                                   requirement: str, refusal: str) -> None:
    """Attack: a pyproject.toml whose [build-system] requires holds an installer option (another index,
    for the farm to take wheels from) or a local path on the worker host: the farm installs build
    requirements itself, on the host, so they would be arguments of uv there. The job fails as the
    package's, naming the line; nothing is published."""
    proj = writing_project(tmp_path, name, mib=1)
    pyproject = proj / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('requires = ["setuptools>=61"]',
                                                       f'requires = ["setuptools>=61", {json.dumps(requirement)}]'))
    assert requirement in pyproject.read_text()
    res = submit(farm, sdist(proj, tmp_path / "dist"))
    assert res.returncode == 1, res.stdout + res.stderr
    job = job_of(farm, name)
    assert job["state"] == "failed" and refusal in job["error"] and requirement in job["error"], job
    assert httpx.get(farm.index_url + name + "/").status_code == 404
