"""The container path end to end: a farm whose worker builds with cibuildwheel in a Debian-made
manylinux-style image and verifies in a clean image without compilers or network.

Real parts: the private Docker engine (scripts/docker-up.sh), images made by `farm image build`'s
functions from debootstrap root file systems, the real pyyaml sdist with libyaml, `farm up`, and
pip installing the published wheel from the farm's index into a fresh environment (inside the
clean image, which has the wheel's Python; the container reaches the index on loopback).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator

import pytest

from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import build_image_result, container_env, client, docker_host, run_in, verify_image_result  # noqa: F401
from tests.helpers.sdists import cached_sdist


pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]


@pytest.fixture(scope="module")
def container_farm(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
                   build_image_result, verify_image_result) -> Iterator[Farm]:  # noqa: F811
    f = Farm(tmp_path_factory.mktemp("e2e-containers") / "home", free_port())
    f.env.update(container_env(docker_host, build_image_result, verify_image_result))
    f.start()
    yield f
    f.stop()


def test_pyyaml_through_containers(container_farm: Farm, client, verify_image_result) -> None:  # noqa: F811
    res = container_farm.farm("submit", "--wait", "--timeout", "900", str(cached_sdist("pyyaml==6.0.2")))
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = next((container_farm.home / "index/files/pyyaml").glob("*.whl"))
    assert "cp39-cp39-manylinux" in wheel.name
    assert any(n.startswith("pyyaml.libs/libyaml") for n in zipfile.ZipFile(wheel).namelist())

    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    tools = statement["predicate"]["runDetails"]["builder"]["version"]
    assert "cibuildwheel" in tools
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert any(d["name"] == "build-image" for d in deps)
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["environment"].startswith("container:")
    assert "network=none" in verification["annotations"]["environment"]

    # A fresh environment in the clean image installs it from the farm's index with plain pip.
    code, out = run_in(client, verify_image_result.tag, network="host", script=(
        "python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --index-url "
        f"{container_farm.index_url} pyyaml && cd /tmp && /tmp/v/bin/python -c "
        "'import yaml; assert yaml.__with_libyaml__; print(yaml.safe_load(\"a: 1\"))'"))
    assert code == 0 and "{'a': 1}" in out, out


def test_hostile_package_cannot_touch_the_farm_through_containers(container_farm: Farm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The hostile corpus on the container engine: the same attacks as tests/test_hostile.py (the
    key, the database, farm.toml, another project's wheel, the API, Redis, the upstream host, the
    Docker socket, nsenter, the worker's variables, a daemon, root or capabilities), from setup.py
    inside the cibuildwheel build container and from the import inside the clean verification
    container. The build runs as an unprivileged uid with CapEff 0 (root only in the root phase)."""
    import hashlib
    import subprocess
    import uuid
    from pathlib import Path

    from tests.helpers.sdists import make_project, make_sdist
    from tests.hostile import assert_blocked, hostile_project, privileges, sdist

    victim_sdist = make_sdist(make_project(tmp_path, "farmtest-cvictim", c_extension=False), tmp_path / "vdist")
    res = container_farm.farm("submit", "--wait", "--timeout", "900", str(victim_sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    victim = next((container_farm.home / "index/files/farmtest-cvictim").glob("*.whl"))
    home = container_farm.home
    key, db, config = home / "keys" / "farm.key", home / "farm.db", home / "farm.toml"
    config.write_text(config.read_text() if config.exists() else "# the farm's configuration\n")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (key, config, victim)}
    marker = f"farm-hostile-daemon-{uuid.uuid4().hex}"
    host_tmp = Path("/tmp") / f"farm-hostile-{uuid.uuid4().hex}"
    targets = {"home": str(home), "key": str(key), "db": str(db), "config": str(config),
               "victim": "farmtest-cvictim", "victim_wheel": str(victim), "api": container_farm.url,
               "redis_port": 6379, "upstream_host": "pypi.org", "docker_socket": "/var/run/docker.sock",
               "marker": marker, "host_tmp_marker": str(host_tmp)}
    res = container_farm.farm("submit", "--wait", "--timeout", "900",
                              str(sdist(hostile_project(tmp_path, "farmtest-chostile", targets), tmp_path / "dist")))
    assert res.returncode == 0, res.stdout + res.stderr
    job = next(j for j in json.loads(container_farm.farm("status", "--json", "--limit", "50").stdout)
               if j["name"] == "farmtest-chostile")
    log = container_farm.farm("logs", str(job["id"])).stdout
    assert_blocked(log)
    # Package code in the build container (after the root phase) and in verification: never root, no capability.
    seen = privileges(log)
    assert {phase for phase, _, _ in seen} == {"build", "import"}, seen
    assert all(uid != 0 and cap_eff == 0 for _, uid, cap_eff in seen), seen
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before
    assert container_farm.farm("verify", "farmtest-cvictim==0.1.0").returncode == 0
    assert not host_tmp.exists()
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip() == ""
