"""Record what workers report: state moves, step timings and logs, failures, waits, results.

The database is the truth. An event from an older attempt, or one that would make an illegal
move, is logged and dropped. Work that follows from an event happens here too: publishing, then
the job's end (farm/coordinator/lifecycle.py: succeed or fail, with the jobs reusing it or waiting
for it), and resolving missing dependencies (farm/coordinator/deps.py). A publish the coordinator
refuses (farm/coordinator/publish.py: a wheel of another project, a file name already taken)
fails the job with that reason. Build messages are sent only after the transaction commits.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator import deps
from farm.coordinator.lifecycle import fail, succeed
from farm.coordinator.publish import PublishRefused, publish
from farm.db.models import Job, Step, utcnow
from farm.db.session import session_scope
from farm.db.states import RUNNING, TERMINAL, JobState, forward_path
from farm.errors import StateError
from farm.messages import BuildRecord, JobEvent, StepReport

log = logging.getLogger(__name__)


def apply_event(event: JobEvent, settings: Settings) -> None:
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
        if target != job.state:
            try:
                for state in forward_path(job.state, target):  # an event may overtake the one before it
                    job.move(state)
            except StateError as exc:
                if event.step is not None and event.step.finished_at is not None:
                    # A step's end overtaken by the next step's start (several coordinators): its
                    # timing and log are recorded above; only the state stays where it is.
                    log.info("job %s: late end of step %s recorded, state stays %s", job.id, target, job.state)
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
            fail(session, job, event.error or "failed", event.failure_kind or "package")
        elif target == JobState.DEP_WAIT:
            rounds = BuildRecord.load(job.staged).rounds + 1
            job.staged = (event.build or BuildRecord()).model_copy(update={"rounds": rounds}).stored()
            if rounds > 3:
                fail(session, job, f"dependencies still missing after {rounds - 1} rounds: "
                     f"{', '.join(event.missing)}", "dependency")
            else:
                waiting = (job.id, list(event.missing))
        elif target == JobState.PUBLISHING:
            try:
                publish(session, job, list(event.artifacts), settings)
            except PublishRefused as exc:  # another project's name, a taken file name: nothing was published
                fail(session, job, f"publishing refused: {exc}", "package")
            else:
                succeed(session, job, settings)
    if waiting is not None:  # after the commit: finding providers may submit builds (own transactions)
        deps.wait_for(waiting[0], waiting[1], settings)


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
