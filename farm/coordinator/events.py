"""Record what workers report: state moves, step timings and logs, failures, waits, results.

The database is the truth. An event from an older attempt, or one that would make an illegal
move, is logged and dropped. Work that follows from an event happens here too: publishing, then
the job's end (farm/coordinator/lifecycle.py: succeed or fail, with the jobs reusing it or waiting
for it), and resolving missing dependencies (farm/coordinator/deps.py). A publish the coordinator
refuses (farm/coordinator/publish.py: a wheel of another project, a file name already taken)
fails the job with that reason. Build messages are sent only after the transaction commits.

Publishing is two transactions: the worker's `publishing` event records the job's result (the
artifact reports, in `Job.staged`) and commits; then `finish_publish` publishes from that record
and ends the job. A coordinator killed, a full index disk or a database that went away in between
leaves the job in `publishing` with its result, and the reconciler finishes it: a finished build is
never thrown away and built again.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator import deps
from farm.coordinator.lifecycle import fail, succeed
from farm.coordinator.publish import PublishRefused, publish
from farm.db.models import Job, Step, utcnow
from farm.db.session import session_scope
from farm.db.states import RUNNING, TERMINAL, JobState, forward_path
from farm.errors import StateError, classify, fault_of, internal_error
from farm.messages import ArtifactReport, BuildRecord, JobEvent, StepReport

log = logging.getLogger(__name__)
PENDING = "publish"  # Job.staged[PENDING]: the artifacts of a job in `publishing`, until published


def apply_event(event: JobEvent, settings: Settings) -> None:
    waiting: tuple[int, list[str]] | None = None
    publishing: int | None = None
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
            if event.build is not None and event.build.adjustments:  # what the worker found (a suggested recipe)
                job.staged = {**job.staged, "adjustments": event.build.adjustments}
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
            # The worker's result is recorded first (its own commit): from here on a crash, a full
            # disk or a lost database connection only delays the publish, which `finish_publish`
            # does from this record (now, and again from the reconciler until it is done).
            job.staged = {**job.staged, PENDING: [a.model_dump(mode="json") for a in event.artifacts]}
            publishing = job.id
    if waiting is not None:  # after the commit: finding providers may submit builds (own transactions)
        deps.wait_for(waiting[0], waiting[1], settings)
    if publishing is not None:
        finish_publish(publishing, settings)


def finish_publish(job_id: int, settings: Settings) -> bool | None:
    """Publish a job's recorded result and end it: succeeded, or failed when the publish is refused.

    True when done, False when an infrastructure fault (the index's disk, the storage, the database)
    stopped it: the job stays in `publishing` with its result, its error naming the fault, and the
    reconciler tries again (farm.coordinator.reconcile); never a rebuild. None when there was nothing
    to do (another process finished it, or the job ended otherwise).
    """
    try:
        with session_scope() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.PUBLISHING or PENDING not in job.staged:
                return None
            reports = [ArtifactReport.model_validate(a) for a in job.staged[PENDING]]
            job.staged = {k: v for k, v in job.staged.items() if k != PENDING}
            try:
                publish(session, job, reports, settings)
            except PublishRefused as exc:  # another project's name, a taken file name: nothing was published
                fail(session, job, f"publishing refused: {exc}", "package")
            else:
                succeed(session, job, settings)
        return True
    except Exception as exc:
        if classify(exc) != "infrastructure":  # a bug in the farm: the job fails visibly, never loops
            log.error("job %s: publishing failed", job_id, exc_info=exc)
            with session_scope() as session:
                job = session.get(Job, job_id, with_for_update=True)
                if job is not None and job.state == JobState.PUBLISHING:
                    job.staged = {k: v for k, v in job.staged.items() if k != PENDING}
                    fail(session, job, f"publishing failed: {internal_error(exc)}\n"
                         + "".join(traceback.format_exception(exc))[-4000:], "internal")
            return True
        fault = fault_of(exc)
        log.warning("job %s: publishing failed, to be tried again: %s", job_id, fault)
        with session_scope() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is not None and job.state == JobState.PUBLISHING:
                job.error = f"publishing failed (infrastructure; tried again): {fault}"
        return False


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
