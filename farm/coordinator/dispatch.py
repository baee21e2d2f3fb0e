"""Turning Job rows into build messages, sent only once the rows are committed.

Code that changes jobs queues their messages on its session (`send_after_commit`); `session_scope`
sends them after the commit, and drops them when the transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Job
from farm.db.session import after_commit
from farm.messages import BUILD_TASK, BuildRecord, JobSpec, SdistRef, StagedWheel
from farm.tokens import storage_capability


def job_spec(job: Job, settings: Settings, *, resume: str = "build",
             co_staged: list[StagedWheel] | None = None) -> JobSpec:
    """The build message for the job's current attempt, with that attempt's storage capability."""
    src = job.source
    return JobSpec(
        job_id=job.id, attempt=job.attempt, name=src.name, version=src.version,
        sdist=SdistRef(filename=src.filename, sha256=src.sha256, size=src.size, storage_key=src.storage_key),
        platform=job.platform, python=job.python, build_id=job.build_id, engine=job.engine,
        recipe_name=job.recipe_name, recipe_digest=job.recipe_digest, options=job.recipe,
        upstream_index=settings.upstream_index, resume=resume,  # type: ignore[arg-type]
        build=BuildRecord.load(job.staged) if resume == "verify" else None, priority=job.priority or 0,
        co_staged=list(co_staged or []), storage_capability=storage_capability(settings.home, job.id, job.attempt),
        build_tag=job.build_tag, rebuild_reason=job.rebuild_reason,
    )


def broker_priority(priority: int, broker_url: str) -> int:
    """The message priority for a job's priority (0-9, higher first; clamped).

    Redis serves its priority 0 first (kombu's `priority` queue order), AMQP brokers the highest
    number, so Redis gets the job's priority reversed.
    """
    p = min(max(int(priority), 0), 9)
    return 9 - p if broker_url.startswith(("redis", "rediss")) else p


_QUEUED = "farm.followups"


def send_after_commit(session: Session, specs: Iterable[JobSpec]) -> None:
    """Queue build messages on `session`: sent once, in order, after its transaction commits."""
    specs = list(specs)
    if not specs:
        return
    if _QUEUED not in session.info:
        batch: list[JobSpec] = []
        session.info[_QUEUED] = batch
        after_commit(session, lambda: send(batch))  # `send` looked up when it runs
    session.info[_QUEUED].extend(specs)


def send(specs: Iterable[JobSpec]) -> None:
    """Publish build messages. Call only after the transaction that created the jobs committed
    (`send_after_commit` does that for a session's messages)."""
    specs = list(specs)
    if not specs:  # a cache answer: no need for the Celery app at all
        return
    from farm.coordinator.app import get_app

    app = get_app()
    url = app.conf.broker_url or ""
    for spec in specs:
        app.send_task(BUILD_TASK, args=[spec.model_dump(mode="json")], queue=spec.platform,
                      priority=broker_priority(spec.priority, url))
