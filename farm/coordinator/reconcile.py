"""The reconciler: the database is the truth, the broker only transports.

A thread in `farm coordinator` compares the two every `reconcile_interval` seconds:

* a job in a running state (fetching ... uploading) with no sign of life for `lost_after` seconds
  (no heartbeat and no event: `job.heartbeat_at`, else `updated_at`) lost its worker. It goes back
  to `queued` through the transition table as attempt N+1 and its build message is sent again;
* a job `queued` for `lost_after` seconds that nobody consumed (no heartbeat) while its platform's
  queue holds no message at all lost its message (a broker that lost data, a submit whose send
  failed after the commit). It is sent again, also as a new attempt.

* a job in `publishing` for more than two passes holds a result whose publish failed (the index's
  disk, the storage, the database) or whose coordinator died: it is published from the recorded
  result (farm.coordinator.events.finish_publish), never built again;
* after a broker restart (Redis's run_id changed) queued jobs are judged in the same pass: a queue
  that came back empty lost its messages (no persistence), and they are sent again at once;
* a job in `dep_wait` whose dependency row still says `waiting` for a provider that has ended
  missed its release: the row was committed just after the provider's end looked for waiters
  (farm.coordinator.deps.wait_for links a provider without locking it). The row is settled as the
  provider's end would have settled it (met: released to verify; the provider failed or was
  cancelled: the job fails), once the job has not moved for a pass.

Every `10 * reconcile_interval` seconds, and once on start, the index is compared with the
database and repaired (farm.index.doctor, `grace` twice `lost_after`): what a crash between a
publish's commit and its page write left unlisted is listed, orphan files and `.tmp` files go.

A job lost `MAX_ATTEMPTS` times fails (a package that kills every worker it runs on). Nothing is
judged while the coordinator's own queue holds a backlog (the heartbeats may be in it), nor in the
first `lost_after` seconds after the coordinator starts, nor when the broker cannot be asked.

The trade-off: a worker that was only slow, or a message that was only late, makes a duplicate
delivery. That is harmless. Its attempt is older than the job's, so the coordinator drops its
events (farm.coordinator.events); the worker sees the stop marker (farm.liveness) before it starts
or at its next step, and stops; publishing is idempotent by wheel hash anyway
(farm.coordinator.publish). The cost is the duplicate's work, so `lost_after` should be many
heartbeats long (default 60 s with a 5 s heartbeat).

Queued jobs are judged only once their platform's queue has been empty for a quiet period (two
heartbeats and a pass): a job merely waiting behind others is never sent again (which would put it
at the back of the queue over and over), and a message a worker took a moment ago has time to show
it (its first event comes within milliseconds, a heartbeat within `heartbeat_interval`). A lost
message is noticed once the queue drains.

The moves themselves (requeue as a new attempt, fail) are farm/coordinator/lifecycle.py's, as is
`cancel` (re-exported here for `farm cancel` and the API): state `cancelled` is terminal, so any
later event is dropped and nothing is published, and a stop marker tells a worker running the job
to stop at its next step. Celery's revoke is not used: the farm's workers run without remote
control. Messages and stop markers go out only after the pass's transaction commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator.lifecycle import cancel, fail, release, requeue
from farm.db.models import Dependency, Job, Step, utcnow
from farm.db.session import after_commit, session_scope
from farm.db.states import RUNNING, TERMINAL, DependencyState, JobState, StepOutcome
from farm.liveness import request_stop
from farm.messages import COORDINATOR_QUEUE, Heartbeat
from farm.storage import get_storage

__all__ = ["MAX_ATTEMPTS", "Pass", "Reconciler", "cancel", "queue_sizes", "reconcile_once", "record_heartbeat"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # attempts lost (worker gone, message gone) before the job fails
BACKLOG_LIMIT = 200  # coordinator queue messages above which liveness is not judged
BATCH = 500  # jobs handled per pass
_RUNNING = sorted(RUNNING)
_TERMINAL = sorted(TERMINAL)

Sizes = Callable[[Iterable[str]], dict[str, int | None]]


@dataclass
class Pass:
    requeued: list[int] = field(default_factory=list)  # running, worker lost: sent again
    resent: list[int] = field(default_factory=list)  # queued, message lost: sent again
    failed: list[int] = field(default_factory=list)  # lost too often
    published: list[int] = field(default_factory=list)  # a publish that had failed, finished now
    settled: list[int] = field(default_factory=list)  # in dep_wait on a provider that had ended: released or failed
    skipped: str | None = None  # why nothing was judged
    broker_restarted: bool = False  # the broker is another process than last pass (Redis run_id)


def record_heartbeat(beat: Heartbeat) -> bool:
    """Note a sign of life of the attempt a worker runs; False when that attempt no longer counts."""
    with session_scope() as session:
        result = session.execute(
            update(Job).where(Job.id == beat.job_id, Job.attempt == beat.attempt, Job.state.notin_(_TERMINAL))
            .values(heartbeat_at=utcnow(), updated_at=Job.updated_at))  # a heartbeat is no state change
        return bool(result.rowcount)  # type: ignore[attr-defined]


def queue_sizes(queues: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue (None for every queue when the broker cannot be asked)."""
    from amqp.exceptions import ChannelError

    from farm.coordinator.app import get_app

    names = list(dict.fromkeys(queues))
    sizes: dict[str, int | None] = {}
    try:
        with get_app().connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.channel()
            for name in names:
                try:
                    sizes[name] = channel.queue_declare(queue=name, passive=True).message_count
                except ChannelError:  # no such queue: nothing waits in it
                    sizes[name] = 0
                    channel = conn.channel()
            channel.close()
    except Exception as exc:  # noqa: BLE001 - any broker trouble means: judge nothing this time
        log.warning("reconciler: the broker cannot be asked for queue sizes: %s", exc)
        return dict.fromkeys(names)
    return sizes


def broker_identity() -> str | None:
    """Which broker process answers (Redis's run_id, new at every start); None when unknown."""
    from farm.coordinator.app import get_app

    app = get_app()
    if not str(app.conf.broker_url or "").startswith("redis"):
        return None
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            return str(conn.default_channel.client.info("server").get("run_id")) or None
    except Exception as exc:  # noqa: BLE001 - unknown this time
        log.debug("reconciler: broker identity unknown: %s", exc)
        return None


_EMPTY_SINCE: dict[str, float] = {}  # platform queue -> since when (monotonic) it was seen empty
_BROKER: dict[str, str] = {}  # "id": the broker's identity at the last pass


def _restarted(identity: str | None, seen: dict[str, str]) -> bool:
    if identity is None:
        return False
    before = seen.get("id")
    seen["id"] = identity
    return before is not None and before != identity


def reconcile_once(settings: Settings, *, sizes: Sizes = queue_sizes,
                   empty_since: dict[str, float] | None = None,
                   identity: Callable[[], str | None] = broker_identity,
                   broker_seen: dict[str, str] | None = None) -> Pass:
    """One pass: finish publishes that failed, send again what the broker lost, or what a lost worker held.

    After a broker restart (its identity changed) the queued jobs are judged at once: a queue that is
    empty then has lost its messages (a broker without persistence), and they are sent again in this
    pass instead of after `lost_after` and a quiet period."""
    empty_since = _EMPTY_SINCE if empty_since is None else empty_since
    restarted = _restarted(identity(), _BROKER if broker_seen is None else broker_seen)
    published = _finish_publishes(settings)
    settled = _settle_waiters(settings)
    quiet = 2 * settings.heartbeat_interval + settings.reconcile_interval
    now_ts = utcnow()
    cutoff = now_ts - dt.timedelta(seconds=settings.lost_after)
    # Queued since before the restart, and no heartbeat lately (a worker retrying it in place beats).
    queued_cutoff = now_ts if restarted else cutoff
    beat_cutoff = now_ts - dt.timedelta(seconds=2 * settings.heartbeat_interval) if restarted else cutoff
    stale_queued = (Job.state == JobState.QUEUED, Job.cached_from_id.is_(None), Job.updated_at < queued_cutoff,
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < beat_cutoff))
    with session_scope() as session:
        platforms = set(session.scalars(select(Job.platform).where(*stale_queued).distinct()))
    waiting = sizes([COORDINATOR_QUEUE, *sorted(platforms)])
    backlog = waiting.get(COORDINATOR_QUEUE)
    if backlog is None:
        if restarted:
            _BROKER.clear()  # judge the restart again at the next pass that reaches the broker
        return Pass(published=published, settled=settled, skipped="the broker cannot be asked")
    if backlog > BACKLOG_LIMIT:
        return Pass(published=published, settled=settled,
                    skipped=f"{backlog} messages wait for the coordinator; liveness is not judged")
    result = Pass(published=published, settled=settled, broker_restarted=restarted)
    stops: list[tuple[int, int]] = []
    with session_scope() as session:
        after_commit(session, lambda: _stop_older(stops))  # before the new attempts' messages go out
        last_sign = func.coalesce(Job.heartbeat_at, Job.updated_at)
        lost = session.scalars(select(Job).where(Job.state.in_(_RUNNING), last_sign < cutoff)
                               .order_by(Job.id).limit(BATCH).with_for_update(skip_locked=True)).all()
        now = time.monotonic()
        for platform in platforms:
            if waiting.get(platform) == 0:
                empty_since.setdefault(platform, now - quiet if restarted else now)
            else:
                empty_since.pop(platform, None)
        drained = [p for p in platforms if p in empty_since and now - empty_since[p] >= quiet]
        unconsumed = session.scalars(select(Job).where(*stale_queued, Job.platform.in_(drained))
                                     .order_by(Job.id).limit(BATCH).with_for_update(skip_locked=True)).all()
        for job, kind in [*((j, "worker") for j in lost), *((j, "message") for j in unconsumed)]:
            _again(session, job, kind, result, stops, settings)
    return result


def _finish_publishes(settings: Settings) -> list[int]:
    """Try again the publishes an infrastructure fault stopped, or a coordinator that died left
    (jobs in `publishing` for more than a pass; farm.coordinator.events.finish_publish)."""
    from farm.coordinator.events import finish_publish

    since = utcnow() - dt.timedelta(seconds=max(2 * settings.reconcile_interval, 2.0))
    with session_scope() as session:
        ids = list(session.scalars(select(Job.id).where(Job.state == JobState.PUBLISHING, Job.updated_at < since)
                                   .order_by(Job.id).limit(BATCH)))
    done = []
    for job_id in ids:
        try:
            if finish_publish(job_id, settings):
                done.append(job_id)
        except Exception:
            log.exception("reconciler: publishing job %s failed", job_id)
    return done


def _settle_waiters(settings: Settings) -> list[int]:
    """Release or fail the jobs in dep_wait that wait on a provider which has ended (see the module's
    docstring); the ids of the jobs settled."""
    since = utcnow() - dt.timedelta(seconds=max(settings.reconcile_interval, 1.0))
    provider_state = select(Job.state).where(Job.id == Dependency.dep_job_id).scalar_subquery()
    settled = []
    with session_scope() as session:
        waiters = session.scalars(
            select(Job).where(Job.state == JobState.DEP_WAIT, Job.updated_at < since,
                              Job.id.in_(select(Dependency.job_id).where(
                                  Dependency.state == DependencyState.WAITING,
                                  provider_state.in_([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]))))
            .order_by(Job.id).limit(BATCH).with_for_update(skip_locked=True)).all()
        for job in waiters:
            for dep in job.dependencies:
                provider = session.get(Job, dep.dep_job_id) if dep.dep_job_id else None
                if dep.state != DependencyState.WAITING or provider is None:
                    continue
                if provider.state == JobState.SUCCEEDED:
                    dep.state = DependencyState.MET
                elif provider.state in (JobState.FAILED, JobState.CANCELLED):
                    dep.state, dep.reason = DependencyState.UNAVAILABLE, f"job {provider.id} {provider.state}"
            session.flush()
            unavailable = [d for d in job.dependencies if d.state == DependencyState.UNAVAILABLE]
            if unavailable:
                fail(session, job, "; ".join(f"dependency {d.requirement} could not be built ({d.reason})"
                                             for d in unavailable), "dependency", settings)
            elif not release(session, job, settings):
                continue
            log.warning("job %s: waited on a provider that had ended; %s", job.id,
                        "failed" if unavailable else "released to verify")
            settled.append(job.id)
    return settled


def _stop_older(stops: list[tuple[int, int]]) -> None:
    storage = get_storage()
    for job_id, below in stops:
        request_stop(storage, job_id, below=below, reason=f"attempt {below} replaced the older ones")


def _again(session: Session, job: Job, kind: str, result: Pass, stops: list[tuple[int, int]],
           settings: Settings) -> None:
    """Send `job` again as a new attempt (or fail it when it was lost too often)."""
    now = utcnow()
    seen = job.heartbeat_at or job.updated_at
    age = (now - seen).total_seconds() if seen else 0.0
    what = (f"attempt {job.attempt}: no sign of life from {job.worker or 'its worker'} for {age:.0f} s"
            if kind == "worker" else f"attempt {job.attempt}: queued {age:.0f} s and nobody took its message")
    for step in session.scalars(select(Step).where(Step.job_id == job.id, Step.attempt == job.attempt,
                                                   Step.outcome == StepOutcome.RUNNING)):
        step.outcome, step.finished_at = StepOutcome.LOST, now
    if job.attempt >= MAX_ATTEMPTS:
        log.warning("job %s: %s; lost %s times, failing it", job.id, what, job.attempt)
        result.failed.append(job.id)
        stops.append((job.id, job.attempt + 1))
        fail(session, job, f"{what}; gave up after {job.attempt} lost attempts", "infrastructure")
        return
    requeue(session, job, settings, why=what)
    log.warning("job %s: %s", job.id, job.error)
    (result.requeued if kind == "worker" else result.resent).append(job.id)
    stops.append((job.id, job.attempt))


class Reconciler(threading.Thread):
    """Runs `reconcile_once` every `reconcile_interval` s, the first time `lost_after` s after start."""

    def __init__(self, settings: Settings, *, first_after: float | None = None) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings
        self.first_after = settings.lost_after if first_after is None else first_after
        self.passes: list[Pass] = []
        self._stop = threading.Event()

    def run(self) -> None:
        self.doctor()  # on start: what a crash left in the index
        last_doctor = time.monotonic()
        _restarted(broker_identity(), _BROKER)  # the broker as the coordinator found it
        if self._stop.wait(self.first_after):
            return
        while True:
            started = time.monotonic()
            try:
                done = reconcile_once(self.settings)
                if done.requeued or done.resent or done.failed or done.published:
                    log.warning("reconciler: sent again %s (worker lost), %s (message lost); failed %s; "
                                "published %s", done.requeued, done.resent, done.failed, done.published)
                elif done.skipped:
                    log.info("reconciler: %s", done.skipped)
                self.passes = [*self.passes[-99:], done]
            except Exception:
                log.exception("reconciler pass failed")
            if started - last_doctor >= doctor_interval(self.settings):
                self.doctor()
                last_doctor = started
            if self._stop.wait(max(0.0, self.settings.reconcile_interval - (time.monotonic() - started))):
                return

    def stop(self) -> None:
        self._stop.set()

    def doctor(self) -> list[Any]:
        """Compare the index with the database and repair it (farm.index.doctor), logging what was fixed."""
        from farm.index import doctor

        try:
            with session_scope() as session:
                found = doctor.examine(session, self.settings, fix=True, grace=doctor_grace(self.settings))
        except Exception:
            log.exception("index doctor failed")
            return []
        for finding in found:
            log.warning("index doctor: %s", finding)
        return found


def doctor_interval(settings: Settings) -> float:
    """Seconds between the reconciler's index checks: ten passes."""
    return 10 * settings.reconcile_interval


def doctor_grace(settings: Settings) -> float:
    """How old an unlisted file or a listing without a row must be before the reconciler's doctor
    removes it: a publish writes its files before its transaction commits, which takes far less than
    `lost_after`."""
    return 2 * settings.lost_after
