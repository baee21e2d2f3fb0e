"""Fast tests of liveness, in one process on SQLite: heartbeats, the reconciler's two rules, cancel,
stop markers, events that overtake each other, and the broker priority mapping.

Bad cases covered: a heartbeat or event of a replaced attempt (ignored / dropped), a job lost too
often (failed), a coordinator backlog or an unreachable broker (nothing judged), a queued job that
merely waits behind others (never sent again), events after a cancel (dropped, nothing published),
cancelling a job that ended (an error), a job in dep_wait that missed its provider's end (settled by the
reconciler: released, or failed with its provider).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.messages import COORDINATOR_QUEUE, Heartbeat, JobEvent, StepReport
from tests.helpers.messages import _age, _event, _sizes


@pytest.fixture
def farm(farm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An embedded farm's database and storage, build messages captured instead of sent."""
    from farm.cli import ensure_db
    from farm.coordinator import dispatch

    sent: list = []
    monkeypatch.setattr(dispatch, "send", lambda specs: sent.extend(specs))
    ensure_db()
    return sent


def _submit(tmp_path: Path, name: str = "foo", version: str = "1.0") -> int:
    from farm.config import get_settings
    from farm.coordinator.submit import submit
    from tests.helpers.sdists import sdist_members, write_tar

    sdist = tmp_path / f"{name}-{version}.tar.gz"
    if not sdist.exists():  # the same file again: the same job inputs (the cache key)
        write_tar(sdist, sdist_members(f"{name}-{version}", name, version))
    return submit(str(sdist), settings=get_settings()).jobs[0][0]


def _job(job_id: int):  # type: ignore[no-untyped-def]
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def test_heartbeats_count_for_the_current_attempt_only(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator.reconcile import record_heartbeat

    job_id = _submit(tmp_path)
    assert _job(job_id).heartbeat_at is None
    _event(job_id, "fetching", step=StepReport(name="fetching", started_at=time.time()))
    first = _job(job_id).heartbeat_at
    assert first is not None  # an event is a sign of life too
    updated = _job(job_id).updated_at
    time.sleep(0.01)
    assert record_heartbeat(Heartbeat(job_id=job_id, attempt=1, worker="w1", sent_at=time.time()))
    job = _job(job_id)
    assert job.heartbeat_at > first and job.updated_at == updated  # a heartbeat is no state change
    assert not record_heartbeat(Heartbeat(job_id=job_id, attempt=2, worker="w1", sent_at=time.time()))
    assert not record_heartbeat(Heartbeat(job_id=9999, attempt=1, worker="w1", sent_at=time.time()))


def test_a_running_job_without_heartbeat_is_sent_again_as_a_new_attempt(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.reconcile import reconcile_once
    from farm.liveness import stop_reason
    from farm.storage import get_storage

    settings = get_settings()
    job_id = _submit(tmp_path)
    farm.clear()
    _event(job_id, "fetching", step=StepReport(name="fetching", started_at=time.time()))
    _event(job_id, "building", step=StepReport(name="building", started_at=time.time()))
    _age(job_id, settings.lost_after - 5)
    assert reconcile_once(settings, sizes=_sizes()).requeued == []  # alive enough
    _age(job_id, settings.lost_after + 5)
    done = reconcile_once(settings, sizes=_sizes())
    assert done.requeued == [job_id] and done.resent == []
    job = _job(job_id)
    assert (job.state, job.attempt, job.heartbeat_at) == ("queued", 2, None)
    assert "no sign of life from w1" in job.error
    assert [(s.job_id, s.attempt, s.resume) for s in farm] == [(job_id, 2, "build")]
    storage = get_storage()
    assert stop_reason(storage, job_id, 1) and stop_reason(storage, job_id, 2) is None
    # The old attempt's worker speaks up late: dropped, the new attempt goes on.
    _event(job_id, "repairing", attempt=1)
    assert _job(job_id).state == "queued"
    _event(job_id, "fetching", attempt=2, step=StepReport(name="fetching", started_at=time.time()))
    assert _job(job_id).state == "fetching"
    assert reconcile_once(settings, sizes=_sizes()).requeued == []  # just seen


def test_a_job_lost_too_often_fails(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.reconcile import MAX_ATTEMPTS, reconcile_once

    settings = get_settings()
    job_id = _submit(tmp_path)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        _event(job_id, "fetching", attempt=attempt)
        _age(job_id, settings.lost_after + 1)
        done = reconcile_once(settings, sizes=_sizes())
        assert (done.requeued if attempt < MAX_ATTEMPTS else done.failed) == [job_id]
    job = _job(job_id)
    assert (job.state, job.failure_kind) == ("failed", "infrastructure")
    assert f"gave up after {MAX_ATTEMPTS} lost attempts" in job.error


def test_a_queued_job_is_sent_again_only_when_its_queue_is_empty(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.reconcile import reconcile_once

    settings = get_settings()
    job_id = _submit(tmp_path)
    twin = _submit(tmp_path)  # the same sdist: reuses job_id, never sent itself
    assert _job(twin).cached_from_id == job_id
    farm.clear()
    _age(job_id, settings.lost_after + 5)
    _age(twin, settings.lost_after + 5)
    platform = _job(job_id).platform
    waiting = {platform.replace("-", "_"): 3}
    empty_since: dict[str, float] = {}
    assert reconcile_once(settings, sizes=_sizes(**waiting), empty_since=empty_since).resent == []  # waits
    assert reconcile_once(settings, sizes=_sizes(), empty_since=empty_since).resent == []  # just drained:
    assert farm == []  # a worker may have taken it a moment ago
    empty_since[platform] -= 2 * settings.heartbeat_interval + settings.reconcile_interval  # quiet since
    done = reconcile_once(settings, sizes=_sizes(), empty_since=empty_since)
    assert done.resent == [job_id]
    assert (_job(job_id).attempt, [s.attempt for s in farm]) == (2, [2])
    assert reconcile_once(settings, sizes=_sizes(), empty_since=empty_since).resent == []  # just sent


def test_nothing_is_judged_with_a_backlog_or_without_the_broker(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.reconcile import BACKLOG_LIMIT, reconcile_once

    settings = get_settings()
    job_id = _submit(tmp_path)
    _event(job_id, "fetching")
    _age(job_id, settings.lost_after + 5)
    backlog = {COORDINATOR_QUEUE: BACKLOG_LIMIT + 1}
    assert "liveness is not judged" in reconcile_once(settings, sizes=_sizes(**backlog)).skipped
    unknown = reconcile_once(settings, sizes=lambda queues: dict.fromkeys(queues))
    assert unknown.skipped == "the broker cannot be asked"
    assert _job(job_id).attempt == 1


def test_cancel_ends_the_job_its_twins_and_its_waiters_and_nothing_is_published(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.lifecycle import cancel
    from farm.db.models import Artifact, Dependency
    from farm.db.session import session_scope
    from farm.errors import FarmError, NotFound
    from farm.liveness import stop_reason
    from farm.messages import ArtifactReport
    from farm.storage import get_storage

    job_id = _submit(tmp_path)
    twin = _submit(tmp_path)
    waiter = _submit(tmp_path, "bar")
    with session_scope() as s:
        s.add(Dependency(job_id=waiter, requirement="foo>=1", dep_job_id=job_id))
    _event(waiter, "fetching")
    _event(waiter, "building")
    _event(waiter, "repairing")
    _event(waiter, "verifying")
    _event(waiter, "dep_wait", missing=["foo>=1"])
    _event(job_id, "fetching")
    assert cancel(job_id, get_settings()) == f"job {job_id}: cancelled (and job {twin} reusing it)"
    assert (_job(job_id).state, _job(twin).state) == ("cancelled", "cancelled")
    assert (_job(waiter).state, _job(waiter).failure_kind) == ("failed", "dependency")
    assert "was cancelled" in _job(waiter).error
    assert stop_reason(get_storage(), job_id, 1) == "the job was cancelled"
    art = ArtifactReport(filename="foo-1.0-py3-none-any.whl", sha256="a" * 64, size=1, storage_key="k",
                         tags=["py3-none-any"], requires_python=None, requires_dist=[], provenance_key="p",
                         provenance={})
    _event(job_id, "publishing", artifacts=[art])  # the worker did not hear of it in time
    with session_scope() as s:
        assert s.query(Artifact).count() == 0
    assert _job(job_id).state == "cancelled"
    with pytest.raises(FarmError, match="already ended: cancelled"):
        cancel(job_id, get_settings())
    with pytest.raises(NotFound):
        cancel(9999, get_settings())


def test_events_that_overtake_each_other_are_applied_in_order(farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.db.states import forward_path

    assert forward_path("queued", "building") == ["fetching", "building"]
    assert forward_path("attesting", "publishing") == ["uploading", "publishing"]
    assert forward_path("queued", "verifying") == ["fetching", "verifying"]  # the resumed path
    assert forward_path("building", "fetching") == ["fetching"]  # backwards: left to the table (illegal)
    assert forward_path("fetching", "publishing") == ["publishing"]  # too far: illegal
    job_id = _submit(tmp_path)
    _event(job_id, "building", step=StepReport(name="building", started_at=time.time()))
    _event(job_id, "fetching", step=StepReport(name="fetching", started_at=time.time()))  # late: dropped
    assert _job(job_id).state == "building"


def test_broker_priority_is_reversed_on_redis_only() -> None:
    from farm.coordinator.dispatch import broker_priority

    assert [broker_priority(p, "redis://h/0") for p in (0, 5, 9, 42, -1)] == [9, 4, 0, 0, 9]
    assert [broker_priority(p, "amqp://h//") for p in (0, 5, 9, 42)] == [0, 5, 9, 9]


def test_heartbeat_thread_beats_and_stops_a_voided_attempt(tmp_path: Path) -> None:
    from farm.liveness import JobStopped, request_stop
    from farm.messages import JobSpec, SdistRef
    from farm.storage import LocalStorage
    from farm.worker.heartbeat import HeartbeatThread

    storage = LocalStorage(tmp_path)
    spec = JobSpec(job_id=7, attempt=1, name="x", version="1", sdist=SdistRef(filename="x-1.tar.gz", sha256="c" * 64,
                   size=1, storage_key="k"), platform="p", python="cp311", build_id="b", engine="native",
                   recipe_name=None, recipe_digest="d" * 64, options={}, upstream_index="u")
    beats: list[Heartbeat] = []
    reported: list[JobEvent] = []
    with HeartbeatThread(spec, worker="w", interval=0.05, storage=storage, send=beats.append) as beat:
        report = beat.guard(reported.append)
        time.sleep(0.3)
        assert len(beats) >= 3 and {(b.job_id, b.attempt, b.worker) for b in beats} == {(7, 1, "w")}
        report(JobEvent(job_id=7, attempt=1, worker="w", state="fetching",
                        step=StepReport(name="fetching", started_at=time.time())))
        request_stop(storage, 7, below=2, reason="attempt 2 replaced the older ones")
        time.sleep(0.2)
        assert beat.stop_reason == "attempt 2 replaced the older ones"
        report(JobEvent(job_id=7, attempt=1, worker="w", state="fetching",  # a step's end still goes out
                        step=StepReport(name="fetching", started_at=1.0, finished_at=2.0, outcome="ok")))
        with pytest.raises(JobStopped):  # but no new step starts
            report(JobEvent(job_id=7, attempt=1, worker="w", state="building",
                            step=StepReport(name="building", started_at=time.time())))
    assert len(reported) == 2 and not beat.is_alive()


@pytest.mark.parametrize("provider_end", ["succeeded", "failed"])
def test_a_waiter_that_missed_its_providers_end_is_settled(farm, tmp_path: Path, provider_end: str) -> None:  # type: ignore[no-untyped-def]
    """The race `deps.wait_for` leaves open: its dependency row commits just after the provider ended
    and looked for waiters. The reconciler settles the row as the provider's end would have."""
    from farm.config import get_settings
    from farm.coordinator.reconcile import reconcile_once
    from farm.db.models import Dependency, Job
    from farm.db.session import session_scope
    from farm.db.states import JobState

    provider = _submit(tmp_path)
    waiter = _submit(tmp_path, "bar")
    with session_scope() as s:
        s.add(Dependency(job_id=waiter, requirement="foo>=1", dep_job_id=provider))
    for state in ("fetching", "building", "repairing", "verifying"):
        _event(waiter, state)
    _event(waiter, "dep_wait", missing=["foo>=1"])
    assert _job(waiter).state == "dep_wait"
    with session_scope() as s:  # the provider ends without seeing the row (it was not yet committed)
        s.get(Job, provider).state = JobState(provider_end)
    settings = get_settings()
    farm.clear()
    assert reconcile_once(settings, sizes=_sizes()).settled == []  # the waiter moved just now: not judged yet
    _age(waiter, 3600)
    done = reconcile_once(settings, sizes=_sizes())
    assert done.settled == [waiter]
    if provider_end == "succeeded":
        assert _job(waiter).state == "queued"
        assert [(spec.job_id, spec.resume) for spec in farm] == [(waiter, "verify")]
    else:
        job = _job(waiter)
        assert (job.state, job.failure_kind) == ("failed", "dependency")
        assert f"job {provider} failed" in job.error and farm == []
    assert reconcile_once(settings, sizes=_sizes()).settled == []  # settled once
