"""The HTTP API in process: a farm with its API app on a Starlette TestClient, its tokens, and small
queries on what it recorded."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

import farm.cli
import farm.storage
from farm.api.app import create_app
from farm.config import Settings, get_settings, reset_settings
from farm.coordinator.app import reset_app
from farm.db.models import Job, Source, Submission, utcnow
from farm.tokens import CAPABILITY_HEADER, create_token
from tests.helpers.indexes import StaticIndex, populate
from tests.helpers.sdists import make_good
from tests.helpers.servers import drop_database, pg_database


@dataclass
class Api:
    home: Path
    settings: Settings
    client: TestClient
    tokens: dict[str, str]  # role -> token
    upstream: StaticIndex

    def h(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("api")
    home = root / "home"
    home.mkdir()
    (home / "farm.toml").write_text('# kept\nbuild_timeout = 1200.0\n')
    tokens = {role: create_token(home, f"t-{role}", role) for role in ("submit", "worker", "admin")}
    upstream = StaticIndex(root / "upstream")
    populate(upstream, root / "upstream-build")
    db_name, db_url = pg_database("farmtest_api")
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("FARM_"):
                mp.delenv(var)
        mp.setenv("FARM_HOME", str(home))
        mp.setenv("FARM_DATABASE_URL", db_url)
        mp.setenv("FARM_UPSTREAM_INDEX", upstream.url)
        reset_settings()
        reset_app()
        farm.cli._db_ready = False
        farm.cli.ensure_db()
        settings = get_settings()
        try:
            with TestClient(create_app(settings)) as client:
                yield Api(home=home, settings=settings, client=client, tokens=tokens, upstream=upstream)
        finally:
            upstream.stop()
            from farm.db.session import engine_for

            engine_for(db_url).dispose()
            engine_for.cache_clear()
            reset_settings()
            reset_app()
            farm.cli._db_ready = False
            drop_database(db_name)


def submission_count() -> int:
    from farm.db.models import Submission
    from farm.db.session import session_scope

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Submission)) or 0


def upload(api: Api, path: Path, role: str | None = "submit", name: str | None = None):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        return api.client.post("/api/submissions", headers=api.h(role),
                               files={"file": (name or path.name, f, "application/octet-stream")})


def capability(job_id: int) -> str:
    """The storage capability the coordinator sends with the job's current attempt (its JobSpec)."""
    from farm.coordinator.dispatch import job_spec
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        return job_spec(s.get(Job, job_id), get_settings()).storage_capability


def live_job(api: Api, tmp_path: Path, name: str) -> tuple[int, dict[str, str]]:
    """A job just submitted (queued, attempt 1) and the header with its storage capability."""
    resp = upload(api, make_good(tmp_path / f"in-{name}", name, "1.0"))
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["jobs"][0]["id"]
    return job_id, {CAPABILITY_HEADER: capability(job_id)}


@contextmanager
def pg_app(home: Path) -> Iterator[TestClient]:
    """The API app on a fresh PostgreSQL database with FARM_HOME `home` (tokens made before it are accepted)."""
    home.mkdir(exist_ok=True)
    db_name, db_url = pg_database("farmtest_web")
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("FARM_"):
                mp.delenv(var)
        mp.setenv("FARM_HOME", str(home))
        mp.setenv("FARM_DATABASE_URL", db_url)
        reset_settings()
        reset_app()
        farm.cli._db_ready = False
        farm.cli.ensure_db()
        try:
            with TestClient(create_app(get_settings())) as c:
                yield c
        finally:
            from farm.db.session import engine_for

            engine_for(db_url).dispose()
            engine_for.cache_clear()
            reset_settings()
            reset_app()
            farm.cli._db_ready = False
            drop_database(db_name)


_n = iter(range(1, 10**6))


def add_job(session, *, state: str, platform: str = "linux-x86_64", worker: str | None = None,  # type: ignore[no-untyped-def]
            heartbeat_age: float | None = None, cached_from: int | None = None, created_ago: float = 0) -> Job:
    i = next(_n)
    sub = Submission(kind="requirement", request=f"p{i}==1.0")
    src = Source(sha256=f"{i:064x}", name=f"p{i}", version="1.0", filename=f"p{i}-1.0.tar.gz", size=1,
                 storage_key=f"sdists/x/p{i}-1.0.tar.gz")
    now = utcnow()
    job = Job(submission=sub, source=src, platform=platform, python="cp311", build_id=f"cp311-{platform}",
              engine="native", recipe_digest="0" * 64, cache_key=f"{i:064x}", state=state, worker=worker,
              cached_from_id=cached_from, created_at=now - dt.timedelta(seconds=created_ago),
              heartbeat_at=None if heartbeat_age is None else now - dt.timedelta(seconds=heartbeat_age))
    session.add(job)
    session.flush()
    return job
