"""The build task a platform worker consumes. Plain function in, events out; no database here.

Infrastructure faults (`farm.errors.classify`: a full disk, an I/O error, the API or the broker
away) never count against the package. The task retries the job in place, with backoff (1, 2, 4 ...
up to 30 s between tries), for `api_retry_seconds` (default 600 s): the worker keeps the job and its
heartbeats meanwhile, so it takes no other job while it cannot work, and a queued job is never
pulled only to use up its retries (Celery's countdown retries were held in the worker's memory and
spent in seconds). Each retry is reported as `queued` with the real fault; at the deadline the job
fails as `infrastructure`, the error naming the real fault and how long it lasted. A package that
fails to build or test is reported once and never retried, and so is a bug in the farm
(`internal`, its traceback in the job's log). While the job runs, a background thread sends
heartbeats (farm.worker.heartbeat); an attempt the coordinator voided (cancelled, or sent again
after this worker was thought lost) is skipped, or stopped at the next step boundary.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from celery import shared_task
from kombu.exceptions import OperationalError

from farm.config import get_settings
from farm.db.states import JobState
from farm.errors import InfrastructureFault, JobStopped, classify, fault_of, internal_error
from farm.liveness import stop_reason
from farm.messages import BUILD_TASK, COORDINATOR_QUEUE, EVENT_TASK, JobEvent, JobSpec
from farm.storage import get_storage
from farm.worker.heartbeat import HeartbeatThread
from farm.worker.pipeline import run_job

log = logging.getLogger(__name__)
FIRST_DELAY, MAX_DELAY = 1.0, 30.0  # seconds between tries after an infrastructure fault
_sleep = time.sleep  # tests replace it
_clock = time.monotonic


def send_event(event: JobEvent) -> None:
    from farm.coordinator.app import get_app

    try:
        get_app().send_task(EVENT_TASK, args=[event.model_dump(mode="json")], queue=COORDINATOR_QUEUE)
    except OperationalError as exc:  # the broker stayed away through the send's retries
        raise InfrastructureFault("report", f"cannot send the job's event: {exc}") from exc


def _try_send(event: JobEvent) -> None:
    """Report a retry; a broker that is away too only costs the report (the heartbeats go on)."""
    try:
        send_event(event)
    except Exception as exc:  # noqa: BLE001 - the retry happens anyway
        log.warning("job %s: retry not reported: %s", event.job_id, exc)


@shared_task(name=BUILD_TASK, bind=True, acks_late=True)
def build(self: Any, payload: dict[str, Any]) -> None:
    spec = JobSpec.model_validate(payload)
    worker = self.request.hostname or socket.gethostname()
    settings, storage = get_settings(), get_storage(capability=spec.storage_capability)
    voided = stop_reason(storage, spec.job_id, spec.attempt)
    if voided:  # e.g. a message that came back after its attempt was replaced or cancelled
        log.info("job %s attempt %s skipped: %s", spec.job_id, spec.attempt, voided)
        return
    beat = HeartbeatThread(spec, worker=worker, interval=settings.heartbeat_interval, storage=storage)
    with beat:
        _run_until_done(spec, settings=settings, storage=storage, beat=beat, worker=worker)


def _run_until_done(spec: JobSpec, *, settings: Any, storage: Any, beat: HeartbeatThread, worker: str) -> None:
    """`run_job`, again after each infrastructure fault, until it ends otherwise or the window closes."""
    first = _clock()
    delay, tries = FIRST_DELAY, 0

    def event(state: JobState, error: str, kind: str) -> JobEvent:
        return JobEvent(job_id=spec.job_id, attempt=spec.attempt, worker=worker, state=state.value, error=error,
                        failure_kind=kind)

    while True:
        tries += 1
        try:
            run_job(spec, settings=settings, storage=storage, report=beat.guard(send_event), worker=worker)
            return
        except JobStopped as exc:
            log.info("job %s attempt %s stopped: %s", spec.job_id, spec.attempt, exc)
            return
        except Exception as exc:  # noqa: BLE001 - classified below
            kind = classify(exc)
            if kind != "infrastructure":  # run_job reports these itself: this one came from outside its steps
                error = str(exc) if kind == "package" else internal_error(exc)
                log.error("job %s: %s", spec.job_id, error, exc_info=exc)
                try:
                    send_event(event(JobState.FAILED, error, kind))
                    return
                except InfrastructureFault as report_fault:  # the broker is away: try the whole job again
                    exc = report_fault
            fault = fault_of(exc)
        log.warning("job %s attempt %s: infrastructure fault (try %s): %s", spec.job_id, spec.attempt, tries, fault)
        if beat.stop_reason:
            return
        waited = _clock() - first
        if waited + delay > settings.api_retry_seconds:
            _try_send(event(JobState.FAILED, f"infrastructure fault for {waited:.0f} s over {tries} tries, "
                                             f"given up: {fault}", "infrastructure"))
            return
        _try_send(event(JobState.QUEUED, fault, "infrastructure"))
        _pause(delay, beat)
        delay = min(2 * delay, MAX_DELAY)


def _pause(seconds: float, beat: HeartbeatThread) -> None:
    """Sleep, but not past a stop request (checked by the heartbeat thread)."""
    end = _clock() + seconds
    while not beat.stop_reason and (left := end - _clock()) > 0:
        _sleep(min(left, 1.0))
