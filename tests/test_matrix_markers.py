"""Markers for the target: every requirement's marker is evaluated in the marker environment of the
Python and platform it is for (known before any build), not in the farm's own interpreter's.

Real builds through the embedded farm (`farm up`) with pyenv's CPython 3.9 and 3.11, from an
upstream index on 127.0.0.1 that holds only the sdists written here and setuptools (their build
requirement). `mxdep` is a C extension whose 0.1.0 admits Python 3.9 and whose 0.2.0 needs 3.11;
`mxtop` is pure Python and needs `mxdep; python_version < "3.11"`. Bad inputs covered: a pure wheel
whose dependency applies only to the oldest Python it is verified on (before: built for the newest,
so the wheel never verified), a range whose newest release excludes the Python that needs it
(before: chosen for the farm's own 3.11, so the 3.9 target had no release), a marker that holds for
no target of the farm (refused, nothing recorded).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.markers import Marker

from farm.config import get_settings
from farm.coordinator import workers
from farm.coordinator.deps import needed_for
from farm.coordinator.plan import plan, target_pythons
from farm.messages import OfferedPython, WorkerRegistration

from tests.helpers.env import free_port, installer_env
from tests.helpers.farms import Farm
from tests.helpers.indexes import StaticIndex
from tests.helpers.sdists import cached_wheel, make_project, make_sdist

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
NEEDS = "mxdep; python_version < '3.11'"


def pyenv_python(version: str) -> Path | None:
    found = sorted(PYENV.glob(f"{version}.*/bin/python3")) if PYENV.is_dir() else []
    return found[-1] if found else None


@pytest.fixture(scope="module")
def marker_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Farm, Path]]:
    pythons = [pyenv_python(v) for v in ("3.9", "3.11")]
    if not all(pythons):
        pytest.skip("pyenv lacks CPython 3.9 or 3.11")
    scratch = tmp_path_factory.mktemp("markers")
    upstream = StaticIndex(scratch / "upstream")
    wheel = cached_wheel("setuptools>=61,<81")
    upstream.add("setuptools", wheel.name, wheel.read_bytes())
    for version, requires in (("0.1.0", ">=3.8"), ("0.2.0", ">=3.11")):
        project = make_project(scratch / f"dep-{version}", "mxdep", version=version)
        toml = project / "pyproject.toml"
        toml.write_text(toml.read_text().replace('requires-python = ">=3.8"', f'requires-python = "{requires}"'))
        sdist = make_sdist(project, scratch / f"dist-{version}")
        upstream.add("mxdep", sdist.name, sdist.read_bytes(), requires_python=requires)
    farm = Farm(scratch / "home", free_port())
    farm.env["FARM_PYTHONS"] = json.dumps([str(p) for p in pythons])
    farm.env["FARM_UPSTREAM_INDEX"] = upstream.url
    farm.start(timeout=240)  # three processes importing the farm on a busy 2-core machine
    yield farm, scratch
    farm.stop()
    upstream.stop()


def test_markers_are_evaluated_in_each_targets_environment(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No build: the planner and the dependency resolver read markers for the target, from the
    workers' registrations; the interpreter running this test (3.11) plays no part."""
    import time

    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64", "linux-aarch64"]))
    settings = get_settings()
    for worker, platform, pythons in (("x", "linux-x86_64", ["cp39", "cp310", "cp311", "cp313"]),
                                      ("a", "linux-aarch64", ["cp39", "cp312"])):
        workers.record(WorkerRegistration(worker=worker, platform=platform, engine="native", interval=20.0,
                                          sent_at=time.time(), pythons=[OfferedPython(python=p) for p in pythons]),
                       settings)
    below = Marker("python_version < '3.11'")
    assert target_pythons(settings, marker=below) == ["cp39", "cp310"]
    assert target_pythons(settings, marker=Marker("platform_machine == 'aarch64'")) == ["cp39", "cp312"]
    assert target_pythons(settings, marker=Marker("sys_platform == 'win32'")) == []  # no Windows target
    assert target_pythons(settings, marker=below, only_pythons=["3.12"]) == []
    targets = plan(name="demo", version="1.0", sdist_sha256="0" * 64, requires_python=">=3.8", settings=settings,
                   marker=Marker("python_version < '3.11' and platform_machine == 'x86_64'"))
    assert [(t.platform, t.python) for t in targets] == [("linux-x86_64", "cp39"), ("linux-x86_64", "cp310")]
    assert needed_for("foo; python_version < '3.11'", "linux-x86_64", ["cp39", "cp311", "cp313"]) == ["cp39"]
    assert needed_for("foo>=1", "linux-x86_64", ["cp39", "cp311"]) == ["cp39", "cp311"]
    assert needed_for("foo; platform_machine == 'x86_64'", "linux-aarch64", ["cp39", "cp312"]) == []
    assert needed_for("foo; python_version >= '3.12'", "linux-aarch64", ["cp39", "cp312"]) == ["cp312"]


def jobs_of(farm: Farm, name: str) -> list[dict]:  # type: ignore[type-arg]
    res = farm.farm("status", "--json", "--limit", "1000")
    assert res.returncode == 0, res.stderr
    return [v for v in json.loads(res.stdout) if v["name"] == name]


def installed(python: Path, index_url: str, venv: Path, requirement: str) -> list[str]:
    """What `pip install requirement` from the farm's index puts into a fresh venv of `python`."""
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--index-url", index_url, requirement],
                         env=installer_env(), capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True)
    return sorted(f"{p['name']}=={p['version']}" for p in json.loads(listed.stdout) if p["name"].startswith("mx"))


@pytest.mark.slow
def test_a_dependency_under_a_marker_is_built_first_for_the_python_that_needs_it(marker_farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    farm, _ = marker_farm
    sdist = make_sdist(make_project(tmp_path, "mxtop", c_extension=False, dependencies=[NEEDS]), tmp_path / "dist")
    res = farm.farm("submit", "--wait", str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    (top,) = jobs_of(farm, "mxtop")  # pure: one job, built with the newest Python, verified on 3.9 and 3.11
    assert top["build_id"].startswith("cp311") and top["state"] == "succeeded"
    deps = jobs_of(farm, "mxdep")
    # the dependency applies to 3.9 only: built for cp39 (its release for 3.9, 0.1.0), for no other Python
    assert [(d["build_id"].split("-")[0], d["version"], d["state"]) for d in deps] == [("cp39", "0.1.0", "succeeded")]
    assert top["dependency_jobs"] == [deps[0]["id"]]
    log = farm.farm("logs", str(top["id"])).stdout
    assert "for Python 3.9" in log and "for Python 3.11" in log
    py39, py311 = pyenv_python("3.9"), pyenv_python("3.11")
    assert py39 is not None and py311 is not None
    assert installed(py39, farm.index_url, tmp_path / "v39", "mxtop") == ["mxdep==0.1.0", "mxtop==0.1.0"]
    assert installed(py311, farm.index_url, tmp_path / "v311", "mxtop") == ["mxtop==0.1.0"]


@pytest.mark.slow
def test_a_requirement_is_resolved_and_planned_for_the_targets_its_marker_holds_for(marker_farm) -> None:  # type: ignore[no-untyped-def]
    farm, _ = marker_farm
    # the newest mxdep (0.2.0) needs 3.11, which this marker excludes: the release is chosen for 3.9
    res = farm.farm("submit", NEEDS)
    assert res.returncode == 0, res.stderr
    planned = [line.split()[3:5] for line in res.stdout.splitlines() if line.startswith("job ")]
    assert planned and all(v == "0.1.0" and b.startswith("cp39-") for v, b in planned), res.stdout
    # without a marker: each target gets the release it admits; --python 3.11 takes 0.2.0
    res = farm.farm("submit", "--python", "3.11", "mxdep")
    assert res.returncode == 0, res.stderr
    assert "mxdep 0.2.0 cp311-" in res.stdout, res.stdout
    # a marker that holds for no target: refused before anything is recorded
    before = [v["id"] for v in jobs_of(farm, "mxdep")]
    res = farm.farm("submit", "mxdep; python_version < '3.8'")
    assert res.returncode != 0 and "its marker holds for none of this farm's targets" in res.stderr, res.stderr
    assert [v["id"] for v in jobs_of(farm, "mxdep")] == before
