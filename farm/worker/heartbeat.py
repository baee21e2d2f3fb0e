"""While a worker runs a job: a heartbeat to the coordinator every `heartbeat_interval` seconds.

A background thread, so a build that runs for an hour in one subprocess still shows it is alive.
The coordinator records the time (`job.heartbeat_at`); its reconciler sends the job again as a
new attempt when the heartbeats stop for `lost_after` seconds (the worker was killed, its machine
went away). The same thread reads the job's stop marker (farm.liveness), so a cancelled or
superseded attempt stops at its next step boundary instead of building to the end for nothing.

A worker also registers: when `farm worker` is ready it tells the coordinator which platform it
serves and which Pythons it builds for there (`Platform.offered_pythons`: the native engine's
interpreters, a container worker's images'), and again every `register_interval` seconds, from
its own thread, so the registration also stands while a long build runs. On a clean shutdown it
says it is leaving. The coordinator plans the build matrix from these (farm.coordinator.workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from farm.liveness import JobStopped, stop_reason
from farm.messages import (
    COORDINATOR_QUEUE,
    HEARTBEAT_TASK,
    REGISTER_TASK,
    Heartbeat,
    JobEvent,
    JobSpec,
    OfferedPython,
    WorkerRegistration,
)
from farm.storage import Storage

if TYPE_CHECKING:
    from farm.config import Settings

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


def register_interval(settings: Settings) -> float:
    """Seconds between a worker's registrations: three fall within `lost_after`."""
    return max(settings.lost_after / 3, 1.0)


def registration(platform: str, *, worker: str, settings: Settings, leaving: bool = False) -> WorkerRegistration:
    """What this worker serves on `platform`, asked of the platform module with this worker's settings."""
    from farm.worker.platforms import get_platform

    offers = [] if leaving else get_platform(platform).offered_pythons(settings)
    return WorkerRegistration(worker=worker, platform=platform, engine=settings.engine,
                              pythons=[OfferedPython(python=o.python, image=o.image) for o in offers],
                              interval=register_interval(settings), sent_at=time.time(), leaving=leaving)


def send_registration(message: WorkerRegistration) -> None:
    from farm.coordinator.app import get_app

    get_app().send_task(REGISTER_TASK, args=[message.model_dump(mode="json")], queue=COORDINATOR_QUEUE)


class RegistrationThread(threading.Thread):
    """Registers a worker for `platforms` now and every `register_interval` seconds until stopped."""

    def __init__(self, platforms: list[str], *, worker: str, settings: Settings,
                 send: Callable[[WorkerRegistration], None] = send_registration) -> None:
        super().__init__(name=f"register-{worker}", daemon=True)
        self.platforms, self.worker, self.settings, self.send = platforms, worker, settings, send
        self.interval = register_interval(settings)
        self.sent = 0
        self._done = threading.Event()

    def register(self, *, leaving: bool = False) -> None:
        for platform in self.platforms:
            try:
                self.send(registration(platform, worker=self.worker, settings=self.settings, leaving=leaving))
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - the broker is away, or a bad setting: said in the log
                log.warning("worker %s: registration for %s not sent: %s", self.worker, platform, exc)

    def run(self) -> None:
        self.register()
        while not self._done.wait(self.interval):
            self.register()

    def stop(self, *, leaving: bool = True) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
        if leaving:
            self.register(leaving=True)


_REGISTRATION: RegistrationThread | None = None


def _worker_queues(consumer: Any) -> list[str]:
    try:
        return list(consumer.app.amqp.queues.consume_from)
    except AttributeError:  # pragma: no cover - older Celery
        return [q.name for q in consumer.task_consumer.queues]


def start_registration(consumer: Any) -> RegistrationThread | None:
    """Celery's `worker_ready`: a build worker (a platform queue, not the coordinator's) registers."""
    global _REGISTRATION
    from farm.config import get_settings
    from farm.worker.platforms import get_platform

    platforms = []
    for queue in _worker_queues(consumer):
        if queue == COORDINATOR_QUEUE:
            continue
        try:
            get_platform(queue)
        except Exception:  # noqa: BLE001 - a queue that names no platform
            continue
        platforms.append(queue)
    if not platforms or _REGISTRATION is not None:
        return None
    _REGISTRATION = RegistrationThread(platforms, worker=str(consumer.hostname), settings=get_settings())
    _REGISTRATION.start()
    return _REGISTRATION


def stop_registration(*_: Any, **__: Any) -> None:
    """Celery's `worker_shutdown`: the worker says it is leaving."""
    global _REGISTRATION
    if _REGISTRATION is not None:
        _REGISTRATION.stop(leaving=True)
        _REGISTRATION = None


def _connect_signals() -> None:
    from celery.signals import worker_ready, worker_shutdown

    worker_ready.connect(lambda sender, **_: start_registration(sender), weak=False)
    worker_shutdown.connect(stop_registration, weak=False)


_connect_signals()
