"""Publishing never lists a file before its row is committed, and a publish that fails on the
infrastructure is finished from the recorded result, never built again.

On an embedded farm (SQLite, local storage): a publish whose transaction rolls back leaves its files
unlisted (the doctor removes them); a publish committed whose page write failed is listed by the
doctor; a `publishing` event whose publish hits a full index disk leaves the job in `publishing`
with its result, and `finish_publish` (the reconciler) completes it; a failed job's files leave
every page and folder; a finished job's stop marker makes a redelivered build message a no-op; and
after a broker restart queued jobs whose queue came back empty are sent again in the same pass.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from farm.cli import main
from farm.db.session import session_scope
from farm.index import doctor, simple
from tests.helpers.farms import prepare_job
from tests.helpers.wheels import make_wheel


@pytest.fixture
def settings(farm_home: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator import dispatch

    monkeypatch.setattr(dispatch, "send", lambda specs: None)
    assert main(["init"]) == 0
    return get_settings()


def _listed(settings, project: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.filename for f in simple.read_project(settings.index, project)]


def _job_state(job_id: int) -> tuple[str, str | None, dict]:
    from farm.db.models import Job

    with session_scope() as s:
        job = s.get(Job, job_id)
        return str(job.state), job.error, dict(job.staged)


def _to_uploading(job_id: int) -> None:
    from farm.db.models import Job
    from farm.db.states import JobState

    with session_scope() as s:
        job = s.get(Job, job_id)
        job.state = JobState.UPLOADING


def test_nothing_is_listed_before_the_commit_and_a_rollback_leaves_only_unlisted_files(
        settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator.publish import publish
    from farm.db.models import Artifact, Job

    wheel = make_wheel(tmp_path, "order-a", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    seen_inside: list[list[str]] = []
    with pytest.raises(RuntimeError, match="crash"):
        with session_scope() as session:
            publish(session, session.get(Job, job_id), [report], settings)
            seen_inside.append(_listed(settings, "order-a"))  # rows inserted, files placed: not listed
            assert (settings.index / "files" / "order-a" / wheel.name).is_file()
            raise RuntimeError("crash before the commit")
    assert seen_inside == [[]]
    assert _listed(settings, "order-a") == []
    with session_scope() as s:
        assert s.query(Artifact).count() == 0
        found = doctor.examine(s, settings, fix=True, grace=0)
    assert {f.kind for f in found} == {"orphan-file"}
    assert not (settings.index / "files" / "order-a" / wheel.name).exists()


def test_a_commit_whose_pages_were_not_written_is_listed_by_the_doctor(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator import publish as publish_mod
    from farm.db.models import Job

    wheel = make_wheel(tmp_path, "order-b", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    monkeypatch.setattr(publish_mod, "list_published", lambda settings, projects: None)  # died after the commit
    with session_scope() as session:
        publish_mod.publish(session, session.get(Job, job_id), [report], settings)
    assert _listed(settings, "order-b") == []
    monkeypatch.undo()
    with session_scope() as s:
        found = doctor.examine(s, settings, fix=True, grace=0)
    assert "missing-listing" in {f.kind for f in found}
    assert _listed(settings, "order-b") == [wheel.name]
    with session_scope() as s:
        assert doctor.examine(s, settings, grace=0) == []


def test_a_publish_stopped_by_a_full_index_disk_is_finished_from_the_recorded_result(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator import events
    from farm.coordinator.reconcile import _finish_publishes
    from farm.messages import JobEvent

    wheel = make_wheel(tmp_path, "order-c", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    _to_uploading(job_id)
    real_add = simple.add_file

    def full(*a, **kw):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(simple, "add_file", full)
    events.apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state="publishing", artifacts=[report]),
                       settings)
    state, error, staged = _job_state(job_id)
    assert state == "publishing" and events.PENDING in staged  # the result is kept, nothing rebuilt
    assert error.startswith("publishing failed (infrastructure; tried again):") and "No space left" in error
    assert _listed(settings, "order-c") == []
    monkeypatch.setattr(simple, "add_file", real_add)  # the disk has room again
    assert events.finish_publish(job_id, settings) is True
    state, error, staged = _job_state(job_id)
    assert (state, error, events.PENDING in staged) == ("succeeded", None, False)
    assert _listed(settings, "order-c") == [wheel.name]
    assert _finish_publishes(settings) == []  # nothing left to finish
    assert events.finish_publish(job_id, settings) is None  # done once


def test_a_failed_job_lists_nothing_and_its_files_leave_every_folder(
        settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator.lifecycle import fail
    from farm.db.models import Job
    from tests.helpers.farms import publish_prepared

    wheel = make_wheel(tmp_path, "order-d", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    publish_prepared(settings, job_id, report)
    assert _listed(settings, "order-d") == [wheel.name]
    with session_scope() as s:
        job = s.get(Job, job_id)
        job.state = "publishing"
        s.flush()
        fail(s, job, "failed after publishing", "internal", settings)
    assert _listed(settings, "order-d") == []
    assert not list((settings.index / "files" / "order-d").glob(wheel.name + "*"))


def test_a_finished_job_stops_a_redelivered_build_message(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.liveness import stop_reason
    from farm.storage import get_storage
    from tests.helpers.farms import publish_prepared

    wheel = make_wheel(tmp_path, "order-e", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    assert stop_reason(get_storage(), job_id, 1) is None
    from farm.coordinator.lifecycle import succeed
    from farm.db.models import Job

    publish_prepared(settings, job_id, report)
    with session_scope() as s:
        job = s.get(Job, job_id)
        job.state = "publishing"
        s.flush()
        succeed(s, job, settings)
    assert stop_reason(get_storage(), job_id, 1) == "the job succeeded"


def test_after_a_broker_restart_queued_jobs_of_an_empty_queue_are_sent_again_at_once(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator import dispatch
    from farm.coordinator.reconcile import reconcile_once
    from farm.coordinator.submit import submit
    from tests.helpers.sdists import sdist_members, write_tar

    sent: list = []
    monkeypatch.setattr(dispatch, "send", sent.extend)
    sdist = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members("foo-1.0", "foo", "1.0"))
    job_id = submit(str(sdist), settings=settings).jobs[0][0]
    sent.clear()
    seen: dict[str, str] = {}
    sizes = lambda queues: dict.fromkeys(queues, 0)  # noqa: E731 - every queue empty
    kw = {"sizes": sizes, "empty_since": {}, "broker_seen": seen}
    assert reconcile_once(settings, identity=lambda: "run-1", **kw).resent == []  # young: a worker may take it
    time.sleep(0.05)
    done = reconcile_once(settings, identity=lambda: "run-2", **kw)  # the broker restarted, its queue is empty
    assert done.broker_restarted and done.resent == [job_id]
    assert [s.attempt for s in sent] == [2]
    assert reconcile_once(settings, identity=lambda: "run-2", **kw).resent == []  # once


def test_a_publish_that_fails_with_a_bug_fails_the_job_as_internal_instead_of_looping(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A bug in the publish path (not a fault of the disk or the network) is no reason to try again
    every reconciler pass: the job fails as `internal`, its traceback in the error, nothing listed."""
    from farm.coordinator import events
    from farm.coordinator.reconcile import _finish_publishes
    from farm.messages import JobEvent

    wheel = make_wheel(tmp_path, "order-bug", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    _to_uploading(job_id)

    def bug(*a, **kw):  # type: ignore[no-untyped-def]
        raise KeyError("a bug in the farm")

    monkeypatch.setattr(simple, "add_file", bug)
    events.apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state="publishing", artifacts=[report]),
                       settings)
    state, error, staged = _job_state(job_id)
    assert state == "failed" and events.PENDING not in staged
    assert error.startswith("publishing failed: internal error: KeyError") and "Traceback" in error
    assert _listed(settings, "order-bug") == []
    assert _finish_publishes(settings) == []
