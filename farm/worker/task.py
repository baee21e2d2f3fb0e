"""The build task a platform worker consumes. Plain function in, events out; no database here.

Infrastructure faults are retried with backoff (the job goes back to `queued`); a package that
fails to build or test is reported once and never retried, and so is a bug in the farm (`internal`,
its traceback in the job's log; `farm.errors.classify` tells them apart). While the job runs, a
background thread sends heartbeats (farm.worker.heartbeat); an attempt the coordinator voided
(cancelled, or sent again after this worker was thought lost) is skipped, or stopped at the next
step boundary.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from celery import shared_task
from kombu.exceptions import OperationalError

from farm.config import get_settings
from farm.db.states import JobState
from farm.errors import InfrastructureFault, JobStopped, classify, internal_error
from farm.liveness import stop_reason
from farm.messages import BUILD_TASK, COORDINATOR_QUEUE, EVENT_TASK, JobEvent, JobSpec
from farm.storage import get_storage
from farm.worker.heartbeat import HeartbeatThread
from farm.worker.pipeline import run_job

log = logging.getLogger(__name__)
MAX_RETRIES = 3


def send_event(event: JobEvent) -> None:
    from farm.coordinator.app import get_app

    try:
        get_app().send_task(EVENT_TASK, args=[event.model_dump(mode="json")], queue=COORDINATOR_QUEUE)
    except OperationalError as exc:  # the broker stayed away through the send's retries
        raise InfrastructureFault("report", f"cannot send the job's event: {exc}") from exc


@shared_task(name=BUILD_TASK, bind=True, acks_late=True, max_retries=MAX_RETRIES)
def build(self: Any, payload: dict[str, Any]) -> None:
    spec = JobSpec.model_validate(payload)
    worker = self.request.hostname or socket.gethostname()
    settings, storage = get_settings(), get_storage(capability=spec.storage_capability)
    voided = stop_reason(storage, spec.job_id, spec.attempt)
    if voided:  # e.g. a message that came back after its attempt was replaced or cancelled
        log.info("job %s attempt %s skipped: %s", spec.job_id, spec.attempt, voided)
        return
    beat = HeartbeatThread(spec, worker=worker, interval=settings.heartbeat_interval, storage=storage)
    try:
        with beat:
            run_job(spec, settings=settings, storage=storage, report=beat.guard(send_event), worker=worker)
    except JobStopped as exc:
        log.info("job %s attempt %s stopped: %s", spec.job_id, spec.attempt, exc)
    except Exception as exc:
        kind = classify(exc)
        if kind != "infrastructure":  # run_job reports these itself: this one came from outside its steps
            error = str(exc) if kind == "package" else internal_error(exc)
            log.error("job %s: %s", spec.job_id, error, exc_info=exc)
            send_event(JobEvent(job_id=spec.job_id, attempt=spec.attempt, worker=worker, state=JobState.FAILED.value,
                                error=error, failure_kind=kind))
            return
        log.warning("job %s: infrastructure fault: %s", spec.job_id, exc)
        if beat.stop_reason:
            return
        if self.request.retries < MAX_RETRIES:
            send_event(JobEvent(job_id=spec.job_id, attempt=spec.attempt, worker=worker,
                                state=JobState.QUEUED.value, error=str(exc), failure_kind="infrastructure"))
            raise self.retry(exc=exc, countdown=2 ** self.request.retries) from exc
        send_event(JobEvent(job_id=spec.job_id, attempt=spec.attempt, worker=worker, state=JobState.FAILED.value,
                            error=f"gave up after {MAX_RETRIES} retries: {exc}", failure_kind="infrastructure"))
