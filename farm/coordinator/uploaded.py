"""Publish a wheel uploaded with the legacy upload API (farm/api/routes_upload.py), not built here.

Checked before anything is recorded (farm/util/wheel_check.py: the archive, the tags, METADATA,
RECORD). Then:

- a compiled wheel for a platform a worker of this farm serves is refused, unless the channel is in
  `upload_binaries`: the farm builds those itself, from the sdist, with provenance;
- its file name must be free: the same bytes again are accepted and change nothing (as PyPI answers
  a repeated upload), other bytes under a taken name are `FileExists` ("File already exists");
- it is recorded as an artifact with no job, `uploaded_by` the token's name, not verified, and
  a provenance statement that says it was uploaded and not built here (`UPLOAD_BUILD_TYPE`), signed
  like every other; it is placed in the first channel's tree and, when the upload went to another
  channel, recorded in that channel too. The pages list it once the rows are committed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, utcnow
from farm.db.session import after_commit, begin_write
from farm.errors import FileExists, PublishRefused
from farm.index import channels, simple
from farm.provenance import statement, write
from farm.storage import get_storage
from farm.util.archive import Limits
from farm.util.hashing import sha256_file
from farm.util.wheel import read_metadata, requires_dist
from farm.util.wheel_check import WheelInfo, check_wheel

UPLOAD_BUILD_TYPE = "urn:wheel-farm:buildtype:upload:v1"


def upload_key(sha256: str, filename: str) -> str:
    return f"uploads/{sha256[:2]}/{sha256}/{filename}"


def served_platforms(settings: Settings) -> list[str]:
    from farm.worker.platforms import host_platform_name

    return list(settings.platforms) or [host_platform_name()]


def built_here(settings: Settings, info: WheelInfo) -> str | None:
    """The farm platform that builds wheels with `info`'s platform tags, or None."""
    from farm.worker.platforms import get_platform

    platform_tags = sorted({t.rsplit("-", 1)[-1] for t in info.tags})
    for name in served_platforms(settings):
        if get_platform(name).platform_tag_ok(platform_tags):
            return name
    return None


def upload_statement(*, filename: str, sha256: str, info: WheelInfo, channel: str, uploader: str,
                     when: dt.datetime) -> dict[str, Any]:
    """The in-toto statement of an uploaded wheel: who uploaded it, where, when; and that the farm did
    not build or verify it (no sdist, no recipe, no verification)."""
    return {
        "_type": statement.STATEMENT_TYPE,
        "subject": [{"name": filename, "digest": {"sha256": sha256}}],
        "predicateType": statement.PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": UPLOAD_BUILD_TYPE,
                "externalParameters": {"upload": {"name": info.name, "version": info.version, "channel": channel,
                                                  "uploadedBy": uploader, "tags": info.tags}},
                "internalParameters": {"builtHere": False},
                "resolvedDependencies": [],
            },
            "runDetails": {
                "builder": {"id": f"urn:wheel-farm:upload:{uploader}"},
                "metadata": {"invocationId": f"upload-{sha256[:16]}",
                             "startedOn": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                             "finishedOn": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                "byproducts": [{"name": "verification", "annotations": {
                    "verified": False, "reason": f"uploaded by {uploader}, not built or verified by the farm"}}],
            },
        },
    }


def publish_upload(session: Session, settings: Settings, wheel: Path, *, channel: str, uploader: str) -> tuple[Artifact, bool]:
    """Check and publish the uploaded `wheel` into `channel`; (the artifact, whether it is new).
    `PublishRefused` (or a `WheelError`) with the reason, and nothing recorded or written, when it may not be."""
    filename = wheel.name
    info = check_wheel(wheel, Limits.from_settings(settings))
    if not info.pure and channel not in settings.upload_binaries:
        platform = built_here(settings, info)
        if platform is not None:
            raise PublishRefused(
                f"{filename} is a compiled wheel for {platform}, which this farm builds: upload the sdist and the "
                f"farm builds it with provenance (or list {channel!r} in upload_binaries to take binaries)")
    sha256 = sha256_file(wheel)
    key = simple.file_key(filename)
    lay = channels.layout(settings)
    existing = session.scalar(select(Artifact).where(Artifact.sha256 == sha256))
    if existing is not None and existing.removed_at is None:
        if existing.filename != filename:
            raise PublishRefused(str(simple.already_exists(filename, existing.filename, sha256, "the same bytes under "
                                                           "another name")))
        if channel != lay.first and channel not in {e.channel for e in existing.channels}:
            channels.add_entries(session, [existing], channel, by=f"upload:{uploader}")
            _list_after_commit(session, settings, existing.name)
        return existing, False
    taken = session.scalar(select(Artifact).where(Artifact.filename_key == key, Artifact.removed_at.is_(None)).limit(1))
    if taken is not None:
        raise FileExists(str(simple.already_exists(filename, taken.filename, taken.sha256,
                                                   f"artifact #{taken.id}")))
    for t in lay.containing(lay.first):
        tree = lay.tree(t)
        clash = simple.conflict(simple.read_project(tree, info.name), filename, sha256)
        if clash is not None:
            raise FileExists(str(simple.already_exists(filename, clash.filename, clash.sha256,
                                                       f"listed on {t}'s page of {info.name}")))
        target = tree / "files" / info.name / filename
        if target.is_file() and (held := sha256_file(target)) != sha256:
            raise FileExists(str(simple.already_exists(filename, filename, held, f"the file {target}")))
    meta = read_metadata(wheel)
    stmt = upload_statement(filename=filename, sha256=sha256, info=info, channel=channel, uploader=uploader,
                            when=utcnow())
    storage_key = upload_key(sha256, filename)
    storage = get_storage()
    if not storage.exists(storage_key):
        storage.put_file(storage_key, wheel)
    stmt_key = statement.storage_key(storage_key)
    if not storage.exists(stmt_key):
        storage.put_bytes(stmt_key, statement.payload(stmt))
    begin_write(session)
    with session.begin_nested():
        art = Artifact(job_id=None, uploaded_by=uploader, filename=filename, filename_key=key, sha256=sha256,
                       size=wheel.stat().st_size, name=info.name, version=info.version, tags=info.tags,
                       requires_python=(str(meta.get("Requires-Python") or "").strip() or None),
                       requires_dist=requires_dist(meta), storage_key=storage_key, verified=False)
        session.add(art)
        session.add(write.row(art, stmt, stmt_key))
        session.flush()
        signed, keyid = write.beside(settings, settings.index / "files" / info.name / filename, stmt)
        try:
            # Placed, not listed: the pages list it once the rows are committed (`_list_after_commit`).
            entry = simple.add_file(settings.index, info.name, wheel, sha256=sha256,
                                    provenance_url=channels.provenance_url(settings, info.name, filename))
        except simple.FileExists as exc:
            raise FileExists(str(exc)) from None
        art.metadata_sha256 = entry.metadata_sha256
        assert art.provenance is not None
        art.provenance.envelope, art.provenance.keyid = signed, keyid
        channels.on_publish(session, settings, art, wheel, sha256=sha256)
        art.published_at = utcnow()
        if channel != lay.first:
            channels.add_entries(session, [art], channel, by=f"upload:{uploader}")
    _list_after_commit(session, settings, art.name)
    return art, True


def _list_after_commit(session: Session, settings: Settings, project: str) -> None:
    """Nothing is listed before its rows commit: the pages are written after it, as a build's publish
    writes them (farm/coordinator/publish.py); a crash in between leaves work for the index doctor."""
    from farm.coordinator.publish import list_published

    after_commit(session, lambda: list_published(settings, [project]))
