"""Python 2.7 for the sdists that still declare it (farm/worker/python2.py): offered only when a
worker's `pythons` names it, planned only for an sdist that declares it (Requires-Python or a
classifier), never the Python a release is chosen for while Python 3 targets are asked for, and no
`py3-none-any` wheel is taken to serve it.

The slow test builds a real sdist with a C extension (MarkupSafe 1.1.1, its last release for Python
2) with pyenv's CPython 2.7 and this interpreter on the embedded farm, and installs the cp27 wheel
from the farm's index with pip 20.3 (the last pip for Python 2) in a virtualenv; and a universal
wheel whose Python 3 build does not run on 2.7 (python-dateutil 2.8.2), published for Python 3 only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.config import Settings, get_settings
from farm.coordinator import workers
from farm.coordinator.plan import declares_python2, plan
from farm.messages import OfferedPython, WorkerRegistration
from farm.util.python_tags import major_of
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist
from tests.helpers.wheels import make_wheel

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
HERE = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def python27() -> Path | None:
    found = sorted(PYENV.glob("2.7.*/bin/python2.7")) if PYENV.is_dir() else []
    return found[-1] if found else None


def offer(settings: Settings, pythons: list[str]) -> None:
    workers.record(WorkerRegistration(worker="a@host", platform="linux-x86_64", engine="native", interval=20.0,
                                      sent_at=time.time(), pythons=[OfferedPython(python=p) for p in pythons]),
                   settings)


def planned(requires_python: str | None, **kw) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.python for t in plan(name="old", version="1.0", sdist_sha256="0" * 64, requires_python=requires_python,
                                   settings=get_settings(), **kw)]


def test_python2_is_planned_only_for_an_sdist_that_declares_it(farm_home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64"]))
    offer(get_settings(), ["cp27", "cp39", "cp313"])
    assert planned(None) == ["cp39", "cp313"]  # says nothing: Python 3's
    assert planned(None, python2=True) == ["cp27", "cp39", "cp313"]  # a Python 2 classifier
    assert planned(">=2.7, !=3.0.*, !=3.1.*") == ["cp27", "cp39", "cp313"]
    assert planned(">=3.6") == ["cp39", "cp313"]
    assert planned(None, only_pythons=["2.7"]) == ["cp27"]  # asked for by name
    assert planned(None, kind="pure", python2=True) == ["cp313"]  # a pure one: built once, on the newest

    project = make_project(tmp_path, "olddecl", c_extension=False)
    plain = make_sdist(project, tmp_path / "plain")
    assert not declares_python2(plain)
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(text.replace("[project]\n", '[project]\nclassifiers = '
                                                         '["Programming Language :: Python :: 2.7"]\n', 1))
    assert "Programming Language :: Python :: 2.7" in (project / "pyproject.toml").read_text()
    assert declares_python2(make_sdist(project, tmp_path / "declared"))
    assert not declares_python2(None) and not declares_python2(tmp_path / "missing.tar.gz")


def test_a_py3_wheel_does_not_serve_python2(farm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `py3-none-any` dependency does not install on 2.7, a `py2.py3-none-any` one does: the
    coordinator's cover check and a pure wheel's targets follow the tags' major versions; a pure wheel
    is for 2.7 as well only when its Requires-Python says so."""
    from farm.coordinator.deps import _covers, job_pythons
    from farm.worker.platforms.linux import LinuxPlatform
    from farm.worker.verify import targets_for

    assert (major_of("py3"), major_of("py2"), major_of("py27"), major_of("cp39"), major_of("cp314t")) == (3, 2, 2, 3, 3)
    assert major_of("any") is None
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64"]))
    settings = get_settings()
    offer(settings, ["cp27", "cp39", "cp313"])

    def provider(filename: str) -> SimpleNamespace:
        return SimpleNamespace(platform="linux-x86_64", python="cp313", staged={"wheels": [
            {"filename": filename, "sha256": "0" * 64, "storage_key": f"staging/{filename}"}]}, artifacts=[])

    py3, both = provider("dep-1.0-py3-none-any.whl"), provider("dep-1.0-py2.py3-none-any.whl")
    assert not _covers(py3, "linux-x86_64", "cp27") and _covers(py3, "linux-x86_64", "cp39")
    assert _covers(both, "linux-x86_64", "cp27")
    assert job_pythons(py3, None, settings) == ["cp39", "cp313"]
    assert job_pythons(both, ">=2.7", settings) == ["cp27", "cp39", "cp313"]
    assert job_pythons(both, None, settings) == ["cp39", "cp313"]  # a universal tag alone declares nothing

    here = Path(sys.executable)
    old = python27()
    if old is None:
        return  # the verification targets need a real 2.7 to probe
    worker = Settings(home=tmp_path / "home", pythons=[str(old), str(here)])
    x86_64 = LinuxPlatform("x86_64")
    assert [t.python for t in targets_for([make_wheel(tmp_path / "a", "dep", "1.0")], HERE, x86_64, worker)] == [
        sys.version_info[:2]]
    universal = make_wheel(tmp_path / "b", "dep", "1.0", tag="py2.py3-none-any", requires_python=">=2.7")
    assert [t.python for t in targets_for([universal], HERE, x86_64, worker)] == [(2, 7), sys.version_info[:2]]
    silent = make_wheel(tmp_path / "c", "dep", "1.0", tag="py2.py3-none-any")
    assert [t.python for t in targets_for([silent], HERE, x86_64, worker)] == [sys.version_info[:2]]


@pytest.mark.network
def test_python2_does_not_choose_the_release_for_python3(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`farm submit markupsafe` on a farm that also offers 2.7 takes the newest release for its oldest
    Python 3, not the last one that still supported 2.7; `--python 2.7` takes that one."""
    from farm.cli import main
    from farm.coordinator.submit import submit

    assert main(["init"]) == 0
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64"]))
    settings = get_settings()
    offer(settings, ["cp27", "cp39"])
    latest = submit("markupsafe<3.1", settings=settings)
    assert latest.version.startswith("3.0."), latest.version
    assert [build_id.split("-")[0] for _, build_id, _ in latest.jobs] == ["cp39"]
    old = submit("markupsafe<3.1", settings=settings, only_pythons=["2.7"])
    assert old.version == "1.1.1" and [build_id.split("-")[0] for _, build_id, _ in old.jobs] == ["cp27"]


# A real build -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def py2_farm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    old = python27()
    if old is None:
        pytest.skip("pyenv has no CPython 2.7")
    farm = Farm(tmp_path_factory.mktemp("py2") / "home", free_port())
    farm.env["FARM_PYTHONS"] = json.dumps([str(old), sys.executable])
    farm.start()
    yield farm
    farm.stop()


def py27_env(farm: Farm, where: Path) -> Path:
    """A virtualenv of pyenv's 2.7 with nothing in it (the farm's own Python 2 tools); its python."""
    from farm.worker import python2

    tools = python2.tools(farm.home, "https://pypi.org/simple/")
    return python2.make_env(SimpleNamespace(path=python27()), where, tools)  # type: ignore[arg-type]


def pip20(farm: Farm, python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    from farm.worker import python2

    tools = python2.tools(farm.home, "https://pypi.org/simple/")
    return subprocess.run([*tools.pip(python), "install", "--no-python-version-warning", "--index-url", farm.index_url,
                           *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_CONFIG_FILE": os.devnull})


def job_log(farm: Farm, name: str, python: str) -> str:
    jobs = {j["build_id"].split("-")[0]: j for j in json.loads(farm.farm("status", "--json").stdout) if j["name"] == name}
    return farm.farm("logs", str(jobs[python]["id"])).stdout


@pytest.mark.slow
@pytest.mark.network
def test_a_c_extension_is_built_for_python27_and_installed_by_pip20(py2_farm: Farm, tmp_path: Path) -> None:
    res = py2_farm.farm("submit", "--wait", "markupsafe==1.1.1")
    assert res.returncode == 0, res.stdout + res.stderr
    published = sorted(line.split()[-1] for line in res.stdout.splitlines() if "published" in line)
    assert [w.split("-")[2:4] for w in published] == [["cp27", "cp27mu"], [HERE, HERE]], published
    assert all("manylinux" in w for w in published), published  # repaired by auditwheel, as any
    log = job_log(py2_farm, "markupsafe", "cp27")
    assert "--no-build-isolation" in log and "setuptools-44" in log  # pip 20.3's build, setuptools for 2.7
    assert "bin/python2.7" in log and "virtualenv.py" in log  # the build and verify environments
    assert "verify-venv/bin/python -c 'import markupsafe'" in log and "bwrap" in log  # imported on 2.7, sandboxed

    python = py27_env(py2_farm, tmp_path / "py27")
    pip = pip20(py2_farm, python, "markupsafe")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(python), "-c", "import sys, markupsafe, markupsafe._speedups as s; sys.stdout.write("
                          "'%d.%d %s' % (sys.version_info[0], sys.version_info[1], s.escape('<a>')))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "2.7 &lt;a&gt;"  # the C extension of the cp27 wheel, on 2.7


@pytest.mark.slow
@pytest.mark.network
def test_a_universal_wheel_that_fails_on_27_is_published_for_python3(py2_farm: Farm, tmp_path: Path) -> None:
    """python-dateutil 2.8.2 declares 2.7 and builds a `py2.py3-none-any` wheel, but built on Python 3
    its generated `_version.py` carries an annotation 2.7 cannot parse. The job publishes it as
    `py3-none-any`, says why, and pip on 2.7 finds no wheel of it instead of a broken one; its
    dependency six (universal, fine on 2.7) keeps both tags."""
    res = py2_farm.farm("submit", "--wait", "python-dateutil==2.8.2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "published python_dateutil-2.8.2-py3-none-any.whl" in res.stdout, res.stdout
    import httpx

    assert re.search(r"six-[\d.]+-py2\.py3-none-any\.whl", httpx.get(py2_farm.index_url + "six/").text)  # fine on both
    log = job_log(py2_farm, "python-dateutil", HERE)
    assert "not published for Python 2.7" in log and "SyntaxError" in log, log[-3000:]

    python = py27_env(py2_farm, tmp_path / "py27")
    pip = pip20(py2_farm, python, "python-dateutil")
    assert pip.returncode != 0 and "No matching distribution found for python-dateutil" in pip.stdout + pip.stderr
    venv = tmp_path / "py3"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    got = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--index-url", py2_farm.index_url,
                          "python-dateutil"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert got.returncode == 0, got.stdout + got.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import dateutil; print(dateutil.__version__)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "2.8.2", out.stderr


def test_with_tags_keeps_a_subset_of_a_wheels_tags(tmp_path: Path) -> None:
    """The copy for Python 3 alone of a universal wheel: its name, WHEEL's Tag lines and RECORD agree,
    everything else is the same bytes; pip installs it. Bad input: a tag the wheel does not have."""
    import zipfile

    from farm.util.wheel import with_tags

    universal = make_wheel(tmp_path / "in", "uni", "1.0", tag="py2.py3-none-any")
    py3 = with_tags(universal, ["py3-none-any"], tmp_path / "out")
    assert py3.name == "uni-1.0-py3-none-any.whl"
    with zipfile.ZipFile(py3) as zf, zipfile.ZipFile(universal) as orig:
        wheel_file = zf.read("uni-1.0.dist-info/WHEEL").decode()
        assert "Tag: py3-none-any" in wheel_file and "py2" not in wheel_file
        assert zf.read("uni/__init__.py") == orig.read("uni/__init__.py")
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                          str(target), str(py3)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr  # pip checks RECORD's hashes
    with pytest.raises(ValueError, match="has none of the tags"):
        with_tags(universal, ["cp39-cp39-linux_x86_64"], tmp_path / "bad")


def test_only_python27_of_python2_is_accepted(tmp_path: Path) -> None:
    """Bad input: a `pythons` entry that is CPython 2.6 (a stand-in answering the farm's probe as one):
    a configuration error naming it, not a build that fails later. Discovery never offers Python 2."""
    from farm.errors import ConfigError
    from farm.worker.platforms._common import discover_interpreters, find_interpreters, probe_interpreter

    fake = tmp_path / "python2.6"
    fake.write_text("#!/bin/sh\necho '[\"cpython\", [2, 6], false]'\n")
    fake.chmod(0o755)
    probe_interpreter.cache_clear()
    with pytest.raises(ConfigError, match=r"CPython 2\.6: of Python 2, only 2\.7 is built"):
        find_interpreters([str(fake)], exe_names=())
    assert all(i.version[0] == 3 for i in discover_interpreters())
    old = python27()
    if old is not None:
        [interp] = find_interpreters([str(old)], exe_names=())  # the probe runs on 2.7 itself
        assert (interp.tag, interp.version) == ("cp27", (2, 7))
    probe_interpreter.cache_clear()


def test_python2_build_requirements_from_the_tree(tmp_path: Path) -> None:
    """What a Python 2 build installs first: pyproject.toml's [build-system] requires (the legacy
    backend's without one) and wheel, which setuptools' backend asks for. Bad input: a pyproject.toml
    that is no TOML, whose requires is no list of strings, or that names an installer option, fails
    the build as the package's."""
    from farm.errors import PackageFailure
    from farm.worker.python2 import build_requirements
    from farm.worker.source import SdistSource

    tree = tmp_path / "tree"
    tree.mkdir()
    source = SdistSource.unpacked(tmp_path / "unused.tar.gz", tree)
    assert build_requirements(source) == ["setuptools>=40.8.0", "wheel"]
    (tree / "pyproject.toml").write_text("[tool.black]\nline-length = 100\n")
    assert build_requirements(source) == ["setuptools>=40.8.0", "wheel"]  # no [build-system]: the legacy backend
    (tree / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools<45", "Wheel<0.38", "cython<3"]\n')
    assert build_requirements(source) == ["setuptools<45", "Wheel<0.38", "cython<3"]  # wheel named: not twice
    for text, refusal in [("[build-system\nrequires = [", "not valid TOML"),
                          ('[build-system]\nrequires = "setuptools"\n', "not a list of strings"),
                          ('[build-system]\nrequires = ["--index-url=http://127.0.0.1:9/"]\n', "not PEP 508")]:
        (tree / "pyproject.toml").write_text(text)
        with pytest.raises(PackageFailure, match=refusal):
            build_requirements(source)
