"""The embedded farm end to end: `farm up`, `farm submit --wait`, then pip and uv install from its index.

Real parts only: a real `farm up` (API/index, coordinator, worker processes on the server-less
broker), real sdists (a C-extension project made here, markupsafe and pyyaml from the upstream
index), real auditwheel, real pip and uv in fresh environments that ignore the host's pip setup.

Bad outcomes covered: a package that does not compile, one that needs a system header the worker
lacks (named first in the error), a package whose recipe tests fail, and a runtime dependency that
cannot be had: each ends `failed` with its reason and nothing is published.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.env import free_port, installed_and_run, installer_env, pip_install_from, uv_bin
from tests.helpers.farms import Farm
from tests.helpers.sdists import cached_sdist, make_project, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def recipes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("recipes")
    (d / "farmtest-badtests.toml").write_text(textwrap.dedent("""
        test-command = "{python} -c \\"import farmtest_badtests as m; assert m.add(1, 1) == 3, 'wrong sum'\\""
        """))
    return d


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, recipes_dir: Path) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("e2e") / "home", free_port())
    f.env["FARM_RECIPES_DIRS"] = json.dumps([str(recipes_dir)])
    f.start()
    yield f
    f.stop()


def submit_wait(farm: Farm, *requests: str) -> subprocess.CompletedProcess[str]:
    return farm.farm("submit", "--wait", "--timeout", "600", *requests)


def jobs(farm: Farm) -> list[dict]:
    return json.loads(farm.farm("status", "--json", "--limit", "200").stdout)


def test_c_extension_project_built_verified_and_installable(farm: Farm, tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path, "farmtest-cext"), tmp_path / "dist")
    res = submit_wait(farm, str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "published farmtest_cext-0.1.0-cp311-cp311-manylinux" in res.stdout

    page = httpx.get(farm.index_url + "farmtest-cext/").text
    assert "#sha256=" in page and "manylinux" in page
    assert "data-requires-python" in page

    pip = pip_install_from(farm.index_url, tmp_path / "venv", "farmtest-cext")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(tmp_path / "venv/bin/python"), "-c", "import farmtest_cext; print(farmtest_cext.add(2, 40))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "42"

    # uv with the same URL, into another fresh environment
    subprocess.run([uv_bin(), "venv", "-q", str(tmp_path / "uvenv")], check=True, env=installer_env())
    uv = subprocess.run([uv_bin(), "pip", "install", "--python", str(tmp_path / "uvenv/bin/python"), "--index-url",
                         farm.index_url, "farmtest-cext"], capture_output=True, text=True, env=installer_env())
    assert uv.returncode == 0, uv.stderr
    out = subprocess.run([str(tmp_path / "uvenv/bin/python"), "-c", "import farmtest_cext; print(farmtest_cext.add(1, 2))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "3"

    # the provenance record sits beside the wheel and names the sdist and the verification
    wheel = next((farm.home / "index/files/farmtest-cext").glob("*.whl"))
    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    from farm.util.hashing import sha256_file

    assert statement["subject"][0]["digest"]["sha256"] == sha256_file(wheel)
    ext = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert ext["source"]["digest"]["sha256"] == sha256_file(sdist)
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["imports"] == ["farmtest_cext"]
    assert "sandbox=bubblewrap network=none" in verification["annotations"]["environment"]
    isolation = statement["predicate"]["buildDefinition"]["internalParameters"]["isolation"]
    assert isolation["sandbox"]["kind"] == "bubblewrap" and isolation["network"] is False
    assert isolation["limits"]["processes"] and isolation["limits"]["memory"]

    # same inputs again: answered from the cache, nothing rebuilt
    again = farm.farm("submit", str(sdist))
    assert again.returncode == 0 and again.stdout.rstrip().endswith("succeeded"), again.stdout
    status = farm.farm("status")
    assert "reuses job" in status.stdout


def test_real_sdist_by_requirement(farm: Farm, tmp_path: Path) -> None:
    """markupsafe from the upstream index by NAME==VERSION, its sha256 checked, its C speedups built."""
    res = submit_wait(farm, "markupsafe==3.0.2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert installed_and_run(farm.index_url, tmp_path, "markupsafe==3.0.2",
                             "import markupsafe._speedups as s, markupsafe; print(markupsafe.escape('<a>'))") == "&lt;a&gt;"


def test_system_library_is_grafted(farm: Farm, tmp_path: Path) -> None:
    """pyyaml with libyaml (the recipe's system package): auditwheel must graft libyaml into the wheel."""
    res = submit_wait(farm, str(cached_sdist("pyyaml==6.0.2")))
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = next((farm.home / "index/files/pyyaml").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pyyaml.libs/libyaml") for n in names), names
    pip = pip_install_from(farm.index_url, tmp_path / "venv", "pyyaml")
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([str(tmp_path / "venv/bin/python"), "-c",
                          "import yaml; print(yaml.__with_libyaml__, yaml.load('a: [1]', Loader=yaml.CSafeLoader))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "True {'a': [1]}", out.stderr


def test_missing_dependency_is_built_first(farm: Farm, tmp_path: Path) -> None:
    """A wheel whose runtime dependency the index lacks waits while the farm builds it from its sdist."""
    sdist = make_sdist(make_project(tmp_path, "farmtest-needs-six", dependencies=["six>=1.16"]), tmp_path / "dist")
    res = submit_wait(farm, str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    assert httpx.get(farm.index_url + "six/").status_code == 200
    by_name = {j["name"]: j for j in jobs(farm)}
    assert by_name["six"]["state"] == "succeeded"
    pip = pip_install_from(farm.index_url, tmp_path / "venv", "farmtest-needs-six")
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([str(tmp_path / "venv/bin/python"), "-c", "import six, farmtest_needs_six as m; print(m.add(1, 1))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "2", out.stderr


def test_dependency_cycle_is_verified_together(farm: Farm, tmp_path: Path) -> None:
    """A needs B and B needs A: neither can be verified from the index alone. Both are built, staged,
    verified together (each with the other's wheel beside the index) and published."""
    a = make_sdist(make_project(tmp_path, "farmtest-cyc-a", c_extension=False, dependencies=["farmtest-cyc-b>=0.1"]),
                   tmp_path / "dist-a")
    b = make_sdist(make_project(tmp_path, "farmtest-cyc-b", c_extension=False, dependencies=["farmtest-cyc-a>=0.1"]),
                   tmp_path / "dist-b")
    res = submit_wait(farm, str(a), str(b))
    assert res.returncode == 0, res.stdout + res.stderr
    by_name = {j["name"]: j for j in jobs(farm)}
    assert by_name["farmtest-cyc-a"]["state"] == by_name["farmtest-cyc-b"]["state"] == "succeeded"
    log = farm.farm("logs", str(by_name["farmtest-cyc-a"]["id"])).stdout
    assert "in a dependency cycle: verified with farmtest_cyc_b-0.1.0-" in log, log[-3000:]
    assert installed_and_run(farm.index_url, tmp_path, "farmtest-cyc-a",
                             "import farmtest_cyc_a as a, farmtest_cyc_b as b; print(a.add(1, 2) + b.add(3, 4))") == "10"


def test_package_that_does_not_compile_fails_and_publishes_nothing(farm: Farm, tmp_path: Path) -> None:
    proj = make_project(tmp_path, "farmtest-broken")
    (proj / "farmtest_broken" / "_native.c").write_text("this is not C;\n")
    res = submit_wait(farm, str(make_sdist(proj, tmp_path / "dist")))
    assert res.returncode == 1
    job = next(j for j in jobs(farm) if j["name"] == "farmtest-broken")
    assert job["state"] == "failed" and job["error"].startswith("build:")
    log = farm.farm("logs", str(job["id"])).stdout
    assert "error" in log.lower() and "_native.c" in log
    assert httpx.get(farm.index_url + "farmtest-broken/").status_code == 404
    assert not (farm.home / "index/files/farmtest-broken").exists()


def test_missing_system_header_is_named_first_in_the_error(farm: Farm, tmp_path: Path) -> None:
    """A C extension that includes a header no package on the worker provides: the job's error leads
    with that header and where a recipe fixes it, ahead of the compiler's output."""
    proj = make_project(tmp_path, "farmtest-needs-lib")
    native = proj / "farmtest_needs_lib" / "_native.c"
    native.write_text("#include <farmtest_no_such_library.h>\n" + native.read_text())
    res = submit_wait(farm, str(make_sdist(proj, tmp_path / "dist")))
    assert res.returncode == 1
    job = next(j for j in jobs(farm) if j["name"] == "farmtest-needs-lib")
    first = job["error"].splitlines()[0]
    assert job["state"] == "failed" and first.startswith("build: the build output reports missing:"), job["error"]
    assert "farmtest_no_such_library.h (header)" in first and "system-packages" in first
    assert httpx.get(farm.index_url + "farmtest-needs-lib/").status_code == 404


def test_package_whose_tests_fail_is_not_published(farm: Farm, tmp_path: Path) -> None:
    res = submit_wait(farm, str(make_sdist(make_project(tmp_path, "farmtest-badtests"), tmp_path / "dist")))
    assert res.returncode == 1
    job = next(j for j in jobs(farm) if j["name"] == "farmtest-badtests")
    assert job["state"] == "failed" and job["error"].startswith("verify:")
    assert "wrong sum" in farm.farm("logs", str(job["id"])).stdout
    assert httpx.get(farm.index_url + "farmtest-badtests/").status_code == 404


def test_dependency_that_cannot_be_had_fails_with_reason(farm: Farm, tmp_path: Path) -> None:
    proj = make_project(tmp_path, "farmtest-orphan", c_extension=False,
                        dependencies=["farmtest-no-such-project-anywhere>=1"])
    res = submit_wait(farm, str(make_sdist(proj, tmp_path / "dist")))
    assert res.returncode == 1
    job = next(j for j in jobs(farm) if j["name"] == "farmtest-orphan")
    assert job["state"] == "failed"
    assert "farmtest-no-such-project-anywhere" in job["error"] and "cannot be had" in job["error"]
    assert httpx.get(farm.index_url + "farmtest-orphan/").status_code == 404
