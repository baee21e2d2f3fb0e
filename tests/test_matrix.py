"""The build matrix: Pythons learned from the workers' registrations, one job per (platform, Python)
that Requires-Python admits, a pure-Python sdist built once, and a reason for jobs nobody serves.

The slow tests build real sdists with the embedded farm for several of this machine's CPythons
(pyenv's 3.9, 3.11 and 3.13) and install what it published with each of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from farm.config import get_settings
from farm.errors import ConfigError
from farm.coordinator import workers
from farm.coordinator.plan import plan, sdist_kind
from farm.messages import OfferedPython, WorkerRegistration
from farm.worker.heartbeat import RegistrationThread
from tests.helpers.env import free_port, installer_env
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
MATRIX = ("3.9", "3.11", "3.13")


def pyenv_python(version: str) -> Path | None:
    found = sorted(PYENV.glob(f"{version}.*/bin/python3")) if PYENV.is_dir() else []
    return found[-1] if found else None


def reg(worker: str, platform: str, pythons: list[str], *, leaving: bool = False) -> WorkerRegistration:
    return WorkerRegistration(worker=worker, platform=platform, engine="native", interval=20.0, sent_at=time.time(),
                              pythons=[OfferedPython(python=p) for p in pythons], leaving=leaving)


def plan_for(requires_python: str | None = ">=3.8", **kw) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    targets = plan(name="demo", version="1.0", sdist_sha256="0" * 64, requires_python=requires_python,
                   settings=get_settings(), **kw)
    return [(t.platform, t.python, t.unserved) for t in targets]


def test_the_matrix_comes_from_the_workers_registrations(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64", "linux-aarch64"]))
    settings = get_settings()
    workers.record(reg("a@host", "linux-x86_64", ["cp39", "cp313"]), settings)
    workers.record(reg("b@host", "linux-x86_64", ["cp311"]), settings)
    workers.record(reg("c@arm", "linux-aarch64", ["cp312"]), settings)
    assert plan_for() == [("linux-x86_64", "cp39", None), ("linux-x86_64", "cp311", None),
                          ("linux-x86_64", "cp313", None), ("linux-aarch64", "cp312", None)]
    assert plan_for(">=3.10") == [("linux-x86_64", "cp311", None), ("linux-x86_64", "cp313", None),
                                  ("linux-aarch64", "cp312", None)]
    # --python / --platform select a subset; a pair nobody offers is planned with its reason
    assert plan_for(only_pythons=["3.13"], only_platforms=["linux-x86_64"]) == [("linux-x86_64", "cp313", None)]
    ((platform, python, why),) = plan_for(only_pythons=["3.12"], only_platforms=["linux-x86_64"])
    assert (platform, python) == ("linux-x86_64", "cp312")
    assert why is not None and "no live worker of linux-x86_64 builds for cp312" in why and "cp39, cp311, cp313" in why
    # pure: one job in all, the newest Python; abi3: one per platform, the oldest
    assert plan_for(kind="pure") == [("linux-x86_64", "cp313", None)]
    assert plan_for(kind="abi3") == [("linux-x86_64", "cp39", None), ("linux-aarch64", "cp312", None)]
    # the aarch64 worker leaves: its offer stays on record for planning, with the reason
    workers.record(reg("c@arm", "linux-aarch64", [], leaving=True), settings)
    ((_, python, why),) = plan_for(only_platforms=["linux-aarch64"])
    assert python == "cp312" and why is not None and why.startswith("no live worker serves linux-aarch64")
    assert "c@arm, left" in why
    # a worker that stopped registering is gone after three intervals
    later = workers.Workers(settings, now=time.time() + 61)
    assert later.unserved("linux-x86_64", "cp39") is not None and later.live() == []


def test_a_free_threaded_python_is_a_target_of_its_own(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cp314t (PEP 703) is planned beside cp314 with its own build identifier; an abi3 sdist, whose wheel
    does not install on a free-threaded build, gets a job for it besides the oldest GIL build; a pure one
    is built on a GIL build."""
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64"]))
    settings = get_settings()
    workers.record(reg("a@host", "linux-x86_64", ["cp314t", "cp39", "cp314", "cp313"]), settings)
    assert [p for _, p, _ in plan_for()] == ["cp39", "cp313", "cp314", "cp314t"]
    assert [p for _, p, _ in plan_for(">=3.14")] == ["cp314", "cp314t"]
    assert [p for _, p, _ in plan_for(kind="abi3")] == ["cp39", "cp314t"]
    assert [p for _, p, _ in plan_for(kind="pure")] == ["cp314"]
    assert [p for _, p, _ in plan_for(only_pythons=["3.14t"])] == ["cp314t"]
    assert [p for _, p, _ in plan_for(only_pythons=["3.14"])] == ["cp314"]
    ids = [t.build_id for t in plan(name="demo", version="1.0", sdist_sha256="0" * 64, requires_python=None,
                                    settings=settings)]
    assert ids[-1] == "cp314t-manylinux_x86_64"
    with pytest.raises(ConfigError, match="no Python version"):
        plan_for(only_pythons=["3.14x"])


def test_a_platform_no_worker_ever_served_says_so(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64", "macos-arm64"]))
    rows = plan_for(only_platforms=["macos-arm64"])
    assert rows and all(why and "no live worker serves macos-arm64" in why and "farm worker --platform macos-arm64"
                        in why for _, _, why in rows)
    # this host's platform before any worker registered: the local worker of `farm up` is assumed
    assert all(why is None for _, _, why in plan_for(only_platforms=["linux-x86_64"]))


def test_a_worker_registers_at_start_again_and_leaving(farm_home: Path) -> None:
    sent: list[WorkerRegistration] = []
    thread = RegistrationThread(["linux-x86_64"], worker="w@h", settings=get_settings(), send=sent.append)
    thread.interval = 0.05
    thread.start()
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    thread.stop(leaving=True)
    assert len(sent) >= 3 and sent[-1].leaving and not sent[-1].pythons
    import sys

    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert [p.python for p in sent[0].pythons] == [here]  # FARM_PYTHONS: this interpreter only (conftest)
    assert sent[0].platform == "linux-x86_64" and sent[0].worker == "w@h"


def test_sdist_kind_is_read_from_the_archive(tmp_path: Path) -> None:
    pure = make_sdist(make_project(tmp_path / "p", "puredemo", c_extension=False), tmp_path / "out-p")
    native = make_sdist(make_project(tmp_path / "c", "cdemo"), tmp_path / "out-c")
    abi3 = make_project(tmp_path / "a", "abidemo")
    (abi3 / "setup.cfg").write_text("[bdist_wheel]\npy_limited_api = cp39\n")
    abi3_sdist = make_sdist(abi3, tmp_path / "out-a")
    assert (sdist_kind(pure), sdist_kind(native), sdist_kind(abi3_sdist)) == ("pure", "platform", "abi3")
    assert sdist_kind(None) == "platform"


# Real builds ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_farm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pythons = [pyenv_python(v) for v in MATRIX]
    if not all(pythons):
        pytest.skip(f"pyenv lacks one of CPython {', '.join(MATRIX)}")
    farm = Farm(tmp_path_factory.mktemp("matrix") / "home", free_port())
    farm.env["FARM_PYTHONS"] = json.dumps([str(p) for p in pythons])
    farm.env["FARM_WORKER_JOBS"] = "2"  # the local worker runs two jobs at once (`farm worker --jobs`)
    farm.start()
    deadline = time.monotonic() + 180
    while len(list((farm.home / "storage" / "workers").glob("*.json"))) < 2:  # both registered: both take jobs
        assert time.monotonic() < deadline, "the local worker's two processes did not register in 180 s"
        time.sleep(0.2)
    yield farm
    farm.stop()


def installed(python: Path, index_url: str, venv: Path, requirement: str, code: str) -> str:
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--index-url", index_url, requirement],
                         env=installer_env(), capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=venv)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.slow
def test_a_c_extension_is_built_for_every_python_the_worker_offers(matrix_farm: Farm, tmp_path: Path) -> None:
    project = make_project(tmp_path, "matrixc")
    # pyenv's 3.9 links extensions --as-needed: this one would then need no libc at all, and auditwheel
    # (the repair step) refuses a module whose libc it cannot tell. Real extensions call into libc.
    setup = project / "setup.py"
    setup.write_text(setup.read_text().replace('["matrixc/_native.c"])',
                                               '["matrixc/_native.c"], extra_link_args=["-Wl,--no-as-needed", "-lc"])'))
    sdist = make_sdist(project, tmp_path / "dist")
    res = matrix_farm.farm("submit", "--wait", str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    built = sorted(line.split()[-1] for line in res.stdout.splitlines() if "published" in line)
    assert [w.split("-")[2] for w in built] == ["cp311", "cp313", "cp39"], built
    # the worker's two processes registered what they offer, and the coordinator recorded it
    records = [json.loads(p.read_text()) for p in (matrix_farm.home / "storage" / "workers").glob("*.json")]
    assert len(records) == 2, records
    for record in records:
        assert sorted(record["pythons"]) == ["cp311", "cp313", "cp39"] and record["platform"] == "linux-x86_64"
    # ... and ran the Pythons in parallel: each took a job as soon as the three were queued
    ids = [job["id"] for job in json.loads(matrix_farm.farm("status", "--json").stdout) if job["name"] == "matrixc"]
    ran_on = {matrix_farm.farm("logs", str(i)).stdout.splitlines()[0].rsplit(" on ", 1)[1] for i in ids}
    assert len(ids) == 3 and len(ran_on) == 2, ran_on
    for version in MATRIX:
        python = pyenv_python(version)
        assert python is not None
        out = installed(python, matrix_farm.index_url, tmp_path / f"venv{version}", "matrixc",
                        "import sys, matrixc; print(sys.version_info[:2], matrixc.add(2, 3))")
        assert out == f"({version.replace('.', ', ')}) 5"


@pytest.mark.slow
def test_a_pure_sdist_is_built_once_and_installs_on_the_oldest_and_newest(matrix_farm: Farm, tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path, "matrixpure", c_extension=False), tmp_path / "dist")
    res = matrix_farm.farm("submit", "--wait", str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = [line for line in res.stdout.splitlines() if line.endswith(" queued") and ": queued" not in line]
    assert len(jobs) == 1 and "cp313" in jobs[0], res.stdout
    published = [line.split()[-1] for line in res.stdout.splitlines() if "published" in line]
    assert published == ["matrixpure-0.1.0-py3-none-any.whl"]
    job_id = jobs[0].split()[1].rstrip(":")
    log = matrix_farm.farm("logs", job_id).stdout
    assert "for Python 3.9" in log and "for Python 3.13" in log  # verified on the oldest and the newest
    for version in ("3.9", "3.13"):
        python = pyenv_python(version)
        assert python is not None
        assert installed(python, matrix_farm.index_url, tmp_path / f"venv{version}", "matrixpure",
                         "import matrixpure; print(matrixpure.add(2, 3))") == "5"


@pytest.mark.slow
def test_a_platform_no_worker_serves_is_no_silent_queue(matrix_farm: Farm, tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path, "matrixaarch"), tmp_path / "dist")
    res = matrix_farm.farm("submit", "--platform", "linux-aarch64", "--python", "3.11", str(sdist))
    assert res.returncode == 0, res.stderr
    assert "warning: cp311-manylinux_aarch64: no live worker serves linux-aarch64" in res.stderr


def test_an_abi3_dependency_does_not_serve_a_free_threaded_python(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An abi3 wheel installs on every newer GIL build but on no free-threaded one (PEP 703): a cp314t
    job's dependency on it needs its own build; a pure wheel serves cp314t."""
    from types import SimpleNamespace

    from farm.coordinator.deps import _covers, job_pythons

    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64"]))
    settings = get_settings()
    workers.record(reg("a@host", "linux-x86_64", ["cp39", "cp314", "cp314t"]), settings)

    def provider(filename: str) -> SimpleNamespace:
        return SimpleNamespace(platform="linux-x86_64", python="cp39", staged={"wheels": [
            {"filename": filename, "sha256": "0" * 64, "storage_key": f"staging/{filename}"}]}, artifacts=[])

    abi3 = provider("dep-1.0-cp39-abi3-manylinux_2_17_x86_64.whl")
    pure = provider("dep-1.0-py3-none-any.whl")
    assert _covers(abi3, "linux-x86_64", "cp314") and not _covers(abi3, "linux-x86_64", "cp314t")
    assert _covers(pure, "linux-x86_64", "cp314t")
    assert job_pythons(abi3, None, settings) == ["cp39", "cp314"]  # its requirements: not for cp314t
    assert job_pythons(pure, None, settings) == ["cp39", "cp314", "cp314t"]


def test_abi3_and_pure_wheels_are_verified_on_gil_builds_only(tmp_path: Path) -> None:
    """A worker verifies an abi3 wheel on the oldest and newest GIL build at or above its floor, and a
    pure one within its Requires-Python, never on cp314t (abi3 does not install there, PEP 703); a
    container verification of a cp314t wheel asks the image for the free-threaded build's folder."""
    from types import SimpleNamespace

    from farm.config import ImageConfig, Settings
    from farm.worker.platforms.linux import LinuxPlatform
    from farm.worker.verify import targets_for
    from farm.worker.verify_container import _probe
    from tests.helpers.wheels import make_wheel

    # linux-aarch64 on this x86_64 host: verified in images only, so the host's own Pythons do not count
    offered = ["cp314t", "cp39", "cp313", "cp311", "cp314"]
    settings = Settings(home=tmp_path / "home", verify_images={
        "linux-aarch64": [ImageConfig(image="arm64-verify", pythons=offered)]})
    aarch64 = LinuxPlatform("aarch64")

    def verified_on(wheel: Path) -> list[str]:
        return [f"cp{t.python[0]}{t.python[1]}" for t in targets_for([wheel], "cp311", aarch64, settings)]

    abi3 = make_wheel(tmp_path / "a", "demo", "1.0", tag="cp311-abi3-manylinux_2_17_aarch64")
    assert verified_on(abi3) == ["cp311", "cp314"]
    assert verified_on(make_wheel(tmp_path / "p", "demo", "1.0")) == ["cp39", "cp314"]
    assert verified_on(make_wheel(tmp_path / "q", "demo", "1.0", requires_python="<3.14")) == ["cp39", "cp313"]

    asked: list[str] = []

    def call(argv: list[str], **_: object) -> SimpleNamespace:
        asked.append(argv[-1])
        return SimpleNamespace(output="/opt/python/x/bin/python\n")

    box = SimpleNamespace(call=call)
    for wheel, folder in [("demo-1.0-cp314-cp314t-manylinux_2_17_x86_64.whl", "cp314-cp314t"),
                          ("demo-1.0-cp314-cp314-manylinux_2_17_x86_64.whl", "cp314-cp314"),
                          ("demo-1.0-cp39-abi3-manylinux_2_17_x86_64.whl", "cp39-cp39")]:
        assert _probe(box, Path(wheel), None)[0] == "/opt/python/x/bin/python"  # type: ignore[arg-type]
        assert set(re.findall(r"/opt/python/([^/]+)/", asked[-1])) == {folder}
    _probe(box, Path("demo-1.0-py3-none-any.whl"), None)  # type: ignore[arg-type]
    assert "/opt/python/" not in asked[-1]  # a pure wheel: the image's python3


def test_a_worker_host_runs_a_job_per_core_as_far_as_its_memory_holds() -> None:
    """`worker_jobs` 0 (the default): a job per core, never more than the memory holds at `build_memory`
    each. Bad input: a `build_memory` that is no size is not held against the count."""
    from farm.cli.processes import _bytes, default_jobs

    gib = 1024 ** 3
    assert default_jobs(cores=2, memory=24 * gib, build_memory="4g") == 2
    assert default_jobs(cores=16, memory=24 * gib, build_memory="4g") == 6  # the memory decides
    assert default_jobs(cores=2, memory=2 * gib, build_memory="4g") == 1  # at least one
    assert default_jobs(cores=2, memory=None, build_memory="4g") == 2  # memory unknown (Windows)
    assert default_jobs(cores=2, memory=24 * gib, build_memory="lots") == 2
    assert _bytes("4g") == 4 * gib and _bytes("512m") == 512 * 1024 ** 2 and _bytes("1.5G") == int(1.5 * gib)
    assert _bytes("100") == 100 and _bytes("") is None and _bytes("g") is None
