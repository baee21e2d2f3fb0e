"""What the reconciler sees, made by hand: a worker's job event applied in process, a job aged (its last
change and heartbeat moved back), and queue lengths as the broker would report them."""

from __future__ import annotations

import datetime as dt

from farm.messages import JobEvent


def _event(job_id: int, state: str, attempt: int = 1, **kw) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.coordinator.events import apply_event

    apply_event(JobEvent(job_id=job_id, attempt=attempt, worker="w1", state=state, **kw), get_settings())


def _age(job_id: int, seconds: float, *, heartbeat: bool = True) -> None:
    """Make the job look `seconds` old: its last change and (when `heartbeat`) its last heartbeat."""
    from farm.db.models import Job, utcnow
    from farm.db.session import session_scope

    then = utcnow() - dt.timedelta(seconds=seconds)
    with session_scope() as s:
        job = s.get(Job, job_id)
        job.updated_at = then
        job.heartbeat_at = then if heartbeat else None


def _sizes(**per_queue: int | None):  # type: ignore[no-untyped-def]
    return lambda queues: {q: per_queue.get(q.replace("-", "_"), 0) for q in queues}
