"""Build requirements as of the sdist's release: a failed build is tried once more with uv's
`--exclude-newer` at the sdist's upload time (PEP 700 `upload-time` of the upstream index, else the
sdist's own PKG-INFO time), recorded in the job's log and the provenance; a recipe pins the mode.

The real case is PyYAML 6.0 (October 2021): it declares an unpinned Cython, and Cython 3 (2023)
breaks its setup.py (`AttributeError: cython_sources`). It is built for CPython 3.10: the Cython of
its date (0.29.24) predates 3.11, where PyYAML would quietly fall back to a pure-Python wheel. The farm's own pyyaml recipe pins
`cython<3` for it; here a site recipe with no such pin replaces it, as for a package nobody wrote a
recipe for.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from farm.recipes.schema import Options
from farm.util.archive import Limits
from farm.worker.build_requires import AsOf, release_time
from farm.worker.source import SdistSource
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist


def test_the_release_time_falls_back_to_the_sdists_own_time(tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path, "farmtest-as-of", c_extension=False), tmp_path / "dist")
    source = SdistSource(sdist, tmp_path / "src", Limits(10**8, 10**9, 10**5))
    # an index that does not answer (or lacks the project): the time PKG-INFO was written into the archive
    found = release_time("farmtest-as-of", "0.1.0", source, "http://127.0.0.1:9/simple/")
    assert found is not None and found.origin == "the sdist's PKG-INFO time"
    assert found.time == dt.datetime.fromtimestamp(source.timestamp, dt.UTC)
    assert AsOf(dt.datetime(2021, 10, 13, 19, 40, 57, 802867, tzinfo=dt.UTC), "x").exclude_newer == "2021-10-13T19:40:57Z"


def test_the_recipe_option_and_its_default() -> None:
    assert Options().build_requires_as_of == "auto"
    assert Options.model_validate({"build-requires-as-of": "release"}).build_requires_as_of == "release"
    with pytest.raises(ValueError):
        Options.model_validate({"build-requires-as-of": "yesterday"})


def _python(version: str) -> str | None:
    """A CPython of this version on the host (pyenv's shims only answer for the selected version)."""
    candidates = [*sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")),
                  Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    for candidate in candidates:
        if candidate.is_file() and subprocess.run([str(candidate), "-c", "pass"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


@pytest.mark.slow
@pytest.mark.network
def test_an_old_sdist_that_todays_cython_breaks_builds_with_the_requirements_of_its_date(tmp_path: Path) -> None:
    python = _python("3.10")
    if python is None:
        pytest.skip("no CPython 3.10 on this host (the Cython of PyYAML 6.0's date predates 3.11)")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    recipe = recipes / "pyyaml.toml"
    farm = Farm(tmp_path / "home", free_port())
    farm.env["FARM_RECIPES_DIRS"] = json.dumps([str(recipes)])
    farm.env["FARM_PYTHONS"] = json.dumps([python])
    farm.start()
    try:
        # pinned to today's requirements: Cython 3 fails the build, and nothing is retried
        recipe.write_text('build-requires-as-of = "today"\n')
        res = farm.farm("submit", "--wait", "--timeout", "900", "pyyaml==6.0")
        assert res.returncode != 0
        failed = farm.farm("logs", "1").stdout
        assert "cython_sources" in failed and "retry: build requirements as of" not in failed

        # no recipe of its own (an empty site recipe replaces the farm's, which pins cython<3)
        recipe.write_text("# nothing: the defaults\n")
        res = farm.farm("submit", "--wait", "--timeout", "900", "pyyaml==6.0")
        jobs = json.loads(farm.farm("status", "--json", "--limit", "50").stdout)
        job = max(jobs, key=lambda j: j["id"])
        log = farm.farm("logs", str(job["id"])).stdout
        assert res.returncode == 0, res.stdout + res.stderr + log[-4000:]
    finally:
        farm.stop()
    # PyYAML 6.0's upload time on PyPI (PEP 700)
    assert "retry: build requirements as of the release, 2021-10-13T19:40:57Z (upstream upload-time)" in log
    assert "cython_sources" in log  # the first attempt's failure stays in the log
    (wheel,) = (farm.home / "index/files/pyyaml").glob("*.whl")
    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    as_of = statement["predicate"]["buildDefinition"]["internalParameters"]["adjustments"]["buildRequiresAsOf"]
    assert as_of["time"] == "2021-10-13T19:40:57Z" and as_of["retry"] is True
    cython = next(r for r in as_of["resolved"] if r.lower().startswith("cython=="))
    assert cython.split("==")[1].startswith("0.29."), as_of["resolved"]
    assert as_of["firstFailure"].startswith("build:")


def test_what_the_retry_finds_missing_goes_on_to_the_system_packages_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build that fails first on today's backend and then, as of its release, on a missing library:
    the failure keeps what the retry found missing (farm.worker.sysdeps reads it for its round)."""
    import io
    from types import SimpleNamespace

    from farm.errors import PackageFailure
    from farm.worker import build_requires
    from farm.worker.hints import build_failure

    monkeypatch.setattr(build_requires, "_release",
                        lambda ctx: AsOf(dt.datetime(2024, 8, 22, tzinfo=dt.UTC), "upstream upload-time"))
    fresh = SimpleNamespace(fresh=lambda: fresh)
    ctx = SimpleNamespace(options=SimpleNamespace(build_requires_as_of="auto"), log=io.StringIO(), src=fresh)
    tries: list[object] = []

    def attempt(as_of: object) -> object:
        tries.append(as_of)
        if as_of is None:
            raise PackageFailure("build", "ERROR: Use build.targets instead of cmake.targets")
        raise build_failure("the build backend failed", "-- Checking for module 'libzmq'\n"
                            "--   Package 'libzmq', required by 'virtual:world', not found\n")

    with pytest.raises(PackageFailure) as caught:
        build_requires.build_as_of_release(ctx, attempt, reset=lambda: None)  # type: ignore[arg-type]
    assert len(tries) == 2 and "also tried with the build requirements as of the release" in str(caught.value)
    assert caught.value.missing == ["libzmq (pkg-config)"]  # type: ignore[attr-defined]


def test_a_failure_older_requirements_cannot_cure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure flagged `retry_as_of = False` (the farm's abi3 audit: what the source calls) is raised
    as it is, without a second build as of the release."""
    import io
    from types import SimpleNamespace

    from farm.errors import PackageFailure
    from farm.worker import build_requires

    monkeypatch.setattr(build_requires, "_release",
                        lambda ctx: AsOf(dt.datetime(2024, 8, 22, tzinfo=dt.UTC), "upstream upload-time"))
    ctx = SimpleNamespace(options=SimpleNamespace(build_requires_as_of="auto"), log=io.StringIO())
    tries: list[object] = []

    def attempt(as_of: object) -> object:
        tries.append(as_of)
        failure = PackageFailure("build", "x.whl is tagged abi3 but abi3audit finds it uses PyUnicode_AsUTF8AndSize")
        failure.retry_as_of = False  # type: ignore[attr-defined]
        raise failure

    with pytest.raises(PackageFailure, match="PyUnicode_AsUTF8AndSize"):
        build_requires.build_as_of_release(ctx, attempt, reset=lambda: None)  # type: ignore[arg-type]
    assert tries == [None]
