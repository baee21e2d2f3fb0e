"""Submit: an sdist file or a requirement becomes a Source, planned Jobs, and build messages.

Everything is checked before anything is recorded: the archive is inspected without being
unpacked (hostile members, size, PEP 625 name and version, ASCII project names, the top-level
directory), a download is checked against the upstream index's sha256, a requirement's name must
be an ASCII project name. Identical inputs (the cache key) are never built twice: the new job
points at the existing one and, when that one succeeded, is answered at once.

The intake policy (farm/coordinator/intake.py: allow and deny lists, a release cool-down) is applied
before anything is recorded: a range takes the newest release the policy admits, an exact pin that
it refuses is `IntakeRefused` with the rule's reason; dependencies the farm submits get the same.

A requirements file is one submission (`submit_many`): its items' sdists are all resolved and
checked first (a `--hash` too: the sdist's sha256 must be one of the line's), then one `submission`
row holds the jobs of them all (each job names its own source); markers are evaluated for the farm's
targets and a line none of them admits is skipped. A line with extras (`name[extra]`) brings the
requirements those extras add into the same submission (read from the sdist's final PEP 643
metadata; an sdist whose requirements are dynamic gets a warning instead), and theirs in turn.

Two submissions of the same new sdist at once (several CLIs, API requests) record one `source` row:
it is inserted with INSERT ... ON CONFLICT (sha256) DO NOTHING and then read back, so the second
waits for the first's transaction and reuses its row instead of failing on the unique sha256.
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version
from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator import dispatch
from farm.coordinator.intake import IntakePolicy, Release
from farm.coordinator.plan import SdistKind, declares_python2, plan, sdist_kind, target_pythons
from farm.db.models import Artifact, Job, Source, Submission, utcnow
from farm.db.session import session_scope
from farm.db.states import JobState
from farm.errors import FarmError, IntakeRefused, SdistError, UpstreamError
from farm.storage import get_storage, sdist_key
from farm.util.archive import SDIST_SUFFIXES, Limits, check_project_name, inspect_sdist, is_file_request
from farm.util.hashing import sha256_bytes, sha256_file
from farm.util.python_tags import dotted

@dataclass(frozen=True, kw_only=True)
class Submitted:
    submission_id: int
    name: str
    version: str
    jobs: list[tuple[int, str, JobState]]  # (job id, build id, state)
    warnings: list[str] = field(default_factory=list)  # jobs no live worker serves, and why


def submit(request: str, *, settings: Settings, kind: str | None = None, parent_job_id: int | None = None,
           only_platforms: Sequence[str] | None = None, only_pythons: Sequence[str] | None = None,
           from_file: bool | None = None, priority: int = 0, rebuild: str | None = None) -> Submitted:
    """Record a submission and its jobs; send their build messages after the commit.

    The sdist is copied into storage only once its jobs are planned, so a rejected submission
    leaves nothing behind. `from_file` says what `request` is (None: guess, a file if it exists).
    `priority` (0-9, higher first) orders the jobs' build messages where the broker supports it.
    `rebuild` (the reason) builds again what was built already: each job gets the next PEP 427 build
    tag of its target, so its wheels get new file names beside the published ones (which never change).
    """
    if rebuild is not None and not rebuild.strip():
        raise FarmError("a rebuild needs a reason (it is recorded with the job and in the provenance)")
    from_file = is_file_request(request) if from_file is None else from_file
    marker = None if from_file else _marker_of(request, request, strict=False)
    pythons = [] if from_file else _pythons_for(request, marker, settings, only_platforms, only_pythons)
    with ExitStack() as stack:
        with session_scope() as session:
            source, pending = _source_for(request, from_file, session, settings, stack, kind=kind, pythons=pythons)
            submission = Submission(kind=kind or ("file" if from_file else "requirement"), request=request,
                                    parent_job_id=parent_job_id)
            session.add(submission)
            session.flush()
            storage = get_storage()
            sdist = pending if pending is not None else storage.local_path(source.storage_key)
            to_send, warnings = _plan_jobs(session, submission, source, settings, only_platforms, only_pythons,
                                           priority, rebuild=rebuild.strip() if rebuild else None,
                                           kind=sdist_kind(sdist), marker=marker, python2=declares_python2(sdist))
            if pending is not None and not storage.exists(source.storage_key):
                storage.put_file(source.storage_key, pending)
            result = Submitted(submission_id=submission.id, name=source.name, version=source.version,
                               jobs=[(j.id, j.build_id, j.state) for j in submission.jobs], warnings=warnings)
            dispatch.send_after_commit(session, [dispatch.job_spec(j, settings) for j in to_send])
    return result


class Item(Protocol):
    """One line of a requirements file (farm/cli/requirements.py's `Item`, the API's body): a
    requirement or an sdist path, and the sha256 digests its sdist must have (empty: unchecked)."""

    request: str
    from_file: bool
    sha256: frozenset[str]
    origin: str  # FILE:LINE, for the messages


@dataclass(frozen=True, kw_only=True)
class SubmittedMany:
    sources: list[Submitted]  # one per sdist, all of one submission
    skipped: list[str]  # items whose marker admits none of the farm's targets


def target_environments(settings: Settings) -> list[dict[str, str]]:
    """The PEP 508 marker environment of every target the farm plans (its platforms x their Pythons)."""
    from farm.coordinator.plan import platforms_for, pythons_for
    from farm.worker.platforms import marker_environment

    return [marker_environment(platform, python) for platform in platforms_for(settings, None)
            for python, _ in pythons_for(settings, platform)]


def _marker_of(request: str, origin: str, *, strict: bool = True) -> Marker | None:
    """A requirement's marker; one that is no requirement is refused here (`strict`) or later, when
    it is resolved (`_from_requirement` says what it may be instead)."""
    try:
        return Requirement(request).marker
    except InvalidRequirement as exc:
        if not strict:
            return None
        raise FarmError(f"{origin}: {request!r} is not a requirement: {exc}") from None


def _pythons_for(request: str, marker: Marker | None, settings: Settings, only_platforms: Sequence[str] | None,
                 only_pythons: Sequence[str] | None) -> list[str]:
    """The target Pythons a requirement is resolved for, oldest first (see `target_pythons`); none
    (its marker holds for no target) is refused before anything is recorded."""
    pythons = target_pythons(settings, only_platforms=only_platforms, only_pythons=only_pythons, marker=marker)
    if not pythons:
        raise FarmError(f"{request}: its marker holds for none of this farm's targets "
                        f"(platforms {', '.join(only_platforms or settings.platforms or ['host'])})")
    return pythons


def submit_many(items: Sequence[Item], *, settings: Settings, request: str, priority: int = 0,
                rebuild: str | None = None, only_platforms: Sequence[str] | None = None,
                only_pythons: Sequence[str] | None = None) -> SubmittedMany:
    """One submission (kind `requirements`, `request` the file as given) holding the jobs of every
    item's sdist. An item whose marker admits none of the farm's targets is skipped; every other is
    resolved and checked (its hashes too) before anything is recorded, and one that fails refuses
    the whole submission with the item's origin in the reason."""
    if rebuild is not None and not rebuild.strip():
        raise FarmError("a rebuild needs a reason (it is recorded with the job and in the provenance)")
    # each line's marker evaluated for the targets' marker environments (their Pythons, platforms, machines)
    wanted: list[tuple[Item, Marker | None, list[str]]] = []
    skipped = []
    for i in items:
        marker = None if i.from_file else _marker_of(i.request, i.origin or i.request)
        pythons = [] if i.from_file else target_pythons(settings, only_platforms=only_platforms,
                                                         only_pythons=only_pythons, marker=marker)
        if not i.from_file and not pythons:
            skipped.append(f"{i.origin or i.request}: {i.request} (its marker admits none of this farm's targets)")
        else:
            wanted.append((i, marker, pythons))
    items = [i for i, _, _ in wanted]
    environments = target_environments(settings)  # the extras' requirements are read for them
    if not items:
        raise FarmError(f"{request}: nothing to submit" + (f" ({len(skipped)} line(s) skipped for their markers)"
                                                           if skipped else ""))
    with ExitStack() as stack:
        with session_scope() as session:
            resolved: list[tuple[Source, Path | None]] = []
            markers: list[Marker | None] = []  # each resolved source's line's marker (None: planned for all)
            notes: dict[int, list[str]] = {}  # source id -> what could not be followed of its extras
            queue: list[tuple[Item, Marker | None, list[str]]] = list(wanted)
            named = {canonicalize_name(Requirement(i.request).name) for i in items if not i.from_file}
            while queue:  # an extra's requirements join the queue (and theirs, in turn)
                item, marker, pythons = queue.pop(0)
                try:
                    source, pending = _source_for(item.request, item.from_file, session, settings, stack,
                                                  sha256=item.sha256, pythons=pythons)
                except FarmError as exc:
                    raise type(exc)(f"{item.origin or item.request}: {exc}") from None
                resolved.append((source, pending))
                markers.append(marker)
                extras = set() if item.from_file else Requirement(item.request).extras
                if extras:
                    more, note = _extra_items(item, extras, source, pending, settings, environments)
                    if note:
                        notes.setdefault(source.id, []).append(note)
                    for extra_item in more:
                        key = canonicalize_name(Requirement(extra_item.request).name)
                        if key not in named:
                            named.add(key)
                            queue.append((extra_item, None, target_pythons(settings, only_platforms=only_platforms,
                                                                           only_pythons=only_pythons)))
            submission = Submission(kind="requirements", request=request)
            session.add(submission)
            session.flush()
            to_send: list[Job] = []
            per_source: list[tuple[Source, list[Job], list[str]]] = []
            seen: set[int] = set()
            storage = get_storage()
            for (source, pending), marker in zip(resolved, markers, strict=True):
                if source.id in seen:  # two lines, one sdist
                    continue
                seen.add(source.id)
                before = len(submission.jobs)
                sdist = pending if pending is not None else storage.local_path(source.storage_key)
                sent, warnings = _plan_jobs(session, submission, source, settings, only_platforms, only_pythons, priority,
                                            rebuild=rebuild.strip() if rebuild else None, kind=sdist_kind(sdist),
                                            marker=marker, python2=declares_python2(sdist))
                to_send += sent
                per_source.append((source, list(submission.jobs[before:]), warnings + notes.get(source.id, [])))
            for source, pending in resolved:
                if pending is not None and not storage.exists(source.storage_key):
                    storage.put_file(source.storage_key, pending)
            results = [Submitted(submission_id=submission.id, name=source.name, version=source.version,
                                 jobs=[(j.id, j.build_id, j.state) for j in jobs], warnings=warnings)
                       for source, jobs, warnings in per_source]
            dispatch.send_after_commit(session, [dispatch.job_spec(j, settings) for j in to_send])
    return SubmittedMany(sources=results, skipped=skipped)


@dataclass(frozen=True, kw_only=True)
class _ExtraItem:
    """A requirement of an extra that a line asked for (`name[extra]`): built in the same submission."""

    request: str
    origin: str
    from_file: bool = False
    sha256: frozenset[str] = frozenset()


def _extra_items(item: Item, extras: set[str], source: Source, pending: Path | None, settings: Settings,
                 environments: list[dict[str, str]]) -> tuple[list[_ExtraItem], str | None]:
    """The requirements the extras of `item` add (Requires-Dist lines whose marker admits one of
    `extras` on one of the farm's targets, and none without an extra: those the build's own
    verification pulls in), from the sdist's PKG-INFO. Only final metadata is followed (PEP 643:
    Metadata-Version 2.2 or later, Requires-Dist not dynamic); otherwise the note says the extras'
    requirements are not known before the build, and none is added."""
    path = pending if pending is not None else get_storage().local_path(source.storage_key)
    info = inspect_sdist(path, Limits.from_settings(settings))
    asked = ", ".join(sorted(extras))
    if not info.static_requires_dist:
        return [], (f"{source.name} {source.version}: its sdist's metadata does not declare its requirements as "
                    f"final (PEP 643), so those of its extra(s) {asked} are not known before it is built; name "
                    "them in the file to build them with this submission")
    out: list[_ExtraItem] = []
    for line in info.requires_dist:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or any(req.marker.evaluate({**env, "extra": ""}) for env in environments):
            continue  # not an extra's: the build's verification pulls it in
        if any(req.marker.evaluate({**env, "extra": e}) for env in environments for e in extras):
            bracket = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.append(_ExtraItem(request=f"{req.name}{bracket}{req.specifier}",
                                  origin=f"{item.origin or item.request} (extra {asked} of {source.name})"))
    return out, None


def _source_for(request: str, from_file: bool, session: Session, settings: Settings, stack: ExitStack, *,
                kind: str | None = None, sha256: frozenset[str] = frozenset(),
                pythons: Sequence[str] = ()) -> tuple[Source, Path | None]:
    """The Source `request` names (an sdist file, or a requirement fetched upstream) and the file
    still to be stored (None if the farm has it). `sha256`, when given, must hold the sdist's digest:
    a mismatch is refused before anything is recorded or downloaded."""
    if from_file:
        digest = _file_digest(Path(request))
        _check_hash(request, digest, sha256, SdistError)
        source = session.scalar(select(Source).where(Source.sha256 == digest))
        if source is None:
            info = _inspect_file(Path(request), digest, settings)
            _admit(settings, Release(info["name"], info["version"], upstream=False))
            return _add_source(session, info), Path(request)
        # a known sdist was inspected when it was first accepted; its name must still fit
        _check_known_name(Path(request).name, source)
        _admit(settings, Release(source.name, source.version, upstream=False))
        return source, None
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=tmp_root))
    return _from_requirement(request, session, settings, Path(tmp), kind=kind, sha256=sha256, pythons=pythons)


def _check_hash(request: str, digest: str, allowed: frozenset[str], error: type[FarmError] = UpstreamError) -> None:
    """pip's --hash check: `digest` must be one of `allowed` (when any is given); `SdistError` for a
    file, `UpstreamError` for the upstream sdist."""
    if allowed and digest not in allowed:
        raise error(f"{request}: the sdist's sha256 is {digest}, which is not among the --hash values "
                           f"given ({', '.join(sorted(allowed))}); nothing was recorded")


def _plan_jobs(session: Session, submission: Submission, source: Source, settings: Settings,
               only_platforms: Sequence[str] | None, only_pythons: Sequence[str] | None,
               priority: int = 0, *, rebuild: str | None = None,
               kind: SdistKind = "platform", marker: Marker | None = None,
               python2: bool = False) -> tuple[list[Job], list[str]]:
    targets = plan(name=source.name, version=source.version, sdist_sha256=source.sha256,
                   requires_python=source.requires_python, settings=settings,
                   only_platforms=only_platforms, only_pythons=only_pythons, kind=kind, marker=marker,
                   python2=python2)
    if not targets:
        raise FarmError(f"{source.name} {source.version}: no build target on this farm "
                        f"(platforms {settings.platforms or 'host'}, Requires-Python {source.requires_python or 'any'})")
    warnings = [f"{t.build_id}: {t.unserved}" for t in targets if t.unserved]
    to_send = []
    for t in targets:
        if rebuild is not None:
            tag = _next_build_tag(session, source, t.build_id)
            job = Job(submission=submission, source=source, platform=t.platform, python=t.python, build_id=t.build_id,
                      engine=t.engine, recipe_name=t.recipe_name, recipe_digest=t.recipe_digest, recipe=t.options,
                      cache_key=sha256_bytes(f"{t.cache_key}+build-tag-{tag}".encode()), state=JobState.QUEUED,
                      attempt=1, priority=priority, build_tag=tag, rebuild_reason=rebuild)
            session.add(job)
            to_send.append(job)
            continue
        earlier = session.scalar(
            select(Job).where(Job.cache_key == t.cache_key, Job.cached_from_id.is_(None),
                              Job.state.notin_([JobState.FAILED, JobState.CANCELLED]),
                              # a build whose wheels `farm gc` removed is no answer any more: build again
                              or_(Job.state != JobState.SUCCEEDED,
                                  Job.artifacts.any(Artifact.removed_at.is_(None))))
            .order_by(Job.id.desc()).limit(1))
        job = Job(submission=submission, source=source, platform=t.platform, python=t.python, build_id=t.build_id,
                  engine=t.engine, recipe_name=t.recipe_name, recipe_digest=t.recipe_digest, recipe=t.options,
                  cache_key=t.cache_key, state=JobState.QUEUED, attempt=1, priority=priority)
        if earlier is not None:
            job.cached_from_id = earlier.id
            if earlier.state == JobState.SUCCEEDED:
                job.move(JobState.SUCCEEDED)
                job.finished_at = utcnow()
        session.add(job)
        if earlier is None:
            to_send.append(job)
    session.flush()
    return to_send, warnings


def _next_build_tag(session: Session, source: Source, build_id: str) -> str:
    """One more than the highest build tag of this sdist's jobs for `build_id` (no tag counts as 0)."""
    tags = session.scalars(select(Job.build_tag).where(Job.source_id == source.id, Job.build_id == build_id,
                                                       Job.build_tag.is_not(None)))
    return str(max((int(t) for t in tags if t and t.isdigit()), default=0) + 1)


def _add_source(session: Session, values: dict) -> Source:
    """The Source row with `values["sha256"]`: inserted, or the row a concurrent submission of the
    same sdist committed meanwhile (the insert waits for that transaction; no unique violation)."""
    table = Source.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - the farm runs on SQLite or PostgreSQL
        dialect_insert = None
    if dialect_insert is not None:
        session.execute(dialect_insert(table).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))
    else:  # pragma: no cover
        session.execute(insert(table).values(**values))
    source = session.scalar(select(Source).where(Source.sha256 == values["sha256"]))
    assert source is not None
    return source


def _check_known_name(filename: str, source: Source) -> None:
    """A known sdist's bytes under another file name must still name the same project and version."""
    try:
        name, version = parse_sdist_filename(filename)
    except InvalidSdistFilename as exc:
        raise SdistError(f"{filename}: not a valid sdist file name: {exc}") from None
    check_project_name(filename.rpartition("-")[0], f"{filename}: the file name")
    if name != source.name or version != Version(source.version):
        raise SdistError(f"{filename} has the bytes (sha256 {source.sha256[:16]}) of {source.filename}, which is "
                         f"{source.name} {source.version}, not {name} {version}")


def _file_digest(path: Path) -> str:
    if path.is_dir():
        raise FarmError(f"{path} is a directory, not an sdist file")
    if not path.is_file():
        raise FarmError(f"{path}: no such file")
    return sha256_file(path)


def _inspect_file(path: Path, digest: str, settings: Settings) -> dict:
    info = inspect_sdist(path, Limits.from_settings(settings))
    return {"sha256": digest, "name": info.name, "version": info.version, "filename": path.name,
            "size": path.stat().st_size, "storage_key": sdist_key(digest, path.name),
            "requires_python": info.requires_python, "created_at": utcnow()}


def _admit(settings: Settings, release: Release, policy: IntakePolicy | None = None) -> None:
    """`IntakeRefused` with the policy's reason when the intake policy does not take `release` in."""
    reason = (policy or IntakePolicy.from_settings(settings)).refusal(release)
    if reason is not None:
        raise IntakeRefused(reason)


def _from_requirement(request: str, session: Session, settings: Settings, tmp: Path, *,
                      kind: str | None = None, sha256: frozenset[str] = frozenset(),
                      pythons: Sequence[str] = ()) -> tuple[Source, Path | None]:
    """The Source for a requirement, and the downloaded file still to be stored (None if known).

    A range takes the newest release whose Requires-Python admits the oldest of `pythons` (the
    targets' Pythons its marker holds for, not the interpreter running the farm): the release every
    one of them can install, as pip would choose it on the oldest; Python 2 counts only when no Python 3
    is asked for."""
    try:
        req = Requirement(request)
    except InvalidRequirement as exc:
        raise FarmError(f"{request!r} is neither an sdist file nor a requirement like NAME==VERSION: {exc}") from None
    check_project_name(req.name, f"{request!r}")  # ASCII only: "ſix" and a Kelvin-sign "K" name no project
    name = canonicalize_name(req.name)
    pins = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
    version: Version | None = None
    if pins:
        try:
            version = Version(pins[0])
        except InvalidVersion as exc:
            raise FarmError(f"{request!r}: {exc}") from None
        # Already fetched and checked once: no need to ask upstream again (the lists still apply;
        # its age was checked when it was taken in).
        for known in session.scalars(select(Source).where(Source.name == name, Source.upstream_url.is_not(None))):
            if Version(known.version) == version:
                _check_hash(request, known.sha256, sha256)
                _admit(settings, Release(known.name, known.version, upstream=False))
                return known, None
    from farm.index.upstream import Upstream, UpstreamFile

    policy = IntakePolicy.from_settings(settings)
    pinned = kind != "dependency"  # a person's exact pin; a dependency's pin is the farm's choice

    def release(f: UpstreamFile, *, exact: bool) -> Release:
        return Release(f.project, f.version, upload_time=f.upload_time, pinned=exact and pinned)

    with Upstream(settings.upstream_index) as upstream:
        if version is not None:
            file = upstream.find_sdist(name, str(version))
            _admit(settings, release(file, exact=True), policy)
        else:
            # Python 2 decides only when it is all that is asked for (`--python 2.7`): a release for
            # Python 3 targets is not held back to the last one that still supported 2.7.
            python3 = [p for p in pythons if not (dotted(p) or "").startswith("2.")]
            oldest = (python3 or list(pythons) or [f"cp{sys.version_info[0]}{sys.version_info[1]}"])[0]
            python = dotted(oldest) or f"{sys.version_info[0]}.{sys.version_info[1]}"
            found = upstream.best_sdist(str(req), python, accept=policy.accepts)
            if found is None:
                newest = upstream.best_sdist(str(req), python) if policy.active else None
                if newest is not None:  # there is one, but the policy takes in none that fits
                    raise IntakeRefused(f"no release of {request!r} is admitted by the intake policy; the newest: "
                                        f"{policy.refusal(release(newest, exact=False))}")
                raise UpstreamError(f"no sdist on {settings.upstream_index} satisfies {request!r}")
            file = found
        if not file.sha256:
            raise UpstreamError(f"{file.url}: the index gives no sha256, so the download cannot be checked")
        _check_hash(request, file.sha256, sha256)
        known = session.scalar(select(Source).where(Source.sha256 == file.sha256))
        if known is not None:
            if known.name != name or Version(known.version) != Version(file.version):
                raise UpstreamError(f"{file.url} has the sha256 of {known.filename}, which is {known.name} "
                                    f"{known.version}, not {name} {file.version}")
            return known, None
        path = upstream.download(file, tmp)
    info = inspect_sdist(path, Limits.from_settings(settings), expect_name=name, expect_version=file.version)
    source = _add_source(session, dict(
        sha256=file.sha256, name=info.name, version=info.version, filename=path.name, size=path.stat().st_size,
        storage_key=sdist_key(file.sha256, path.name), upstream_url=file.url,
        requires_python=info.requires_python or file.requires_python, created_at=utcnow()))
    return source, path


__all__ = ["SDIST_SUFFIXES", "Item", "Submitted", "is_file_request", "SubmittedMany", "submit", "submit_many", "target_environments"]
