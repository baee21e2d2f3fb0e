"""Record what workers report: state moves, step timings and logs, failures, waits, results.

The database is the truth. An event from an older attempt, or one that would make an illegal
move, is logged and dropped. Work that follows from an event (publishing, releasing jobs that
waited for this one, resolving missing dependencies) happens here too; a publish the coordinator
refuses (farm/coordinator/publish.py: a wheel of another project, a file name already taken)
fails the job with that reason. Build messages are sent only after the transaction commits.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator import deps, dispatch
from farm.coordinator.publish import PublishRefused, publish
from farm.db.models import Dependency, Job, Step, utcnow
from farm.db.session import session_scope
from farm.db.states import RUNNING, TERMINAL, JobState, forward_path
from farm.errors import StateError
from farm.messages import JobEvent, JobSpec, StepReport

log = logging.getLogger(__name__)


def apply_event(event: JobEvent, settings: Settings) -> None:
    followups: list[JobSpec] = []
    waiting: tuple[int, list[str]] | None = None
    with session_scope() as session:
        job = session.get(Job, event.job_id, with_for_update=True)
        if job is None:
            log.warning("event for unknown job %s dropped", event.job_id)
            return
        if event.attempt != job.attempt or job.state in TERMINAL:
            log.info("stale event for job %s (attempt %s, state %s) dropped", job.id, event.attempt, job.state)
            return
        job.worker = event.worker
        job.heartbeat_at = utcnow()  # every event is a sign of life too (farm.coordinator.reconcile)
        if event.step is not None:
            _record_step(session, job, event.step)
        target = JobState(event.state)
        if target.value != job.state:
            try:
                for state in forward_path(job.state, target):  # an event may overtake the one before it
                    job.move(state)
            except StateError as exc:
                if event.step is not None and event.step.finished_at is not None:
                    # A step's end overtaken by the next step's start (several coordinators): its
                    # timing and log are recorded above; only the state stays where it is.
                    log.info("job %s: late end of step %s recorded, state stays %s", job.id, target.value, job.state)
                else:
                    log.warning("job %s: %s (event dropped)", job.id, exc)
                return
        if target in RUNNING and job.started_at is None:
            job.started_at = utcnow()
        if event.log_key:
            job.log_key = event.log_key
        if target == JobState.QUEUED:
            job.error = f"retrying after an infrastructure fault: {event.error}"
        elif target == JobState.FAILED:
            followups += fail(session, job, event.error or "failed", event.failure_kind or "package")
        elif target == JobState.DEP_WAIT:
            rounds = job.staged.get("rounds", 0) + 1
            job.staged = {"wheels": [s.model_dump() for s in event.staged], "carry": event.carry, "rounds": rounds}
            if rounds > 3:
                followups += fail(session, job, f"dependencies still missing after {rounds - 1} rounds: "
                                  f"{', '.join(event.missing)}", "dependency")
            else:
                waiting = (job.id, list(event.missing))
        elif target == JobState.PUBLISHING:
            try:
                publish(session, job, list(event.artifacts), settings)
            except PublishRefused as exc:  # another project's name, a taken file name: nothing was published
                followups += fail(session, job, f"publishing refused: {exc}", "package")
            else:
                followups += succeed(session, job, settings)
    if waiting is not None:
        followups += deps.wait_for(waiting[0], waiting[1], settings)
    dispatch.send(followups)


def _record_step(session: Session, job: Job, report: StepReport) -> None:
    step = session.scalar(select(Step).where(Step.job_id == job.id, Step.attempt == job.attempt,
                                             Step.name == report.name))
    if step is None:
        step = Step(job=job, attempt=job.attempt, name=report.name, started_at=_ts(report.started_at))
        session.add(step)
    if report.finished_at is not None:
        step.finished_at = _ts(report.finished_at)
        step.seconds = report.finished_at - report.started_at
        step.outcome = report.outcome
        step.log = report.log


def _ts(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC).replace(tzinfo=None)


def succeed(session: Session, job: Job, settings: Settings) -> list[JobSpec]:
    """Mark `job` succeeded, and with it the jobs that reused it and the jobs that waited for it."""
    if job.state != JobState.SUCCEEDED.value:
        job.move(JobState.SUCCEEDED)
    job.finished_at = utcnow()
    job.error = None
    followups: list[JobSpec] = []
    for follower in session.scalars(select(Job).where(Job.cached_from_id == job.id,
                                                      Job.state == JobState.QUEUED.value)):
        followups += succeed(session, follower, settings)
    for dep in session.scalars(select(Dependency).where(Dependency.dep_job_id == job.id,
                                                        Dependency.state == "waiting")):
        dep.state = "met"
        session.flush()
        followups += deps.release_if_ready(session, dep.job, settings) or deps.release_cycle(session, dep.job, settings)
    return followups


def fail(session: Session, job: Job, error: str, kind: str) -> list[JobSpec]:
    """Mark `job` failed, and with it the jobs that reused it and the jobs that needed it."""
    if job.state != JobState.FAILED.value:
        job.move(JobState.FAILED)
    job.finished_at = utcnow()
    job.error, job.failure_kind = error, kind
    followups: list[JobSpec] = []
    for follower in session.scalars(select(Job).where(Job.cached_from_id == job.id,
                                                      Job.state == JobState.QUEUED.value)):
        followups += fail(session, follower, f"the identical build, job {job.id}, failed: {error}", kind)
    for dep in session.scalars(select(Dependency).where(Dependency.dep_job_id == job.id,
                                                        Dependency.state == "waiting")):
        dep.state, dep.reason = "unavailable", f"job {job.id} failed"
        if dep.job.state == JobState.DEP_WAIT.value:
            followups += fail(session, dep.job, f"dependency {dep.requirement} could not be built "
                              f"(job {job.id}: {error.splitlines()[0] if error else 'failed'})", "dependency")
    return followups
