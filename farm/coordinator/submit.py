"""Submit: an sdist file or a requirement becomes a Source, planned Jobs, and build messages.

Everything is checked before anything is recorded: the archive is inspected without being
unpacked (hostile members, size, PEP 625 name and version), a download is checked against the
upstream index's sha256. Identical inputs (the cache key) are never built twice: the new job
points at the existing one and, when that one succeeded, is answered at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator import dispatch
from farm.coordinator.plan import plan
from farm.db.models import Job, Source, Submission, utcnow
from farm.db.session import session_scope
from farm.db.states import JobState
from farm.errors import FarmError, UpstreamError
from farm.storage import get_storage, sdist_key
from farm.util.archive import Limits, inspect_sdist
from farm.util.hashing import sha256_file

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")


@dataclass(frozen=True, kw_only=True)
class Submitted:
    submission_id: int
    name: str
    version: str
    jobs: list[tuple[int, str, str]]  # (job id, build id, state)


def is_file_request(request: str) -> bool:
    return request.endswith(SDIST_SUFFIXES) or Path(request).exists()


def submit(request: str, *, settings: Settings, kind: str | None = None, parent_job_id: int | None = None,
           only_platforms: Sequence[str] | None = None, only_pythons: Sequence[str] | None = None) -> Submitted:
    if is_file_request(request):
        source_fields = _from_file(Path(request), settings)
        kind = kind or "file"
    else:
        source_fields = None
        kind = kind or "requirement"
    with session_scope() as session:
        if source_fields is None:
            source = _from_requirement(request, session, settings)
        else:
            source = session.scalar(select(Source).where(Source.sha256 == source_fields["sha256"]))
            if source is None:
                source = Source(**source_fields)
                session.add(source)
                session.flush()
        submission = Submission(kind=kind, request=request, parent_job_id=parent_job_id)
        session.add(submission)
        session.flush()
        to_send = _plan_jobs(session, submission, source, settings, only_platforms, only_pythons)
        result = Submitted(submission_id=submission.id, name=source.name, version=source.version,
                           jobs=[(j.id, j.build_id, j.state) for j in submission.jobs])
        specs = [dispatch.job_spec(j, settings) for j in to_send]
    dispatch.send(specs)  # only after the commit
    return result


def _plan_jobs(session: Session, submission: Submission, source: Source, settings: Settings,
               only_platforms: Sequence[str] | None, only_pythons: Sequence[str] | None) -> list[Job]:
    targets = plan(name=source.name, version=source.version, sdist_sha256=source.sha256,
                   requires_python=source.requires_python, settings=settings,
                   only_platforms=only_platforms, only_pythons=only_pythons)
    if not targets:
        raise FarmError(f"{source.name} {source.version}: no build target on this farm "
                        f"(platforms {settings.platforms or 'host'}, Requires-Python {source.requires_python or 'any'})")
    to_send = []
    for t in targets:
        earlier = session.scalar(
            select(Job).where(Job.cache_key == t.cache_key, Job.cached_from_id.is_(None),
                              Job.state.notin_([JobState.FAILED.value, JobState.CANCELLED.value]))
            .order_by(Job.id.desc()).limit(1))
        job = Job(submission=submission, source=source, platform=t.platform, python=t.python, build_id=t.build_id,
                  engine=t.engine, recipe_name=t.recipe_name, recipe_digest=t.recipe_digest, recipe=t.options,
                  cache_key=t.cache_key, state=JobState.QUEUED.value, attempt=1)
        if earlier is not None:
            job.cached_from_id = earlier.id
            if earlier.state == JobState.SUCCEEDED.value:
                job.move(JobState.SUCCEEDED)
                job.finished_at = utcnow()
        session.add(job)
        if earlier is None:
            to_send.append(job)
    session.flush()
    return to_send


def _from_file(path: Path, settings: Settings) -> dict:
    if not path.is_file():
        raise FarmError(f"{path}: no such file")
    info = inspect_sdist(path, Limits.from_settings(settings))
    digest = sha256_file(path)
    storage = get_storage()
    key = sdist_key(digest, path.name)
    if not storage.exists(key):
        storage.put_file(key, path)
    return {"sha256": digest, "name": info.name, "version": info.version, "filename": path.name,
            "size": path.stat().st_size, "storage_key": key, "requires_python": info.requires_python}


def _from_requirement(request: str, session: Session, settings: Settings) -> Source:
    try:
        req = Requirement(request)
    except InvalidRequirement as exc:
        raise FarmError(f"{request!r} is neither an sdist file nor a requirement like NAME==VERSION: {exc}") from None
    name = canonicalize_name(req.name)
    pins = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    if pins:
        try:
            version = str(Version(pins[0]))
        except InvalidVersion as exc:
            raise FarmError(f"{request!r}: {exc}") from None
        # Already fetched and checked once: no need to ask upstream again.
        known = session.scalar(select(Source).where(Source.name == name, Source.version == version,
                                                    Source.upstream_url.is_not(None)).limit(1))
        if known is not None:
            return known
    from farm.index.upstream import Upstream

    with Upstream(settings.upstream_index) as upstream:
        if pins:
            file = upstream.find_sdist(name, version)
        else:
            import platform as _platform

            found = upstream.best_sdist(str(req), ".".join(_platform.python_version_tuple()[:2]))
            if found is None:
                raise UpstreamError(f"no sdist on {settings.upstream_index} satisfies {request!r}")
            file = found
        if file.sha256:
            known = session.scalar(select(Source).where(Source.sha256 == file.sha256))
            if known is not None:
                return known
        tmp_root = settings.home / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
            path = upstream.download(file, Path(tmp))
            if not file.sha256:
                raise UpstreamError(f"{file.url}: the index gives no sha256, so the download cannot be checked")
            info = inspect_sdist(path, Limits.from_settings(settings), expect_name=name, expect_version=file.version)
            key = sdist_key(file.sha256, path.name)
            size = path.stat().st_size
            get_storage().put_file(key, path)
    source = Source(sha256=file.sha256, name=info.name, version=info.version, filename=path.name,
                    size=size, storage_key=key, upstream_url=file.url,
                    requires_python=info.requires_python or file.requires_python)
    session.add(source)
    session.flush()
    return source


__all__ = ["Submitted", "is_file_request", "submit"]
