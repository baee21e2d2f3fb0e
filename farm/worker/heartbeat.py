"""While a worker runs a job: a heartbeat to the coordinator every `heartbeat_interval` seconds.

A background thread, so a build that runs for an hour in one subprocess still shows it is alive.
The coordinator records the time (`job.heartbeat_at`); its reconciler sends the job again as a
new attempt when the heartbeats stop for `lost_after` seconds (the worker was killed, its machine
went away). The same thread reads the job's stop marker (farm.liveness), so a cancelled or
superseded attempt stops at its next step boundary instead of building to the end for nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

from farm.liveness import JobStopped, stop_reason
from farm.messages import (
    COORDINATOR_QUEUE,
    HEARTBEAT_TASK,
    Heartbeat,
    JobEvent,
    JobSpec,
)
from farm.storage import Storage

log = logging.getLogger(__name__)


def send_heartbeat(beat: Heartbeat) -> None:
    from farm.coordinator.app import get_app

    get_app().send_task(HEARTBEAT_TASK, args=[beat.model_dump(mode="json")], queue=COORDINATOR_QUEUE)


class HeartbeatThread(threading.Thread):
    def __init__(self, spec: JobSpec, *, worker: str, interval: float, storage: Storage,
                 send: Callable[[Heartbeat], None] = send_heartbeat) -> None:
        super().__init__(name=f"heartbeat-job-{spec.job_id}", daemon=True)
        # The stop marker is read impatiently: a storage that retries through an API outage would hold
        # this thread, and with it the heartbeats, which go through the broker and still get through.
        with_retry = getattr(storage, "with_retry", None)
        self.storage = with_retry(0) if with_retry is not None else storage
        self.spec, self.worker, self.interval, self.send = spec, worker, interval, send
        self.stop_reason: str | None = None
        self.beats = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.send(Heartbeat(job_id=self.spec.job_id, attempt=self.spec.attempt, worker=self.worker,
                                    sent_at=time.time()))
                self.beats += 1
            except Exception as exc:  # noqa: BLE001 - the broker is away: the next beat tries again
                log.warning("job %s: heartbeat not sent: %s", self.spec.job_id, exc)
            if self.stop_reason is None:
                self.stop_reason = stop_reason(self.storage, self.spec.job_id, self.spec.attempt)
                if self.stop_reason:
                    log.info("job %s attempt %s: stop requested (%s); stopping at the next step",
                             self.spec.job_id, self.spec.attempt, self.stop_reason)

    def stop(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.interval + 5)

    def guard(self, report: Callable[[JobEvent], None]) -> Callable[[JobEvent], None]:
        """`report`, but a step does not start once the attempt was voided: JobStopped instead."""

        def guarded(event: JobEvent) -> None:
            if self.stop_reason and event.step is not None and event.step.finished_at is None:
                raise JobStopped(self.stop_reason)
            report(event)

        return guarded

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
