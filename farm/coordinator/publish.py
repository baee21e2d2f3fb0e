"""Publish: record a verified wheel and put it on the farm's index, one project page at a time.

The worker is not trusted, so every wheel is checked here before anything is recorded or written:

- it is a wheel of the job's own sdist: the file name's and the METADATA's project and version
  equal the sdist's (names normalized and ASCII, versions as PEP 440); an sdist whose build names
  its distribution after another project does not publish as that project;
- its bytes in storage have the sha256 the worker reported;
- its file name is free: a published file name is immutable, as on PyPI ("File already exists").
  No live artifact and no page of the first channel holds another file under that name or under a
  name that normalizes to it (`farm.index.simple.file_key`: `Foo_Bar-1.0-...` is `foo_bar-1.0-...`).
  The database enforces it too: `filename_key` is unique among live artifacts (migration 0004).

A refusal raises `PublishRefused`: the job fails with that reason and nothing is recorded or written.
An intentional rebuild of a published version needs its own file name (a wheel build tag); the
farm has no way to ask for one yet, so a rebuild with other bytes is refused like any other.

The order, so that nothing is ever listed without a committed row and the bytes under a name never
change: the rows are inserted; the files are placed in the trees under temporary names and renamed
(write-once: a name holding other bytes is refused), but not listed; the transaction commits (the
job succeeds in the same transaction); only then are the pages rewritten from the database
(`list_published`, run after the commit, adds only what is new to each page). A crash before the commit leaves unlisted files that no
row wants (the index doctor removes them); a crash after it leaves committed artifacts unlisted (the
doctor lists them). Test builds may stop the process at the named points in between
(`farm.util.testing.kill_point`, FARM_TEST_KILL_AT).

Idempotent by wheel hash: the same wheel published twice is one artifact and one index entry.
Two coordinator processes publishing the same wheel at once: the artifact row is inserted before
any file is written, and the unique sha256 makes the second insert wait for the first transaction
and then fail; the loser takes the winner's row as "already published" and writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, Job, utcnow
from farm.db.session import after_commit, begin_write, session_scope
from farm.errors import InfrastructureFault, PublishRefused
from farm.index import channels, simple
from farm.messages import ArtifactReport
from farm.provenance import write
from farm.storage import get_storage
from farm.util.hashing import sha256_file
from farm.util.testing import kill_point

log = logging.getLogger(__name__)


@dataclass
class _Checked:
    report: ArtifactReport
    project: str
    key: str
    wheel: Path | None = None  # None: the same bytes are published already (`existing`)
    existing: Artifact | None = None


def publish(session: Session, job: Job, artifacts: list[ArtifactReport], settings: Settings) -> list[Artifact]:
    """Check, record and publish the job's wheels; `PublishRefused` (nothing done) when one may not be."""
    with contextlib.ExitStack() as stack:
        checked = [_check(session, job, report, settings, stack) for report in artifacts]
        begin_write(session)  # on SQLite the savepoints below must sit inside the session's transaction
        published: list[Artifact] = []
        with session.begin_nested():  # a refusal found below undoes every row of this job's publish
            recorded = [(c, *_record(session, job, c)) if c.existing is None else (c, c.existing, False)
                        for c in checked]
            for c, art, is_new in recorded:
                if is_new:
                    _write(session, settings, art, c)
                published.append(art)
    kill_point("publish-placed")
    projects = sorted({a.name for a in published})
    after_commit(session, lambda: list_published(settings, projects))
    return published


def list_published(settings: Settings, projects: list[str]) -> None:
    """After the commit: list on the pages of `projects` (every tree) what the database lists and they do
    not yet (`channels.list_new`: the cost of the new files, not of the project's size). A failure
    here (a full index disk) leaves committed artifacts unlisted, which the reconciler's index doctor
    lists later (farm.index.doctor: missing-listing); the job has succeeded either way."""
    kill_point("publish-committed")
    list_pages(settings, projects)


def list_pages(settings: Settings, projects: list[str]) -> None:
    """`list_published` without its test stop: also run before a job waiting for `projects` is sent to
    verify against the index (farm/coordinator/lifecycle.py), since the provider's own listing may
    not have run yet. Idempotent: a page that lists everything already is left as it is."""
    try:
        with session_scope() as session:
            for project in projects:
                channels.list_new(session, settings, project)
                kill_point("publish-listed-one")
    except Exception as exc:  # noqa: BLE001 - committed: the doctor completes it
        log.warning("publish: pages of %s not written yet (the index doctor will): %s", ", ".join(projects), exc)


def _check(session: Session, job: Job, report: ArtifactReport, settings: Settings,
           stack: contextlib.ExitStack) -> _Checked:
    """Everything that may refuse `report`, before any row or file is written."""
    source = job.source
    problem = simple.identity_problem(report.filename, source.name, source.version)
    if problem is not None:
        raise PublishRefused(problem)
    project = canonicalize_name(parse_wheel_filename(report.filename)[0])
    key = simple.file_key(report.filename)
    existing = session.scalar(select(Artifact).where(Artifact.sha256 == report.sha256))
    if existing is not None:  # the same bytes: already published (a duplicate delivery, an identical build)
        return _Checked(report, project, key, existing=existing)
    _refuse_taken(session, report.filename, report.sha256, key)
    storage = get_storage()
    wheel = storage.local_path(report.storage_key)
    if wheel is None or not wheel.is_file():  # remote storage: fetched into a temporary folder
        tmp_root = settings.home / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=tmp_root))
        wheel = storage.get_file(report.storage_key, Path(tmp) / report.filename)
    digest = sha256_file(wheel)
    if digest != report.sha256:  # the provenance's subject must be the file the index serves
        raise InfrastructureFault("publish", f"{report.filename} in storage has sha256 {digest}, "
                                  f"the worker reported {report.sha256}")
    try:
        metadata = simple.wheel_metadata(wheel)
    except simple.PublishError as exc:
        raise PublishRefused(str(exc)) from None
    problem = simple.identity_problem(report.filename, source.name, source.version, metadata)
    if problem is not None:
        raise PublishRefused(problem)
    lay = channels.layout(settings)
    for t in lay.containing(lay.first):  # the trees this publish writes to
        tree = lay.tree(t)
        clash = simple.conflict(simple.read_project(tree, project), report.filename, digest)
        if clash is not None:  # a page lists it although no live artifact does (published before 0004)
            raise PublishRefused(str(simple.already_exists(report.filename, clash.filename, clash.sha256,
                                                           f"listed on {t}'s page of {project}")))
        target = tree / "files" / project / report.filename
        if target.is_file() and (held := sha256_file(target)) != digest:  # not listed, but served by name
            raise PublishRefused(str(simple.already_exists(report.filename, report.filename, held,
                                                           f"the file {target}")))
    return _Checked(report, project, key, wheel=wheel)


def _refuse_taken(session: Session, filename: str, sha256: str, key: str) -> None:
    taken = session.scalar(select(Artifact).where(Artifact.filename_key == key, Artifact.removed_at.is_(None),
                                                  Artifact.sha256 != sha256).limit(1))
    if taken is not None:
        raise PublishRefused(str(simple.already_exists(
            filename, taken.filename, taken.sha256, f"artifact #{taken.id}, built by job {taken.job_id}")))


def _record(session: Session, job: Job, c: _Checked) -> tuple[Artifact, bool]:
    """Insert the artifact and provenance rows (in a savepoint); (the row, whether it is new). A lost
    race for the same bytes gives the winner's row, a lost race for the file name is a refusal."""
    report = c.report
    assert c.wheel is not None
    art = Artifact(job_id=job.id, filename=report.filename, filename_key=c.key, sha256=report.sha256,
                   size=c.wheel.stat().st_size, name=c.project, version=job.source.version, tags=report.tags,
                   requires_python=report.requires_python, requires_dist=report.requires_dist,
                   storage_key=report.storage_key, verified=True)
    try:
        with session.begin_nested():  # losing a race must not undo the rest of the event
            session.add(art)
            session.add(write.row(art, report.provenance, report.provenance_key))
    except IntegrityError:
        existing = session.scalar(select(Artifact).where(Artifact.sha256 == report.sha256))
        if existing is not None:
            return existing, False
        _refuse_taken(session, report.filename, report.sha256, c.key)
        raise
    return art, True


def _write(session: Session, settings: Settings, art: Artifact, c: _Checked) -> None:
    """The files of a newly recorded artifact: provenance beside the wheel, then the wheel and its page."""
    report, project, wheel = c.report, c.project, c.wheel
    assert wheel is not None
    # The provenance sits beside the file before the page that lists the file appears; signed here:
    # workers do not hold the farm's key.
    signed, keyid = write.beside(settings, settings.index / "files" / project / report.filename, report.provenance)
    try:
        # Placed (temporary name, then renamed), not listed: the pages are written after the commit.
        entry = simple.add_file(settings.index, project, wheel, sha256=report.sha256,
                                provenance_url=channels.provenance_url(settings, project, report.filename))
        kill_point("publish-file-renamed")
        art.metadata_sha256 = entry.metadata_sha256
        assert art.provenance is not None
        art.provenance.envelope, art.provenance.keyid = signed, keyid
        channels.on_publish(session, settings, art, wheel, sha256=report.sha256)  # first channel; virtual indexes
    except simple.FileExists as exc:  # a writer outside the database got there first (checked in _check)
        raise PublishRefused(str(exc)) from None
    art.published_at = utcnow()
