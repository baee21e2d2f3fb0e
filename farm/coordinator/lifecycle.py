"""How a job ends or starts over: succeed, fail, cancel, requeue, release.

Every move goes through the transition table (`Job.move`, farm/db/states.py). What a move implies
for other jobs happens here too: the jobs that reused a job (`cached_from`, same inputs) share its
end, and the jobs waiting for it as a dependency are released when it succeeds, and fail when it
fails or is cancelled. A dependency cycle (A needs B, B needs A) is released as a whole: its jobs
are verified together, each with the others' staged wheels beside the farm's index
(`JobSpec.co_staged`).

The build messages a move calls for are queued on the session (`dispatch.send_after_commit`) and
sent once its transaction commits; a rollback sends nothing. A released job's message goes out only
after the pages of what it waited for list the providers' wheels (`_send_listed`): its verification
resolves against the farm's index, and a provider's pages are written after its own commit, by its
own process, which may not have happened yet (or failed, for the index doctor to finish later). Stop markers (farm.liveness) for a
cancelled job are written after the commit too.

Callers: farm/coordinator/events.py (what workers report), deps.py (missing dependencies),
reconcile.py (lost workers and messages), and `farm cancel` / the API through `cancel`.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings, get_settings
from farm.coordinator import dispatch
from farm.db.models import Artifact, Dependency, Job, utcnow
from farm.db.session import after_commit, session_scope
from farm.db.states import TERMINAL, DependencyState, JobState
from farm.errors import NotFound, StateError
from farm.liveness import request_stop
from farm.messages import BuildRecord, JobSpec
from farm.storage import get_storage

log = logging.getLogger(__name__)


def _reusing(session: Session, job: Job) -> list[Job]:
    """The queued jobs that wait for `job`'s result instead of building (identical inputs)."""
    return list(session.scalars(select(Job).where(Job.cached_from_id == job.id, Job.state == JobState.QUEUED)))


def _waiting_for(session: Session, job: Job) -> list[Dependency]:
    """The dependencies still waiting for `job` to publish."""
    return list(session.scalars(select(Dependency).where(Dependency.dep_job_id == job.id,
                                                         Dependency.state == DependencyState.WAITING)))


def _ended(session: Session, job: Job, how: str) -> None:
    """Once the end is committed, a stop marker: a build message of the job that comes back (Redis
    redelivers an unacknowledged message after its visibility timeout) is skipped by the worker
    instead of building again and writing over the result."""
    job_id = job.id

    def mark() -> None:
        try:
            request_stop(get_storage(), job_id, below=None, reason=f"the job {how}")
        except Exception as exc:  # noqa: BLE001 - only an optimization: its events are dropped anyway
            log.warning("job %s: stop marker not written: %s", job_id, exc)

    try:
        after_commit(session, mark)
    except RuntimeError:  # a session outside session_scope (tests, one-off tools): nothing to mark after
        pass


def _withdraw(session: Session, job: Job, settings: Settings) -> None:
    """A failed job lists nothing: its live artifacts (should it have any) are removed, and once the
    removal is committed their project pages and folders are rewritten from the database."""
    from farm.index import channels

    arts = [a for a in session.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.removed_at.is_(None)))]
    if not arts:
        return
    for art in arts:
        art.removed_at = utcnow()
    projects = sorted({a.name for a in arts})
    log.warning("job %s failed: withdrawing %s", job.id, ", ".join(a.filename for a in arts))

    def rewrite() -> None:
        with session_scope() as s:
            for project in projects:
                channels.regenerate(s, settings, project)
                channels.drop_unlisted(settings, project, [a.filename for a in arts])

    after_commit(session, rewrite)


def succeed(session: Session, job: Job, settings: Settings) -> None:
    """Mark `job` succeeded, and with it the jobs that reused it; release the jobs that waited for it."""
    if job.state != JobState.SUCCEEDED:
        job.move(JobState.SUCCEEDED)
    _ended(session, job, "succeeded")
    job.finished_at = utcnow()
    job.error = None
    for follower in _reusing(session, job):
        succeed(session, follower, settings)
    for dep in _waiting_for(session, job):
        dep.state = DependencyState.MET
        session.flush()
        release(session, dep.job, settings)


def fail(session: Session, job: Job, error: str, kind: str, settings: Settings | None = None) -> None:
    """Mark `job` failed, and with it the jobs that reused it and the jobs that needed it; withdraw
    whatever it had published."""
    if job.state != JobState.FAILED:
        job.move(JobState.FAILED)
    _ended(session, job, "failed")
    _withdraw(session, job, settings or get_settings())
    job.finished_at = utcnow()
    job.error, job.failure_kind = error, kind
    for follower in _reusing(session, job):
        fail(session, follower, f"the identical build, job {job.id}, failed: {error}", kind)
    for dep in _waiting_for(session, job):
        dep.state, dep.reason = DependencyState.UNAVAILABLE, f"job {job.id} failed"
        if dep.job.state == JobState.DEP_WAIT:
            fail(session, dep.job, f"dependency {dep.requirement} could not be built "
                 f"(job {job.id}: {error.splitlines()[0] if error else 'failed'})", "dependency")


def cancel(job_id: int, settings: Settings) -> str:
    """Cancel a job that has not ended; say what was cancelled.

    The jobs reusing it are cancelled too, jobs waiting for it as a dependency fail, and once the
    transaction commits a stop marker tells a worker running any of them to stop at its next step.
    """
    cancelled: list[int] = []
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state in TERMINAL:
            raise StateError(f"job {job_id} already ended: {job.state}")
        after_commit(session, lambda: _stop_all(cancelled))
        _cancel(session, job, "cancelled", cancelled)
    also = f" (and job{'s' if len(cancelled) > 2 else ''} {', '.join(map(str, cancelled[1:]))} reusing it)" \
        if len(cancelled) > 1 else ""
    return f"job {job_id}: cancelled{also}"


def _stop_all(job_ids: list[int]) -> None:
    storage = get_storage()
    for job_id in job_ids:
        request_stop(storage, job_id, below=None, reason="the job was cancelled")


def _cancel(session: Session, job: Job, reason: str, cancelled: list[int]) -> None:
    job.move(JobState.CANCELLED)
    job.finished_at, job.error = utcnow(), reason
    cancelled.append(job.id)
    for follower in _reusing(session, job):
        _cancel(session, follower, f"the identical build, job {job.id}, was cancelled", cancelled)
    for dep in _waiting_for(session, job):
        dep.state, dep.reason = DependencyState.UNAVAILABLE, f"job {job.id} was cancelled"
        if dep.job.state == JobState.DEP_WAIT:
            fail(session, dep.job, f"dependency {dep.requirement} will not be built "
                 f"(job {job.id} was cancelled)", "dependency")


def requeue(session: Session, job: Job, settings: Settings, *, why: str) -> None:
    """Send `job` again as a new attempt (N+1): back to `queued`, its old worker forgotten.

    A job that had staged its wheels (it was released from dep_wait) only verifies again. Events of
    older attempts are dropped from now on (farm.coordinator.events); stopping a worker that may
    still run one is the caller's affair (farm.coordinator.reconcile writes the stop marker).
    """
    if job.state != JobState.QUEUED:
        job.move(JobState.QUEUED)
    job.attempt += 1
    job.heartbeat_at, job.worker, job.started_at = None, None, None
    job.error = f"{why}; sent again as attempt {job.attempt}"
    session.flush()
    dispatch.send_after_commit(session, [
        dispatch.job_spec(job, settings, resume="verify" if BuildRecord.load(job.staged).wheels else "build")])


def release(session: Session, job: Job, settings: Settings) -> bool:
    """Send a job waiting in dep_wait back to verification when it can go: all its dependencies are
    met, or it is in a cycle of jobs that wait only on each other. Whether it was released."""
    return _release_if_ready(session, job, settings) or _release_cycle(session, job, settings)


def _release_if_ready(session: Session, job: Job, settings: Settings) -> bool:
    if job.state != JobState.DEP_WAIT or any(d.state != DependencyState.MET for d in job.dependencies):
        return False
    job.move(JobState.QUEUED)
    session.flush()
    log.info("job %s: dependencies published, verifying again", job.id)
    _send_listed(session, [job], [dispatch.job_spec(job, settings, resume="verify")], settings)
    return True


def _send_listed(session: Session, waiters: list[Job], specs: list[JobSpec], settings: Settings) -> None:
    """After the commit: list on the pages what the providers of `waiters`' met dependencies published
    (`publish.list_pages`: adds only what a page lacks, under the index lock), then send `specs`.

    The provider's own publish lists them after its commit, but a waiter may be released before that
    has run: in another process (its dependency row linked once the provider had committed), or in
    this one after a listing that failed. A message sent then meets an index without the dependency."""
    providers = {d.dep_job_id for w in waiters for d in w.dependencies
                 if d.state == DependencyState.MET and d.dep_job_id is not None}
    if providers:  # a job that reused an identical build has its original's artifacts
        providers |= set(session.scalars(select(Job.cached_from_id).where(
            Job.id.in_(providers), Job.cached_from_id.is_not(None))))
    projects = sorted(set(session.scalars(select(Artifact.name).where(
        Artifact.job_id.in_(providers), Artifact.removed_at.is_(None))))) if providers else []

    def go() -> None:
        from farm.coordinator.publish import list_pages

        if projects:
            list_pages(settings, projects)
        dispatch.send(specs)

    after_commit(session, go)


def _cycle_with(session: Session, job: Job) -> list[Job]:
    """The jobs `job` waits on, directly or through each other, when all of them are in dep_wait and
    wait on nothing else (so they wait on each other: a cycle); [] otherwise."""
    members: dict[int, Job] = {job.id: job}
    stack = [job]
    while stack:
        current = stack.pop()
        for dep in current.dependencies:
            if dep.state == DependencyState.MET:
                continue
            provider = session.get(Job, dep.dep_job_id) \
                if dep.state == DependencyState.WAITING and dep.dep_job_id else None
            if provider is None or provider.state != JobState.DEP_WAIT:
                return []  # unavailable, or a provider still building: not a cycle (yet)
            if provider.id not in members:
                members[provider.id] = provider
                stack.append(provider)
    return list(members.values()) if len(members) > 1 else []


def _release_cycle(session: Session, job: Job, settings: Settings) -> bool:
    members = _cycle_with(session, job) if job.state == JobState.DEP_WAIT else []
    if not members:
        return False
    staged = {m.id: BuildRecord.load(m.staged).wheels for m in members}
    specs = []
    for m in members:
        m.move(JobState.QUEUED)
        others = [w for o in members if o.id != m.id for w in staged[o.id]]
        specs.append(dispatch.job_spec(m, settings, resume="verify", co_staged=others))
    session.flush()
    log.info("jobs %s wait on each other: verifying them together", ", ".join(str(m.id) for m in members))
    _send_listed(session, members, specs, settings)
    return True
