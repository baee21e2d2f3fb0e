"""Read-side queries shared by the CLI and the API: jobs with their steps, logs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from farm.db.models import Job, Step
from farm.db.states import TERMINAL, DependencyState, JobState
from farm.errors import NotFound
from farm.storage import get_storage, log_key


@dataclass(kw_only=True)
class JobView:
    id: int
    submission_id: int
    name: str
    version: str
    build_id: str
    state: str
    attempt: int
    cached_from: int | None
    error: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    seconds: float | None = None
    dependency_jobs: list[int] = field(default_factory=list)  # the jobs providing its runtime dependencies
    unserved: str | None = None  # queued with no live worker to take it: why (farm.coordinator.workers)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _view(job: Job, now: dt.datetime) -> JobView:
    steps = []
    for s in job.steps:
        if s.attempt != job.attempt:
            continue
        secs = s.seconds if s.seconds is not None else (now - s.started_at).total_seconds()
        steps.append({"name": s.name, "seconds": round(secs, 2), "outcome": s.outcome})
    total = None
    if job.started_at:
        total = ((job.finished_at or now) - job.started_at).total_seconds()
    return JobView(id=job.id, submission_id=job.submission_id, name=job.source.name, version=job.source.version,
                   build_id=job.build_id, state=job.state, attempt=job.attempt, cached_from=job.cached_from_id,
                   error=job.error, steps=steps, wheels=[a.filename for a in job.artifacts],
                   waiting_for=[d.requirement for d in job.dependencies if d.state == DependencyState.WAITING], seconds=total,
                   dependency_jobs=sorted({d.dep_job_id for d in job.dependencies if d.dep_job_id is not None}))


def list_jobs(session: Session, *, submission: int | None = None, limit: int = 50,
              active_only: bool = False) -> list[JobView]:
    q = (select(Job).options(selectinload(Job.steps), selectinload(Job.source), selectinload(Job.artifacts),
                             selectinload(Job.dependencies))
         .order_by(Job.id.desc()).limit(limit))
    if submission is not None:
        q = q.where(Job.submission_id == submission)
    if active_only:
        q = q.where(Job.state.notin_(sorted(TERMINAL)))
    return _views(list(session.scalars(q)))


def jobs_done(session: Session, job_ids: list[int]) -> tuple[bool, list[JobView]]:
    jobs = list(session.scalars(select(Job).where(Job.id.in_(job_ids))
                                .options(selectinload(Job.steps), selectinload(Job.source),
                                         selectinload(Job.artifacts), selectinload(Job.dependencies))))
    return all(j.state in TERMINAL for j in jobs), _views(jobs)


def _views(jobs: list[Job]) -> list[JobView]:
    from farm.coordinator.workers import waiting_reasons

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    reasons = waiting_reasons(jobs)
    views = [_view(j, now) for j in jobs]
    for v in views:
        v.unserved = reasons.get(v.id)
    return views


def job_log(session: Session, job_id: int) -> str:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.cached_from_id is not None and job.state == JobState.SUCCEEDED and not job.steps:
        return f"job {job_id} reused the result of job {job.cached_from_id} (same inputs)\n" + job_log(session, job.cached_from_id)
    storage = get_storage()
    parts = []
    for attempt in range(1, job.attempt + 1):
        key = log_key(job.id, attempt)
        if storage.exists(key):
            parts.append(storage.read_bytes(key).decode("utf-8", "replace"))
    if not parts:
        steps = session.scalars(select(Step).where(Step.job_id == job_id).order_by(Step.id))
        parts = [f"===== {s.name} =====\n{s.log}" for s in steps]
    text = "".join(parts)
    if job.error:
        text += f"\n[{job.state}] {job.error}\n"
    return text or f"job {job_id} ({job.state}): no log yet\n"
