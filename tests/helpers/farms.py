"""The farm in tests: run in process (its publish path driven from database rows made here instead
of a build) or as a real `farm up` in its own FARM_HOME."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from farm.cli import main
from farm.config import Settings
from farm.db.models import Artifact, Job, Source, Submission
from farm.db.session import session_scope
from farm.messages import ArtifactReport, JobSpec, SdistRef
from farm.storage import get_storage, wheel_key
from tests.helpers.env import ONE_JOB, ONE_PYTHON


class Farm:
    """A running `farm up` in its own FARM_HOME, driven through the real `farm` command."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.index_url = f"{self.url}/simple/"
        self.env = {**os.environ, "FARM_HOME": str(home), "FARM_PYTHONS": ONE_PYTHON, "FARM_WORKER_JOBS": ONE_JOB}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "up", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"farm up did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def farm(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)


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


def _farm(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.cli import ensure_db
    from farm.config import get_settings

    assert main(["init"]) == 0
    ensure_db()
    return get_settings()
