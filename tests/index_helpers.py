"""Helpers for the publishing-end tests: wheels made by hand, and published through the coordinator's
real publish path (signing, channels, pages) from database rows made here instead of a build."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from farm.config import Settings
from farm.db.models import Artifact, Job, Source, Submission
from farm.db.session import session_scope
from farm.messages import ArtifactReport, JobSpec, SdistRef
from farm.storage import get_storage, wheel_key


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, name: str, version: str, *, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
               requires_python: str | None = None, size_pad: int = 0) -> Path:
    """A valid wheel of one package `<name>` (module name: `-` -> `_`) with any tag."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Summary: farm index test package"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    members = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n{'#' * size_pad}\n".encode(),
        f"{info}/METADATA": ("\n".join(meta) + "\n\nA package for the index tests.\n").encode(),
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in members.items()) + f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zi = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def prepare_job(settings: Settings, wheel: Path, *, version: str, platform: str = "linux-x86_64",
                python: str = "cp311", passed: bool = True, upstream_url: str | None = None,
                upstream_index: str = "https://pypi.org/simple/", sdist_sha256: str | None = None
                ) -> tuple[int, ArtifactReport]:
    """The rows, stored wheel and statement a worker's job leaves before publishing (committed)."""
    from email.parser import BytesHeaderParser

    from farm.index.simple import wheel_metadata
    from farm.provenance.statement import statement

    meta = BytesHeaderParser().parsebytes(wheel_metadata(wheel))
    name = str(meta["Name"]).lower().replace("_", "-")
    sdist_sha = sdist_sha256 or hashlib.sha256(f"{name}-{version}-sdist".encode()).hexdigest()
    sdist_name = f"{name.replace('-', '_')}-{version}.tar.gz"
    with session_scope() as session:
        source = session.query(Source).filter_by(sha256=sdist_sha).one_or_none()
        if source is None:
            source = Source(sha256=sdist_sha, name=name, version=version, filename=sdist_name, size=100,
                            storage_key=f"sdists/{sdist_sha[:2]}/{sdist_sha}/{sdist_name}", upstream_url=upstream_url)
            session.add(source)
        sub = Submission(kind="file", request=str(wheel))
        job = Job(submission=sub, source=source, platform=platform, python=python, build_id=f"{python}-{platform}",
                  engine="native", recipe_digest="0" * 64, cache_key=os.urandom(32).hex(), state="publishing")
        session.add_all([sub, job])
        session.flush()
        key = wheel_key(job.id, wheel.name, attempt=1)
        get_storage().put_file(key, wheel)
        spec = JobSpec(job_id=job.id, attempt=1, name=name, version=version,
                       sdist=SdistRef(filename=sdist_name, sha256=sdist_sha, size=100, storage_key=source.storage_key),
                       platform=platform, python=python, build_id=job.build_id, engine="native", recipe_name=None,
                       recipe_digest="0" * 64, options={}, upstream_index=upstream_index)
        now = time.time()
        stmt = statement(spec=spec, wheel=wheel, tools={"uv": "test"}, commands=["uv build"], timings={"building": 0.1},
                         started=now - 1, finished=now,
                         verification={"passed": passed, "imports": [name.replace("-", "_")], "testCommand": None},
                         image_digest=None, build_requires=[])
        report = ArtifactReport(filename=wheel.name, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                                size=wheel.stat().st_size, storage_key=key, tags=[wheel.name[:-4].split("-", 2)[2]],
                                requires_python=meta.get("Requires-Python"),
                                requires_dist=meta.get_all("Requires-Dist") or [],
                                provenance_key=key + ".provenance.json", provenance=stmt)
        return job.id, report


def publish_prepared(settings: Settings, job_id: int, report: ArtifactReport) -> int:
    """The coordinator's publish of a prepared job, committed; returns the artifact id."""
    from farm.coordinator.publish import publish

    with session_scope() as session:
        job = session.get(Job, job_id)
        (art,) = publish(session, job, [report], settings)
        job.state = "succeeded"
        session.flush()
        return art.id


def publish_wheel(settings: Settings, wheel: Path, *, version: str, **kw: Any) -> int:
    """Record a job for `wheel` and run the coordinator's publish on it; returns the artifact id."""
    return publish_prepared(settings, *prepare_job(settings, wheel, version=version, **kw))


def artifact(artifact_id: int) -> Artifact:
    with session_scope() as session:
        art = session.get(Artifact, artifact_id)
        assert art is not None
        session.expunge(art)
        return art
