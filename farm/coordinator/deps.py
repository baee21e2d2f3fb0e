"""Runtime dependencies the farm's index lacks: find or submit a build for each, and wait.

A job whose wheel needs `requests` waits in `dep_wait` until a job that provides it (already
running, or submitted here from the newest matching upstream sdist) has published; then its
verification is sent again (the release: farm/coordinator/lifecycle.py). A requirement no upstream
sdist satisfies fails the job with that reason.

Jobs that wait on each other (a dependency cycle: A needs B, B needs A) are all built by then and
their wheels staged; none can be verified from the index alone, so they are released together, each
verified with the others' staged wheels beside the farm's index (`JobSpec.co_staged`). Each is
published on its own verification; one failing does not hold back the others.
"""

from __future__ import annotations

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator.intake import IntakePolicy, Release
from farm.coordinator.lifecycle import fail, release
from farm.db.models import Dependency, Job, Source
from farm.db.session import session_scope
from farm.db.states import DependencyState, JobState
from farm.errors import FarmError


def _python_version(tag: str) -> str:
    return f"{tag[2]}.{tag[3:]}"


def _existing_provider(session: Session, job: Job, req: Requirement) -> Job | None:
    rows = session.execute(
        select(Job, Source.version).join(Source, Job.source_id == Source.id)
        .where(Source.name == canonicalize_name(req.name), Job.platform == job.platform, Job.python == job.python,
               Job.state.notin_([JobState.FAILED, JobState.CANCELLED]))
        .order_by(Job.id.desc()))
    for provider, version in rows:
        if req.specifier.contains(version, prereleases=True):
            return provider
    return None


def wait_for(job_id: int, missing: list[str], settings: Settings) -> None:
    """Link the waiting job to a provider for each missing requirement, submitting builds as needed;
    release it at once when every provider has published already, fail it when one cannot be had."""
    from farm.coordinator.submit import submit
    from farm.index.upstream import Upstream

    links: dict[str, tuple[int | None, str | None]] = {}
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        platform, python = job.platform, job.python
        for line in missing:
            provider = _existing_provider(session, job, Requirement(line))
            if provider is not None:
                links[line] = (provider.id, None)
    unresolved = [m for m in missing if m not in links]
    policy = IntakePolicy.from_settings(settings)
    if unresolved:
        with Upstream(settings.upstream_index) as upstream:
            for line in unresolved:
                req = Requirement(line)
                try:
                    found = upstream.best_sdist(line, _python_version(python), accept=policy.accepts)
                except FarmError as exc:
                    found, reason = None, str(exc)
                else:
                    reason = f"no sdist on {settings.upstream_index} satisfies {line} for Python {_python_version(python)}"
                    if found is None and policy.active and (newest := upstream.best_sdist(line, _python_version(python))):
                        reason = f"the intake policy admits no release of {line}; the newest: " + str(
                            policy.refusal(Release(newest.project, newest.version, upload_time=newest.upload_time)))
                if found is None:
                    links[line] = (None, reason)
                    continue
                try:
                    sub = submit(f"{canonicalize_name(req.name)}=={found.version}", settings=settings,
                                 kind="dependency", parent_job_id=job_id, only_platforms=[platform],
                                 only_pythons=[python])
                except FarmError as exc:
                    links[line] = (None, f"{line}: {exc}")
                    continue
                links[line] = (sub.jobs[0][0], None) if sub.jobs else (None, f"{line}: nothing to build")
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.state != JobState.DEP_WAIT:
            return
        for line, (provider_id, reason) in links.items():
            dep = session.scalar(select(Dependency).where(Dependency.job_id == job_id, Dependency.requirement == line))
            if dep is None:
                dep = Dependency(job=job, requirement=line)
                session.add(dep)
            dep.dep_job_id, dep.reason = provider_id, reason
            provider = session.get(Job, provider_id) if provider_id else None
            if provider is None or provider.state == JobState.FAILED:
                dep.state = DependencyState.UNAVAILABLE
                dep.reason = reason or f"job {provider_id} failed"
            else:
                dep.state = DependencyState.MET if provider.state == JobState.SUCCEEDED else DependencyState.WAITING
        session.flush()
        unavailable = [d for d in job.dependencies if d.state == DependencyState.UNAVAILABLE]
        if unavailable:
            fail(session, job, "; ".join(f"dependency {d.requirement} cannot be had: {d.reason}"
                                         for d in unavailable), "dependency")
        else:
            release(session, job, settings)
