"""Publish: record a verified wheel and put it on the farm's index, one project page at a time.

Idempotent by wheel hash: the same wheel published twice is one artifact and one index entry.
Two coordinator processes publishing the same wheel at once: the artifact row is inserted before
any file is written, and the unique sha256 makes the second insert wait for the first transaction
and then fail; the loser takes the winner's row as "already published" and writes nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, Job, Provenance, utcnow
from farm.db.session import begin_write
from farm.errors import InfrastructureFault
from farm.index import channels, simple
from farm.messages import ArtifactReport
from farm.storage import get_storage
from farm.util.hashing import canonical_json, sha256_bytes, sha256_file


def publish(session: Session, job: Job, artifacts: list[ArtifactReport], settings: Settings) -> list[Artifact]:
    storage = get_storage()
    published: list[Artifact] = []
    for report in artifacts:
        existing = session.scalar(select(Artifact).where(Artifact.sha256 == report.sha256))
        if existing is not None:
            published.append(existing)
            continue
        project = canonicalize_name(parse_wheel_filename(report.filename)[0])
        statement = canonical_json(report.provenance)
        art = Artifact(job_id=job.id, filename=report.filename, sha256=report.sha256, size=report.size, name=project,
                       version=job.source.version, tags=report.tags, requires_python=report.requires_python,
                       requires_dist=report.requires_dist, storage_key=report.storage_key, verified=True)
        begin_write(session)  # on SQLite the savepoint below must sit inside the session's transaction
        try:
            with session.begin_nested():  # a savepoint: losing the race must not undo the rest of the event
                session.add(art)
                session.add(Provenance(artifact=art, statement=report.provenance, digest=sha256_bytes(statement),
                                       storage_key=report.provenance_key))
        except IntegrityError:
            existing = session.scalar(select(Artifact).where(Artifact.sha256 == report.sha256))
            if existing is None:
                raise
            published.append(existing)
            continue
        with contextlib.ExitStack() as stack:
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
            # The provenance record sits beside the file before the page that lists the file appears.
            folder = settings.index / "files" / project
            folder.mkdir(parents=True, exist_ok=True)
            storage_tmp = folder / f".{report.filename}.provenance.json.{uuid.uuid4().hex}.tmp"
            storage_tmp.write_bytes(statement)
            storage_tmp.replace(folder / f"{report.filename}.provenance.json")
            signed, keyid = channels.sign(settings, statement)  # here: workers do not hold the farm's key
            channels.write_provenance(folder / report.filename, signed)
            entry = simple.publish(settings.index, project, wheel, sha256=digest,
                                   provenance_url=channels.provenance_url(settings, project, report.filename))
            art.metadata_sha256 = entry.metadata_sha256
            art.provenance.envelope, art.provenance.keyid = signed, keyid
            channels.on_publish(session, settings, art, wheel, sha256=digest)  # first channel; virtual indexes
        art.published_at = utcnow()
        published.append(art)
    return published
