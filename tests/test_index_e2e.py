"""The publishing end through a real `farm up`: a built wheel is served with a signed provenance
document that `farm verify` accepts, lands in staging (and dev), is promoted to stable (and prod),
and pip installs it from each of those indexes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pypi_simple import ProjectPage

from tests.helpers.env import free_port, pip_install_from
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.network]

JSON = "application/vnd.pypi.simple.v1+json"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("index-e2e") / "home", free_port())
    f.home.mkdir(parents=True)
    f.env["FARM_CHANNEL_REQUIREMENTS"] = "{}"  # whatever this host's platform is
    assert f.farm("init").returncode == 0
    f.start()
    yield f
    f.stop()


def test_signed_promoted_installed(farm: Farm, tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path, "farmtest-signed", c_extension=False), tmp_path / "dist")
    res = farm.farm("submit", "--wait", "--timeout", "600", str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    page = httpx.get(farm.index_url + "farmtest-signed/", headers={"Accept": JSON})
    (pkg,) = ProjectPage.from_json_data(page.json(), base_url=str(page.url)).packages
    # The provenance URL is absolute, on the port `farm up` serves, and answers.
    assert pkg.provenance_url == f"{farm.url}/files/farmtest-signed/{pkg.filename}.provenance"
    doc = httpx.get(pkg.provenance_url).json()
    assert doc["attestation_bundles"][0]["attestations"][0]["dsse_envelope"]["payloadType"] == "application/vnd.in-toto+json"
    verify = farm.farm("verify", "farmtest-signed==0.1.0", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    reports = json.loads(verify.stdout)  # one per served copy: staging and dev
    assert [r["wheel"].split("(")[1].split(":")[0] for r in reports] == ["staging", "dev"]
    assert all([c["name"] for c in r["checks"]] == ["signature", "subject", "sdist", "verification", "record"]
               for r in reports)
    # staging and dev have it; stable and prod do not, until it is promoted.
    assert httpx.get(f"{farm.url}/dev/simple/farmtest-signed/").status_code == 200
    assert httpx.get(f"{farm.url}/prod/simple/farmtest-signed/").status_code == 404
    promote = farm.farm("promote", "farmtest-signed==0.1.0", "--to", "stable")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    verify = farm.farm("verify", "farmtest-signed==0.1.0", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert [r["wheel"].split("(")[1].split(":")[0] for r in json.loads(verify.stdout)] == \
        ["staging", "stable", "prod", "dev"]
    for tree in ("stable/", "prod/", "dev/"):
        pip = pip_install_from(f"{farm.url}/{tree}simple/", tmp_path / f"venv-{tree.strip('/')}", "farmtest-signed")
        assert pip.returncode == 0, pip.stdout + pip.stderr
