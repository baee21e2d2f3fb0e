"""Fast tests of farm/coordinator/lifecycle.py, in one process on SQLite: build messages leave only
after the commit, jobs waiting for dependencies are released (alone, or a cycle together), a
failure reaches the jobs reusing a job and those waiting for it, the enum-typed columns store the
same strings as before, and the coordinator's modules import one another without a cycle.

Bad cases covered: a transaction that rolls back, or whose commit fails, sends nothing; a session
not opened by `session_scope` refuses to queue messages it would never send; a state outside the
enum is refused on write and in a message.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from farm.messages import BuildRecord, JobEvent, StagedWheel, StepReport


COORDINATOR = Path(__file__).resolve().parent.parent / "farm" / "coordinator"


@pytest.fixture
def sent(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """An embedded farm's database and storage; the build messages sent, captured."""
    from farm.cli import ensure_db
    from farm.coordinator import dispatch

    messages: list = []
    monkeypatch.setattr(dispatch, "send", lambda specs: messages.extend(specs))
    ensure_db()
    return messages


def _submit(tmp_path: Path, name: str = "foo", version: str = "1.0") -> int:
    from farm.config import get_settings
    from farm.coordinator.submit import submit
    from tests.helpers.sdists import sdist_members, write_tar

    sdist = tmp_path / f"{name}-{version}.tar.gz"
    if not sdist.exists():
        write_tar(sdist, sdist_members(f"{name}-{version}", name, version))
    return submit(str(sdist), settings=get_settings()).jobs[0][0]


def _event(job_id: int, state: str, **kw) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.events import apply_event

    apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state=state, **kw), get_settings())


def _to_dep_wait(job_id: int, missing: list[str]) -> StagedWheel:
    """Walk a job through the worker's steps into dep_wait, its wheel staged."""
    for state in ("fetching", "building", "repairing", "verifying"):
        _event(job_id, state)
    wheel = StagedWheel(filename=f"w{job_id}-1.0-py3-none-any.whl", sha256=f"{job_id:064d}",
                        storage_key=f"jobs/{job_id}/attempt-1/w.whl")
    _event(job_id, "dep_wait", missing=missing, build=BuildRecord(wheels=[wheel]))
    return wheel


def _job(job_id: int):  # type: ignore[no-untyped-def]
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def test_follow_ups_are_sent_once_after_the_commit_and_never_after_a_rollback(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from farm.config import get_settings
    from farm.coordinator.dispatch import send_after_commit
    from farm.coordinator.lifecycle import requeue
    from farm.db.models import Job, Source
    from farm.db.session import get_engine, session_scope

    settings = get_settings()
    job_id = _submit(tmp_path)
    assert [(s.job_id, s.attempt) for s in sent] == [(job_id, 1)]  # the submission's own, after its commit
    sent.clear()

    with pytest.raises(RuntimeError, match="changed my mind"), session_scope() as s:
        requeue(s, s.get(Job, job_id), settings, why="a test")
        raise RuntimeError("changed my mind")
    assert sent == [] and _job(job_id).attempt == 1

    with pytest.raises(IntegrityError), session_scope() as s:  # the commit itself fails
        job = s.get(Job, job_id)
        requeue(s, job, settings, why="a test")
        s.add(Source(sha256=job.source.sha256, name="x", version="1", filename="x-1.tar.gz", size=1, storage_key="k"))
    assert sent == [] and _job(job_id).attempt == 1

    with session_scope() as s:
        requeue(s, s.get(Job, job_id), settings, why="a test")
        assert sent == []  # not before the commit
    assert [(s.job_id, s.attempt, s.resume) for s in sent] == [(job_id, 2, "build")]
    assert _job(job_id).error == "a test; sent again as attempt 2"
    with session_scope():
        pass
    assert len(sent) == 1  # exactly once

    with Session(get_engine()) as s, pytest.raises(RuntimeError, match="session_scope"):
        send_after_commit(s, sent)  # nobody would send them


def test_a_published_dependency_releases_its_waiter_for_verification(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.lifecycle import succeed
    from farm.db.models import Dependency, Job
    from farm.db.session import session_scope
    from farm.db.states import DependencyState

    provider = _submit(tmp_path, "foo")
    waiter = _submit(tmp_path, "bar")
    wheel = _to_dep_wait(waiter, ["foo>=1"])  # foo is being built here already: no upstream lookup
    with session_scope() as s:
        (dep,) = s.query(Dependency).filter_by(job_id=waiter).all()
        assert (dep.dep_job_id, dep.state) == (provider, DependencyState.WAITING)
    assert _job(waiter).state == "dep_wait"
    sent.clear()
    with session_scope() as s:
        succeed(s, s.get(Job, provider), get_settings())
        assert sent == []
    assert [(s.job_id, s.resume, s.build and s.build.wheels) for s in sent] == [(waiter, "verify", [wheel])]
    assert (_job(provider).state, _job(waiter).state) == ("succeeded", "queued")


def test_jobs_waiting_on_each_other_are_released_together(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = _submit(tmp_path, "foo")
    b = _submit(tmp_path, "bar")
    wheel_a = _to_dep_wait(a, ["bar"])  # b is still verifying: a waits
    assert _job(a).state == "dep_wait"
    sent.clear()
    wheel_b = _to_dep_wait(b, ["foo"])  # a waits on b: a cycle, released as a whole
    assert (_job(a).state, _job(b).state) == ("queued", "queued")
    assert {s.job_id: (s.resume, s.co_staged) for s in sent} == {a: ("verify", [wheel_b]), b: ("verify", [wheel_a])}


def test_a_failure_reaches_the_jobs_reusing_it_and_those_waiting_for_it(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.db.models import Dependency
    from farm.db.session import session_scope
    from farm.db.states import DependencyState

    provider = _submit(tmp_path, "foo")
    twin = _submit(tmp_path, "foo")  # the same sdist: reuses the provider's build
    waiter = _submit(tmp_path, "bar")
    _to_dep_wait(waiter, ["foo>=1"])  # provided by the newest job for foo: the twin
    sent.clear()
    _event(provider, "fetching")
    _event(provider, "failed", error="build: does not compile\nmore", failure_kind="package")
    assert (_job(provider).state, _job(twin).state, _job(waiter).state) == ("failed", "failed", "failed")
    assert _job(twin).error == f"the identical build, job {provider}, failed: build: does not compile\nmore"
    assert (_job(waiter).failure_kind, _job(waiter).error) == (
        "dependency", f"dependency foo>=1 could not be built (job {twin}: the identical build, job {provider}, "
        "failed: build: does not compile)")
    with session_scope() as s:
        assert s.query(Dependency).filter_by(job_id=waiter).one().state == DependencyState.UNAVAILABLE
    assert sent == []


def test_enum_columns_store_the_same_strings(sent, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError
    from sqlalchemy import text
    from sqlalchemy.exc import StatementError

    from farm.config import get_settings
    from farm.coordinator.reconcile import reconcile_once
    from farm.db.models import Dependency, Job, Step, utcnow
    from farm.db.session import session_scope
    from farm.db.states import DependencyState, JobState, StepOutcome

    settings = get_settings()
    provider = _submit(tmp_path, "foo")
    waiter = _submit(tmp_path, "bar")
    _to_dep_wait(waiter, ["foo>=1"])
    _event(provider, "fetching", step=StepReport(name="fetching", started_at=time.time()))
    with session_scope() as s:
        job = s.get(Job, provider)
        job.heartbeat_at = job.updated_at = utcnow().replace(year=2000)  # lost its worker long ago
    assert reconcile_once(settings, sizes=lambda queues: dict.fromkeys(queues, 0)).requeued == [provider]
    with session_scope() as s:
        raw = s.execute(text("SELECT job.state, step.outcome, dependency.state FROM job JOIN step ON "
                             "step.job_id = job.id JOIN dependency ON dependency.dep_job_id = job.id")).one()
        assert tuple(raw) == ("queued", "lost", "waiting")
        assert type(raw[0]) is str
        job = s.get(Job, provider)
        step = s.query(Step).filter_by(job_id=provider).one()
        dep = s.query(Dependency).filter_by(job_id=waiter).one()
        assert (job.state, step.outcome, dep.state) == (JobState.QUEUED, StepOutcome.LOST, DependencyState.WAITING)
        assert (type(job.state), type(step.outcome), type(dep.state)) == (JobState, StepOutcome, DependencyState)
    with pytest.raises(StatementError, match="queueing"), session_scope() as s:
        s.get(Job, provider).state = "queueing"  # type: ignore[assignment]
    assert _job(provider).state == JobState.QUEUED
    assert StepReport(name="x", started_at=0, outcome="lost").outcome is StepOutcome.LOST
    with pytest.raises(ValidationError):
        JobEvent(job_id=1, attempt=1, worker="w", state="queueing")


def _imports(path: Path) -> set[str]:
    """The farm.coordinator modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "farm.coordinator":
                found |= {f"farm.coordinator.{a.name}" for a in node.names}
            elif node.module.startswith("farm.coordinator."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("farm.coordinator.")}
    return found


def test_the_coordinator_modules_import_each_other_without_a_cycle() -> None:
    graph = {f"farm.coordinator.{p.stem}": _imports(p) for p in COORDINATOR.glob("*.py") if p.stem != "__init__"}
    assert "farm.coordinator.events" not in graph["farm.coordinator.deps"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
