"""Faults injected into a real distributed farm: PostgreSQL, our own redis-server, and separate
`farm coordinator` / `farm worker` processes (tests/helpers/servers.py), building real sdists.

Injected: a worker SIGKILLed in the middle of a build, the broker restarted while jobs wait in it,
the coordinator SIGKILLed and restarted while jobs run, a build message lost after the commit, 50
submissions at once to two coordinator processes, an sdist missing from storage (an infrastructure
fault: retried) next to a package that does not build (not retried), a cancel in the middle of a
build, two publishers racing for one wheel. After each: every job ends as it should, each wheel is
published once (one artifact row, one index entry with the right sha256, no orphan). The session
ends with a summary of faults, jobs, lost and duplicated.

Timing for the tests: heartbeat 1 s, reconciler every 1 s, lost after 8 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.concurrency import at_once
from tests.helpers.servers import Cluster, RedisServer, drop_database, pg_database
from tests.helpers.sdists import make_project, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.network]

PLATFORM = "linux-x86_64"
SLOW = {"farmtest-slow-a": 6, "farmtest-slow-b1": 5, "farmtest-slow-b2": 5, "farmtest-slow-c1": 6,
        "farmtest-slow-c2": 6, "farmtest-slow-e1": 6, "farmtest-slow-e2": 10, "farmtest-slow-h": 8,
        "farmtest-slow-raof1": 8, "farmtest-slow-raof2": 8, "farmtest-slow-rnoaof1": 8, "farmtest-slow-rnoaof2": 8}
SUMMARY: dict[str, Any] = {"faults": [], "jobs": 0, "lost": 0, "duplicated": 0}


class _SummaryPlugin:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not SUMMARY["faults"] and not SUMMARY["jobs"]:
            return
        tr = terminalreporter
        tr.section("faults injected into the distributed farm")
        for fault in SUMMARY["faults"]:
            tr.write_line(f"  fault: {fault}")
        tr.write_line(f"  jobs: {SUMMARY['jobs']}  lost: {SUMMARY['lost']}  duplicated: {SUMMARY['duplicated']}")


def account(cluster: Cluster, fault: str, jobs: dict[int, dict[str, Any]], expect: str = "succeeded") -> None:
    """Add one test's outcome to the summary: jobs not ending `expect` are lost; a wheel with more than one
    artifact row or index entry is duplicated."""
    arts = cluster.rows("SELECT filename, count(*) AS n FROM artifact WHERE job_id = ANY(:ids) GROUP BY filename",
                        ids=list(jobs))
    per_file = {r["filename"]: r["n"] for r in arts}
    SUMMARY["faults"].append(fault)
    SUMMARY["jobs"] += len(jobs)
    SUMMARY["lost"] += sum(1 for j in jobs.values() if j["state"] != expect)
    listed = _listed_counts(cluster)
    SUMMARY["duplicated"] += sum(n - 1 for n in per_file.values()) + sum(listed.get(f, 0) - 1 for f in per_file
                                                                           if listed.get(f, 0) > 1)


def _listed_counts(cluster: Cluster) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in (cluster.home / "index" / "simple").glob("*/index.json"):
        for f in json.loads(page.read_text())["files"]:
            counts[f["filename"]] = counts.get(f["filename"], 0) + 1
    return counts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if not request.config.pluginmanager.has_plugin("farm-fault-summary"):
        request.config.pluginmanager.register(_SummaryPlugin(), "farm-fault-summary")
    root = tmp_path_factory.mktemp("faults")
    recipes = root / "recipes"
    recipes.mkdir()
    for name, seconds in SLOW.items():
        (recipes / f"{name}.toml").write_text(f'before-build = ["sleep {seconds}"]\n')
    redis = RedisServer(root / "redis")
    redis.start()
    db_name, db_url = pg_database("farmtest_faults")
    c = Cluster(root, db_url, redis.url, settings={
        "FARM_HEARTBEAT_INTERVAL": "1", "FARM_RECONCILE_INTERVAL": "1", "FARM_LOST_AFTER": "8",
        "FARM_RECIPES_DIRS": json.dumps([str(recipes)]), "FARM_TEST_KILL_POINTS": "1"})
    c.redis = redis  # type: ignore[attr-defined]
    try:
        c.launch("coordinator", "w1", "w2")
        yield c
    finally:
        c.stop_all()
        redis.stop()
        drop_database(db_name)


@pytest.fixture(scope="module")
def in_process(cluster: Cluster) -> Iterator[None]:
    """This process as a farm client of the cluster (for submit() from threads, publish races)."""
    from farm.config import reset_settings
    from farm.coordinator.app import reset_app

    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env.items():
            if key.startswith("FARM_"):
                mp.setenv(key, value)
        reset_settings()
        reset_app()
        yield
    reset_settings()
    reset_app()


class Watcher(threading.Thread):
    """Polls the index every 0.2 s: each listed file has an artifact row at that moment (rows are
    read after the page), and a file name's sha256, on its page and in its bytes, never changes."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.problems, self.seen, self.polls = cluster, [], {}, 0
        self._done = threading.Event()

    def run(self) -> None:
        from farm.util.hashing import sha256_file

        index = self.cluster.home / "index"
        while not self._done.wait(0.2):
            try:
                pages = {p.parent.name: json.loads(p.read_text())["files"] for p in (index / "simple").glob("*/index.json")}
                rows = {r["filename"]: r["sha256"] for r in self.cluster.rows("SELECT filename, sha256 FROM artifact")}
            except Exception:  # noqa: BLE001 - the database restarting, a page being renamed: next poll
                continue
            self.polls += 1
            for project, files in pages.items():
                for f in files:
                    name, sha = f["filename"], f["hashes"]["sha256"]
                    if name not in rows:
                        self.problems.append(f"{name}: listed without an artifact row")
                    if self.seen.setdefault(name, sha) != sha:
                        self.problems.append(f"{name}: listed with sha256 {sha}, earlier {self.seen[name]}")
                    path = index / "files" / project / name
                    try:
                        digest = sha256_file(path)
                    except OSError:
                        continue
                    if digest != self.seen[name]:
                        self.problems.append(f"{name}: served bytes with sha256 {digest}, listed {self.seen[name]}")

    def stop(self) -> None:
        self._done.set()
        self.join(5)


@pytest.fixture(scope="module")
def watcher(cluster: Cluster) -> Iterator[Watcher]:
    w = Watcher(cluster)
    w.start()
    yield w
    w.stop()


@pytest.fixture(autouse=True)
def _index_watched(watcher: Watcher) -> Iterator[None]:
    before = len(watcher.problems)
    yield
    assert watcher.problems[before:] == [], watcher.problems[before:]


@pytest.fixture(autouse=True)
def _all_running(cluster: Cluster) -> None:
    """Each test starts with the coordinator and both workers up (a test may have killed one)."""
    dead = [n for n in ("coordinator", "w1", "w2") if cluster.procs[n].poll() is not None]
    if dead:
        cluster.launch(*dead)


def sdists(root: Path, names: list[str], **kw: Any) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> Path:
        return make_sdist(make_project(root / "src", name, c_extension=False, **kw), root / "dist" / name)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, names))


def submit(cluster: Cluster, *paths: Path, args: tuple[str, ...] = ()) -> list[int]:
    res = cluster.farm("submit", *args, *map(str, paths))
    assert res.returncode == 0, res.stdout + res.stderr
    return [int(m) for m in re.findall(r"^job (\d+):", res.stdout, re.MULTILINE)]


def published_once(cluster: Cluster, ids: list[int]) -> None:
    arts = cluster.rows("SELECT job_id, filename FROM artifact WHERE job_id = ANY(:ids)", ids=ids)
    assert sorted(a["job_id"] for a in arts) == sorted(ids), arts  # one wheel per job, exactly once
    # Pages are written right after the commit that ended the job (never before): give that a moment.
    deadline = time.monotonic() + 30
    while cluster.index_problems() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.index_problems() == []


def started(cluster: Cluster, job_id: int) -> float:
    """When the job's current attempt started fetching (the worker's clock)."""
    (row,) = cluster.rows("SELECT s.started_at FROM step s JOIN job j ON j.id = s.job_id "
                          "WHERE j.id = :id AND s.attempt = j.attempt AND s.name = 'fetching'", id=job_id)
    return row["started_at"].timestamp()


def test_worker_killed_mid_build_the_job_completes_elsewhere_published_once(cluster: Cluster, tmp_path: Path) -> None:
    (sd,) = sdists(tmp_path, ["farmtest-slow-a"])
    (job,) = submit(cluster, sd)
    victim = cluster.wait_state(job, {"building"}, 60)["worker"].split("@")[0]
    time.sleep(1.5)  # inside the recipe's `sleep 6`
    cluster.kill(victim)
    # Late ack: the dead worker's message is still unacknowledged in Redis (it would come back only
    # after the visibility timeout); the reconciler does not wait for that.
    assert cluster.redis.client().hlen("unacked") == 1  # type: ignore[attr-defined]
    done = cluster.wait_done([job], 120)
    account(cluster, "worker SIGKILLed in the middle of a build", done)
    j = done[job]
    assert j["state"] == "succeeded", j["error"]
    assert j["attempt"] == 2 and not j["worker"].startswith(victim + "@")  # the reconciler sent attempt 2
    published_once(cluster, [job])
    lost_steps = cluster.rows("SELECT name FROM step WHERE job_id = :id AND attempt = 1 AND outcome = 'lost'", id=job)
    assert [s["name"] for s in lost_steps] == ["building"]


def test_broker_restart_while_jobs_are_queued_loses_none(cluster: Cluster, tmp_path: Path) -> None:
    slow = sdists(tmp_path / "slow", ["farmtest-slow-b1", "farmtest-slow-b2"])
    fast = sdists(tmp_path / "fast", [f"farmtest-fast-b{i}" for i in range(4)])
    ids = submit(cluster, *slow)
    for job in ids:
        cluster.wait_state(job, {"building"}, 60)
    ids += submit(cluster, *fast)
    redis: RedisServer = cluster.redis  # type: ignore[attr-defined]
    # Prefetch 1 with late ack: the busy workers hold no further message, all four wait in Redis.
    assert redis.queue_length(PLATFORM) == 4
    redis.restart(down_for=2.0)
    assert redis.queue_length(PLATFORM) == 4  # the append-only file kept them
    done = cluster.wait_done(ids, 240)
    account(cluster, "broker (redis-server) restarted with 4 jobs queued and 2 building", done)
    assert {j["state"] for j in done.values()} == {"succeeded"}, {i: j["error"] for i, j in done.items()}
    published_once(cluster, ids)


def test_coordinator_killed_and_restarted_while_jobs_run_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    paths = sdists(tmp_path, ["farmtest-slow-c1", "farmtest-slow-c2", "farmtest-fast-c1", "farmtest-fast-c2",
                              "farmtest-fast-c3"])
    ids = submit(cluster, *paths)
    cluster.wait_state(ids[0], {"building"}, 60)
    cluster.kill("coordinator")
    time.sleep(3)  # workers go on; their events wait in Redis
    cluster.launch("coordinator")
    done = cluster.wait_done(ids, 240)
    account(cluster, "coordinator SIGKILLed and restarted with 2 jobs building and 3 queued", done)
    assert {j["state"] for j in done.values()} == {"succeeded"}, {i: j["error"] for i, j in done.items()}
    published_once(cluster, ids)


def test_a_build_message_lost_after_the_commit_is_sent_again(cluster: Cluster, tmp_path: Path, in_process: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.coordinator.submit import submit as submit_fn

    (sd,) = sdists(tmp_path, ["farmtest-lostmsg"])
    monkeypatch.setattr(dispatch, "send", lambda specs: None)  # the broker never hears of it
    job = submit_fn(str(sd), settings=get_settings()).jobs[0][0]
    monkeypatch.undo()
    done = cluster.wait_done([job], 120)
    account(cluster, "build message lost after the submission's commit", done)
    assert (done[job]["state"], done[job]["attempt"]) == ("succeeded", 2)
    published_once(cluster, [job])


def test_fifty_concurrent_submissions_two_coordinators_index_consistent(cluster: Cluster, tmp_path: Path,
                                                                         in_process: None) -> None:
    from farm.config import get_settings
    from farm.coordinator.submit import submit as submit_fn

    paths = sdists(tmp_path, [f"farmtest-many-{i:02d}" for i in range(50)])
    cluster.launch("coordinator2")  # two processes consume events and publish at once
    try:
        settings = get_settings()
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda p: submit_fn(str(p), settings=settings), paths))
        ids = [r.jobs[0][0] for r in results]
        assert len(set(ids)) == 50
        done = cluster.wait_done(ids, 900)
    finally:
        cluster.kill("coordinator2", signal.SIGTERM)
    account(cluster, "50 concurrent submissions, two coordinator processes publishing", done)
    assert {j["state"] for j in done.values()} == {"succeeded"}, {i: j["error"] for i, j in done.items()}
    published_once(cluster, ids)


def test_a_higher_priority_job_queued_later_starts_first(cluster: Cluster, tmp_path: Path) -> None:
    slow = sdists(tmp_path / "slow", ["farmtest-slow-e1", "farmtest-slow-e2"])
    low, high = sdists(tmp_path / "fast", ["farmtest-prio-low", "farmtest-prio-high"])
    ids = submit(cluster, *slow)
    for job in ids:
        cluster.wait_state(job, {"building"}, 60)
    (low_id,) = submit(cluster, low, args=("--priority", "1"))
    (high_id,) = submit(cluster, high, args=("--priority", "8"))
    assert cluster.redis.queue_length(PLATFORM) == 2  # type: ignore[attr-defined]
    done = cluster.wait_done([*ids, low_id, high_id], 180)
    account(cluster, "priorities: a priority-8 job queued after a priority-1 job", done)
    assert {j["state"] for j in done.values()} == {"succeeded"}
    assert (done[low_id]["priority"], done[high_id]["priority"]) == (1, 8)
    assert started(cluster, high_id) < started(cluster, low_id)


def test_infrastructure_fault_is_retried_package_failure_is_not(cluster: Cluster, tmp_path: Path,
                                                                in_process: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.coordinator.submit import submit as submit_fn
    from farm.storage import get_storage

    (healing,) = sdists(tmp_path / "ok", ["farmtest-retry"])
    broken = make_project(tmp_path / "bad", "farmtest-nobuild")  # a C extension that does not compile
    (broken / "farmtest_nobuild" / "_native.c").write_text("this is not C;\n")
    bad_sdist = make_sdist(broken, tmp_path / "bad" / "dist")

    held: list = []
    monkeypatch.setattr(dispatch, "send", held.extend)
    job = submit_fn(str(healing), settings=get_settings()).jobs[0][0]
    monkeypatch.undo()
    storage = get_storage()
    (spec,) = held
    sdist_file = storage.local_path(spec.sdist.storage_key)
    saved = sdist_file.read_bytes()
    sdist_file.unlink()  # storage lost the sdist: the worker's fetch fails, not the package
    dispatch.send(held)
    deadline = time.monotonic() + 60
    while "retrying after an infrastructure fault" not in (cluster.jobs([job])[job]["error"] or ""):
        assert time.monotonic() < deadline, "no retry reported"
        time.sleep(0.05)
    assert "not in storage" in cluster.jobs([job])[job]["error"]
    storage.put_bytes(spec.sdist.storage_key, saved)  # the storage recovers (for the first or a later retry)
    (bad,) = submit(cluster, bad_sdist)
    done = cluster.wait_done([job, bad], 120)
    account(cluster, "sdist missing from storage (infrastructure, retried) + a package that does not build",
            {job: done[job]})
    SUMMARY["jobs"] += 1
    SUMMARY["lost"] += done[bad]["state"] != "failed"
    assert (done[job]["state"], done[job]["attempt"]) == ("succeeded", 1)
    log = (cluster.home / "storage" / "jobs" / str(job) / "attempt-1.log").read_text()
    runs = log.count(f"job {job} attempt 1:")
    assert runs >= 2 and log.count("INFRASTRUCTURE FAULT") == runs - 1  # retried until the storage was back
    assert (done[bad]["state"], done[bad]["failure_kind"]) == ("failed", "package")
    bad_log = (cluster.home / "storage" / "jobs" / str(bad) / "attempt-1.log").read_text()
    assert bad_log.count(f"job {bad} attempt 1:") == 1 and "INFRASTRUCTURE FAULT" not in bad_log  # never retried
    assert cluster.rows("SELECT count(*) AS n FROM artifact WHERE job_id = :id", id=bad)[0]["n"] == 0
    published_once(cluster, [job])


def test_cancel_in_the_middle_of_a_build_publishes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    (sd,) = sdists(tmp_path, ["farmtest-slow-h"])
    (job,) = submit(cluster, sd)
    before = cluster.wait_state(job, {"building"}, 60)
    time.sleep(2.5)  # heartbeats every second while the build sleeps
    during = cluster.jobs([job])[job]
    assert during["state"] == "building" and during["heartbeat_at"] > before["heartbeat_at"]
    assert during["updated_at"] == before["updated_at"]  # a heartbeat is no state change
    res = cluster.farm("cancel", str(job))
    assert res.returncode == 0 and f"job {job}: cancelled" in res.stdout, res.stderr
    log = cluster.home / "storage" / "jobs" / str(job) / "attempt-1.log"
    deadline = time.monotonic() + 60
    while "STOPPED: the job was cancelled" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the worker did not stop at the next step"
        time.sleep(0.2)
    done = cluster.jobs([job])
    account(cluster, "farm cancel in the middle of a build", done, expect="cancelled")
    assert done[job]["state"] == "cancelled"
    assert cluster.rows("SELECT count(*) AS n FROM artifact WHERE job_id = :id", id=job)[0]["n"] == 0
    assert not (cluster.home / "index" / "simple" / "farmtest-slow-h").exists()
    again = cluster.farm("cancel", str(job))
    assert again.returncode != 0 and "already ended" in again.stderr


def test_two_publishers_racing_for_one_wheel_publish_it_once(cluster: Cluster, tmp_path: Path, in_process: None) -> None:
    """Two coordinators' transactions publish the same new wheel at once (as for two jobs with identical output)."""
    from farm.config import get_settings
    from farm.coordinator.publish import publish
    from farm.db.models import Job
    from farm.db.session import session_scope
    from farm.messages import ArtifactReport
    from farm.storage import get_storage
    from farm.util.hashing import sha256_file

    (sd,) = sdists(tmp_path, ["farmtest-race"])
    (first,) = submit(cluster, sd)
    assert cluster.wait_done([first], 120)[first]["state"] == "succeeded"
    # A wheel of the job's own sdist (farmtest-race 0.1.0) not published yet, made by hand: build tag 1.
    filename = "farmtest_race-0.1.0-1-py3-none-any.whl"
    wheel = tmp_path / filename
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("farmtest_race/__init__.py", "VALUE = 2\n")
        zf.writestr("farmtest_race-0.1.0.dist-info/METADATA",
                    "Metadata-Version: 2.1\nName: farmtest-race\nVersion: 0.1.0\n")
        zf.writestr("farmtest_race-0.1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\nBuild: 1\n")
        zf.writestr("farmtest_race-0.1.0.dist-info/RECORD", "")
    key = f"jobs/{first}/wheels/{filename}"
    get_storage().put_file(key, wheel)
    report = ArtifactReport(filename=filename, sha256=sha256_file(wheel), size=wheel.stat().st_size, storage_key=key,
                            tags=["py3-none-any"], requires_python=None, requires_dist=[],
                            provenance_key=key + ".provenance.json", provenance={"_type": "test"})
    barrier = threading.Barrier(2)

    def publisher(job_id: int) -> None:
        with session_scope() as session:  # its pages are written after the commit
            job = session.get(Job, job_id)
            barrier.wait()
            publish(session, job, [report], get_settings())

    _, errors = at_once(publisher, [(first,), (first,)], timeout=60, together=False)
    account(cluster, "two publishers racing for one wheel", cluster.jobs([first]))
    assert errors == []
    assert cluster.rows("SELECT count(*) AS n FROM artifact WHERE sha256 = :s", s=report.sha256)[0]["n"] == 1
    assert cluster.index_problems() == []



# Faults of issue 15: crashes inside a publish, full disks, a broker without persistence, resubmissions ----

RECOVERY: dict[str, float] = {}  # fault -> seconds from the fault's end until every job ended (docs/benchmarks.md)


def _recovered(fault: str, since: float) -> None:
    RECOVERY[fault] = round(time.monotonic() - since, 1)
    SUMMARY["faults"][-1] += f" (recovered in {RECOVERY[fault]} s)"


def _no_job_rebuilt(done: dict[int, dict[str, Any]]) -> None:
    assert {(j["state"], j["attempt"]) for j in done.values()} == {("succeeded", 1)}, \
        {i: (j["state"], j["attempt"], j["error"]) for i, j in done.items()}


@pytest.mark.parametrize("point", ["publish-file-renamed", "publish-placed", "publish-committed", "publish-listed-one"])
def test_coordinator_killed_at_each_step_of_a_publish_lists_nothing_early_and_rebuilds_nothing(
        cluster: Cluster, tmp_path: Path, point: str) -> None:
    """SIGKILL (farm.util.testing.kill_point) after the wheel is renamed into place, after all files are
    placed (not committed), after the commit (no page yet), and after the first page was written."""
    (sd,) = sdists(tmp_path, [f"farmtest-kill-{point.split('-', 1)[1]}"])
    (cluster.home / "test-kill-at").write_text(point)
    (job,) = submit(cluster, sd)
    cluster.procs["coordinator"].wait(120)  # it killed itself at the point
    killed = time.monotonic()
    assert not (cluster.home / "test-kill-at").exists()
    state = cluster.jobs([job])[job]["state"]
    assert state == ("succeeded" if point in ("publish-committed", "publish-listed-one") else "publishing"), state
    cluster.launch("coordinator")
    done = cluster.wait_done([job], 120)
    account(cluster, f"coordinator SIGKILLed at {point}", done)
    _recovered(f"coordinator SIGKILL at {point}", killed)
    _no_job_rebuilt(done)
    deadline = time.monotonic() + 60  # the restarted coordinator's doctor lists what was committed
    while cluster.index_problems() and time.monotonic() < deadline:
        time.sleep(0.5)
    published_once(cluster, [job])


@contextlib.contextmanager
def full_tmpfs(folder: Path, size: str = "64m") -> Iterator[Path]:
    """A small tmpfs (64 MiB: room for a build environment once freed) mounted at `folder` (its content
    hidden meanwhile), filled up; yields the filler to
    remove when the disk should have room again. Unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    filler = folder / ".filler"
    try:
        with open(filler, "wb", buffering=0) as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _wait_error(cluster: Cluster, job: int, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in (cluster.jobs([job])[job]["error"] or ""):
        j = cluster.jobs([job])[job]
        assert j["state"] != "failed" and time.monotonic() < deadline, (j["state"], j["error"])
        time.sleep(0.1)


def test_a_full_disk_on_the_workers_is_retried_in_place_and_never_fails_the_package(cluster: Cluster,
                                                                                   tmp_path: Path) -> None:
    (sd,) = sdists(tmp_path, ["farmtest-fullwork"])
    with full_tmpfs(cluster.home / "work") as filler:
        (job,) = submit(cluster, sd)
        _wait_error(cluster, job, "No space left on device")  # reported as an infrastructure retry
        filler.unlink()
        freed = time.monotonic()
        done = cluster.wait_done([job], 120)
    account(cluster, "a full disk under both workers' work folder", done)
    _recovered("full disk on the workers", freed)
    _no_job_rebuilt(done)
    published_once(cluster, [job])


def test_a_full_index_disk_delays_the_publish_which_the_reconciler_finishes(cluster: Cluster, tmp_path: Path) -> None:
    (sd,) = sdists(tmp_path, ["farmtest-fullindex"])
    with full_tmpfs(cluster.home / "index" / "files" / "farmtest-fullindex") as filler:
        (job,) = submit(cluster, sd)
        _wait_error(cluster, job, "publishing failed (infrastructure; tried again)")
        assert cluster.jobs([job])[job]["state"] == "publishing"  # the result is kept, not rebuilt
        filler.unlink()
        freed = time.monotonic()
        done = cluster.wait_done([job], 60)
        account(cluster, "a full index disk during a publish", done)
        _recovered("full index disk", freed)
        _no_job_rebuilt(done)
        published_once(cluster, [job])
    deadline = time.monotonic() + 60  # unmounted with the files: the reconciler's doctor places them again
    while cluster.index_problems() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster.index_problems() == []


@pytest.mark.parametrize("aof", [True, False], ids=["with-aof", "without-aof"])
def test_redis_sigkilled_with_builds_running_and_jobs_queued_loses_nothing(cluster: Cluster, tmp_path: Path,
                                                                           aof: bool) -> None:
    tag = "aof" if aof else "noaof"
    slow = sdists(tmp_path / "slow", [f"farmtest-slow-r{tag}1", f"farmtest-slow-r{tag}2"])
    fast = sdists(tmp_path / "fast", [f"farmtest-fast-r{tag}{i}" for i in range(4)])
    running = submit(cluster, *slow)
    for job in running:
        cluster.wait_state(job, {"building"}, 60)
    queued = submit(cluster, *fast)
    redis: RedisServer = cluster.redis  # type: ignore[attr-defined]
    assert redis.queue_length(PLATFORM) == 4
    redis.stop(signal.SIGKILL)
    if not aof:  # a broker without persistence: what it held is gone
        shutil.rmtree(redis.folder / "appendonlydir", ignore_errors=True)
        (redis.folder / "dump.rdb").unlink(missing_ok=True)
    redis.start()
    back = time.monotonic()
    assert redis.queue_length(PLATFORM) == (4 if aof else 0)
    done = cluster.wait_done([*running, *queued], 240)
    account(cluster, f"redis-server SIGKILLed {'with' if aof else 'without'} AOF, 2 jobs building and 4 queued", done)
    _recovered(f"redis SIGKILL {'with' if aof else 'without'} AOF", back)
    assert {j["state"] for j in done.values()} == {"succeeded"}, {i: j["error"] for i, j in done.items()}
    assert {done[j]["attempt"] for j in running} == {1}  # the running builds delivered their results
    if aof:
        assert {done[j]["attempt"] for j in queued} == {1}
    published_once(cluster, [*running, *queued])


def test_concurrent_submissions_of_new_and_of_failed_sdists(cluster: Cluster, tmp_path: Path, in_process: None) -> None:
    """20 submissions at once of one new sdist, and 20 of one that failed: one source row each, no error,
    and the new one is built and published once."""
    from farm.config import get_settings
    from farm.coordinator.submit import submit as submit_fn

    (new,) = sdists(tmp_path / "new", ["farmtest-concurrent-new"])
    broken = make_project(tmp_path / "bad", "farmtest-concurrent-bad")
    (broken / "farmtest_concurrent_bad" / "_native.c").write_text("this is not C;\n")
    bad = make_sdist(broken, tmp_path / "bad" / "dist")
    (first_bad,) = submit(cluster, bad)
    assert cluster.wait_done([first_bad], 120)[first_bad]["state"] == "failed"
    settings = get_settings()
    barrier = threading.Barrier(20)

    def one(path: Path) -> list[int]:
        barrier.wait()
        return [j[0] for j in submit_fn(str(path), settings=settings).jobs]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, [new] * 10 + [bad] * 10))  # every call raises nothing
    ids = sorted({i for r in results for i in r})
    done = cluster.wait_done(ids, 180)
    sources = cluster.rows("SELECT name, count(*) AS n FROM source WHERE name LIKE 'farmtest-concurrent-%' "
                           "OR name LIKE 'farmtest_concurrent_%' GROUP BY name")
    assert all(r["n"] == 1 for r in sources) and len(sources) == 2, sources
    new_jobs = [i for i, j in done.items() if j["source_id"] == done[results[0][0]]["source_id"]]
    account(cluster, "20 concurrent submissions: 10 of a new sdist, 10 of one that failed",
            {i: done[i] for i in new_jobs})
    arts = cluster.rows("SELECT filename, count(*) AS n FROM artifact WHERE job_id = ANY(:ids) GROUP BY filename",
                        ids=ids)
    assert [r["n"] for r in arts] == [1], arts  # the new sdist's wheel, once; the failed one published nothing
    assert all(done[i]["state"] == "succeeded" for i in new_jobs)
    assert cluster.index_problems() == []


def test_pip_installs_everything_that_succeeded(cluster: Cluster, tmp_path: Path) -> None:
    """Last: every project with a succeeded job installs from the farm's index as pip sees it."""
    names = sorted({r["name"] for r in cluster.rows(
        "SELECT DISTINCT a.name FROM artifact a JOIN job j ON j.id = a.job_id WHERE j.state = 'succeeded' "
        "AND a.removed_at IS NULL")})
    assert names
    index = (cluster.home / "index" / "simple").as_uri()
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--index-url", index,
                          "--target", str(tmp_path / "site"), *names], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    installed = {p.name.split("-")[0].lower().replace("_", "-") for p in (tmp_path / "site").glob("*.dist-info")}
    assert installed == set(names)
