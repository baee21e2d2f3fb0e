"""The dashboard.

In-process on a real PostgreSQL database: sign-in (a worker token does not sign in), seek paging
with filters that walks every job exactly once and never issues OFFSET or COUNT, cancel and retry
through the page's forms (CSRF checked), the live log over SSE (a line appended reaches the client),
the submissions page with a submission's closure, promote and yank by role (a submit token gets no
buttons and a 403; a stale CSRF value, a bad pin, a control character in a reason, an unknown
release and the promotion gate's refusal are each refused with the reason).

Slow (`-m slow`): a real `farm up` builds a real sdist while headless Chromium (Debian's, driven by
Playwright) signs in with the farm's admin token, follows the job's log live, reads the step
timeline, test result, wheel and provenance links, the project's matrix, workers and channels,
cancels a queued job and builds it again; on a second project's wheel it clicks promote (to stable) and yank. Screenshots are kept in a folder the test prints; every
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
from farm.tokens import LOCAL_ADMIN_NAME, create_token
from tests.helpers.api import add_job, pg_app


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
    from tests.helpers.sdists import make_good

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


def test_submissions_page_shows_a_requirements_file_with_its_closure(signed_in: TestClient) -> None:
    """A requirements file's submission is one row; its page shows the requested jobs, the jobs their
    runtime dependencies pulled in (transitively, through a reused provider too), and the states.
    The farm's own dependency submissions are not listed; a missing or out-of-range id is refused."""
    from farm.db.models import Dependency, Submission

    client = signed_in
    with session_scope() as s:
        a = add_job(s, state="dep_wait")
        b = add_job(s, state="succeeded")
        top = Submission(kind="requirements", request="requirements.txt")
        s.add(top)
        s.flush()
        a.submission, b.submission = top, top
        dep = add_job(s, state="dep_wait")  # submitted by the farm for `a`, itself waiting on `deeper`
        dep.submission.kind, dep.submission.parent_job_id = "dependency", a.id
        deeper = add_job(s, state="building")
        deeper.submission.kind, deeper.submission.parent_job_id = "dependency", dep.id
        reused = add_job(s, state="succeeded")  # an earlier build `a` also needs
        unrelated = add_job(s, state="failed")
        s.add_all([Dependency(job=a, requirement="dep>=1", dep_job_id=dep.id, state="waiting"),
                   Dependency(job=a, requirement="reused", dep_job_id=reused.id, state="met"),
                   Dependency(job=dep, requirement="deeper", dep_job_id=deeper.id, state="waiting"),
                   Dependency(job=dep, requirement="gone", dep_job_id=None, state="unavailable", reason="no sdist")])
        s.flush()
        ids = {k: j.id for k, j in dict(a=a, b=b, dep=dep, deeper=deeper, reused=reused, unrelated=unrelated).items()}
        top_id, dep_sub = top.id, dep.submission_id
    listing = client.get("/ui/submissions").text
    listed = [int(i) for i in re.findall(r'<a href="/ui/submissions/(\d+)">#', listing)]
    assert top_id in listed and dep_sub not in listed  # the farm's dependency submissions are not listed
    row = listing[listing.index(f'/ui/submissions/{top_id}"'):].split("</tr>")[0]
    assert "requirements.txt" in row and "<td>2</td>" in row and "state-dep_wait" in row and "state-succeeded" in row
    page = client.get(f"/ui/submissions/{top_id}").text
    requested = page[page.index('class="jobs requested"'):].split("</table>")[0]
    pulled = page[page.index('class="jobs pulled-in"'):].split("</table>")[0]
    assert sorted(int(i) for i in re.findall(r'/ui/jobs/(\d+)">#', requested)) == [ids["a"], ids["b"]]
    assert sorted(int(i) for i in re.findall(r'/ui/jobs/(\d+)">#', pulled)) == sorted(
        [ids["dep"], ids["deeper"], ids["reused"]])
    assert f"/ui/jobs/{ids['unrelated']}\"" not in page
    assert "state-building" in pulled and "no sdist" in page
    closure = page[page.index('class="closure-states">') + 23:].split("</dd>")[0]
    assert re.sub(r"<[^>]+>", "", closure) == "building 1, dep_wait 2, succeeded 2"
    assert client.get("/ui/submissions/999999").status_code == 404
    assert client.get(f"/ui/submissions/{2**31}").status_code == 422
    assert client.get("/ui/submissions?before=0").status_code == 422
    # the job page links its submission
    assert f'href="/ui/submissions/{top_id}"' in client.get(f"/ui/jobs/{ids['a']}").text

def test_promote_and_yank_through_the_pages(web: Web, tmp_path: Path) -> None:
    """Promote and yank buttons: shown to a token with the promote role (admin here), not to a submit
    token (and its POST is 403); the CSRF value is checked; a bad pin is 422 with the reason; the
    gate's refusal (a dependency not yet in the channel) is shown; a promotion puts the wheels into
    the channel's index, a yank marks them in the pages (PEP 592) and unyank clears it."""
    from farm.config import get_settings
    from tests.helpers.farms import publish_wheel
    from tests.helpers.wheels import make_wheel

    client = web.client
    settings = get_settings()
    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "webdep", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(src, "webrel", "1.0", requires=("webdep>=1",)), version="1.0")

    client.post("/ui/signin", data={"token": web.tokens["submit"]})
    page = client.get("/ui/projects/webrel").text
    assert "/ui/releases/promote" not in page and "/ui/releases/yank" not in page
    assert "/ui/releases/" not in client.get("/ui/channels").text
    r = client.post("/ui/releases/promote", data={"csrf": csrf(page), "pin": "webrel==1.0", "to": "stable"})
    assert r.status_code == 403

    client.post("/ui/signin", data={"token": web.tokens["admin"]})
    page = client.get("/ui/projects/webrel").text
    assert 'aria-label="Promote webrel 1.0"' in page and 'aria-label="Yank webrel 1.0"' in page
    token = csrf(page)
    assert client.post("/ui/releases/promote", data={"csrf": "0" * 64, "pin": "webrel==1.0", "to": "stable"}
                       ).status_code == 403
    r = client.post("/ui/releases/promote", data={"csrf": token, "pin": "webrel>=1.0", "to": "stable"})
    assert r.status_code == 422 and "NAME==VERSION" in r.text
    r = client.post("/ui/releases/yank", data={"csrf": token, "pin": "webrel==1.0", "reason": "bad\x00"})
    assert r.status_code == 422 and "control characters" in r.text
    # the gate: webdep is not in stable yet
    r = client.post("/ui/releases/promote", data={"csrf": token, "pin": "webrel==1.0", "to": "stable",
                                                   "back": "/ui/projects/webrel"})
    assert r.status_code == 422 and "webdep" in r.text and "promote it first" in r.text
    channels = client.get("/ui/channels").text
    assert 'aria-label="Promote webdep 1.0 to stable"' in channels
    r = client.post("/ui/releases/promote", data={"csrf": token, "pin": "webdep==1.0", "to": "stable",
                                                   "back": "//elsewhere.example/"})
    assert r.status_code == 200 and "promoted to stable: webdep-1.0-py3-none-any.whl" in r.text
    assert 'href="/"' in r.text and "elsewhere" not in r.text  # back is never off-site
    r = client.post("/ui/releases/promote", data={"csrf": token, "pin": "webrel==1.0", "to": "stable"})
    assert r.status_code == 200 and "promoted to stable: webrel-1.0-py3-none-any.whl" in r.text
    stable = client.get("/stable/simple/webrel/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
    assert [f["filename"] for f in stable["files"]] == ["webrel-1.0-py3-none-any.whl"]
    page = client.get("/ui/projects/webrel").text
    assert "staging, stable" in page and 'aria-label="Promote webrel 1.0"' not in page  # no channel above

    r = client.post("/ui/releases/yank", data={"csrf": token, "pin": "webrel==1.0", "reason": "broken on 3.13"})
    assert r.status_code == 200 and "yanked (broken on 3.13): webrel-1.0-py3-none-any.whl" in r.text
    files = client.get("/simple/webrel/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]
    assert files[0]["yanked"] == "broken on 3.13"
    page = client.get("/ui/projects/webrel").text
    assert 'aria-label="Unyank webrel 1.0"' in page
    r = client.post("/ui/releases/yank", data={"csrf": token, "pin": "webrel==1.0", "undo": "true"})
    assert r.status_code == 200 and "unyanked: webrel-1.0-py3-none-any.whl" in r.text
    files = client.get("/simple/webrel/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]
    assert files[0].get("yanked", False) is False
    r = client.post("/ui/releases/yank", data={"csrf": token, "pin": "nothere==1.0"})
    assert r.status_code == 404 and "no published wheel" in r.text

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


# In headless Chromium, against a real farm ---------------------------------------------------------

A11Y_CHECK = """() => {
  const problems = [];
  if (!document.title.trim()) problems.push('no title');
  if (document.documentElement.lang !== 'en') problems.push('no lang');
  if (document.querySelectorAll('h1').length !== 1) problems.push('h1 count ' + document.querySelectorAll('h1').length);
  const levels = [...document.querySelectorAll('h1,h2,h3,h4')].map(h => +h.tagName[1]);
  levels.forEach((l, i) => { if (i && l > levels[i - 1] + 1) problems.push('heading skips to h' + l); });
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    const labelled = (el.id && document.querySelector('label[for="' + el.id + '"]')) || el.getAttribute('aria-label')
      || el.closest('label');
    if (!labelled) problems.push('unlabelled ' + el.outerHTML);
  }
  for (const b of document.querySelectorAll('button, a[href]')) {
    if (!(b.textContent.trim() || b.getAttribute('aria-label'))) problems.push('unnamed ' + b.outerHTML);
  }
  for (const img of document.querySelectorAll('img')) if (!img.hasAttribute('alt')) problems.push('img without alt');
  for (const el of document.querySelectorAll('[role=img]')) if (!el.getAttribute('aria-label')) problems.push('role=img without label');
  for (const t of document.querySelectorAll('table')) {
    if (!t.querySelector('caption')) problems.push('table without caption');
    if (!t.querySelector('th')) problems.push('table without headers');
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def live_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator["Farm"]:
    from tests.helpers.env import free_port
    from tests.helpers.farms import Farm

    f = Farm(tmp_path_factory.mktemp("web-farm") / "home", free_port())
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("FARM_TEST_ARTIFACTS")  # CI keeps this folder; else a temporary one
    folder = Path(root) / "dashboard-screenshots" if root else tmp_path_factory.mktemp("dashboard-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    print(f"\ndashboard screenshots: {folder}")
    return folder


TICKS = 10


def slow_project(root: Path) -> Path:
    """A C-extension project whose setup.py prints a line a second for TICKS seconds: a build
    whose log grows while the browser watches."""
    from tests.helpers.sdists import make_project

    proj = make_project(root, "farmtest-web")
    setup = proj / "setup.py"
    setup.write_text("import time\n"
                     f"for i in range({TICKS}):\n"
                     "    print(f'slow build tick {i}', flush=True)\n"
                     "    time.sleep(1)\n" + setup.read_text())
    return proj


def _status(farm: "Farm") -> dict[int, dict]:
    out = farm.farm("status", "--json", "--limit", "50")
    return {j["id"]: j for j in json.loads(out.stdout)}


def _submit(farm: "Farm", sdist: Path) -> int:
    before = set(_status(farm))
    res = farm.farm("submit", str(sdist))
    assert res.returncode == 0, res.stdout + res.stderr
    new = sorted(set(_status(farm)) - before)
    assert len(new) == 1, new
    return new[0]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dashboard_in_chromium_on_a_building_farm(live_farm: "Farm", shots: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers.sdists import make_project, make_sdist  # noqa: F401

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    farm = live_farm
    base = farm.url
    httpx.get(base + "/metrics").raise_for_status()  # the first scrape: counting starts here
    token = (farm.home / "admin.token").read_text().strip()
    built = _submit(farm, make_sdist(slow_project(tmp_path), tmp_path / "dist-a"))
    second = make_sdist(make_project(tmp_path, "farmtest-webtwo", c_extension=False), tmp_path / "dist-b")

    checked: list[str] = []

    def check(page, name: str) -> None:  # type: ignore[no-untyped-def]
        problems = page.evaluate(A11Y_CHECK)
        assert problems == [], f"{name}: {problems}"
        page.screenshot(path=str(shots / f"{len(checked):02d}-{name}.png"), full_page=True)
        checked.append(name)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        failed_requests: list[str] = []
        # (a page left while its log streams aborts that request: not a failure)
        page.on("requestfailed", lambda r: None if r.failure == "net::ERR_ABORTED" else failed_requests.append(r.url))
        page.on("request", lambda r: None if r.url.startswith((base, "data:")) else failed_requests.append(r.url))
        try:
            page.goto(base + "/")
            assert page.url.startswith(base + "/ui/signin")
            check(page, "signin")
            page.get_by_label("API token").fill("farm_not-a-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).to_contain_text("not one this farm accepts")
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
            expect(page.locator("form.signout")).to_contain_text(f"Signed in as {LOCAL_ADMIN_NAME} (admin)")
            expect(page.locator(f'a[href="/ui/jobs/{built}"]')).to_be_visible()
            check(page, "jobs")

            # the job page while it builds: the log grows live over SSE
            page.goto(f"{base}/ui/jobs/{built}")
            log = page.locator("#log")
            page.evaluate("window.notReloaded = true")
            expect(log).to_contain_text("slow build tick 0", timeout=300_000)
            first = len(log.inner_text())
            page.wait_for_function("n => !document.getElementById('log').dataset.ended"
                                   " && document.getElementById('log').textContent.length > n", arg=first,
                                   timeout=120_000)  # lines arrive while the job runs
            expect(log).to_contain_text(f"slow build tick {TICKS - 1}", timeout=60_000)
            assert page.evaluate("window.notReloaded")  # followed live, never reloaded
            queued = _submit(farm, second)  # waits behind the build (one local worker)
            # in another tab: cancel the job queued behind the build, then build it again
            other = context.new_page()
            other.on("request", lambda r: None if r.url.startswith((base, "data:")) else failed_requests.append(r.url))
            other.goto(f"{base}/ui/jobs/{queued}")
            other.get_by_role("button", name=f"Cancel job {queued}").click()
            expect(other.locator(".headline .state")).to_have_text("cancelled")
            expect(other.locator("#log-status")).to_contain_text("ended", timeout=10_000)
            check(other, "job-cancelled")
            other.get_by_role("button", name="Build again").click()
            expect(other.get_by_role("heading", level=1)).to_contain_text("farmtest-webtwo")
            again = int(other.url.rsplit("/", 1)[1])
            assert again > queued
            expect(other.locator(".headline .state")).not_to_have_text("cancelled")

            other.close()
            expect(log).to_have_attribute("data-ended", "succeeded", timeout=600_000)
            assert "published" in log.inner_text() or "farmtest_web" in log.inner_text()
            page.reload()
            expect(page.locator(".headline .state")).to_have_text("succeeded")
            expect(page.locator(".headline .test")).to_have_text("tests passed")
            steps = page.locator("table.timeline tbody tr")
            names = [steps.nth(i).locator("td").nth(1).inner_text() for i in range(steps.count())]
            assert {"fetching", "building", "repairing", "verifying"} <= set(names), names
            assert page.locator(".bar").first.evaluate("b => parseFloat(b.style.width)") > 0
            wheel = page.locator("article.wheel a", has_text="wheel").first.get_attribute("href")
            assert wheel and wheel.endswith(".whl")
            assert httpx.get(base + wheel).status_code == 200
            prov = httpx.get(base + wheel + ".provenance.json")
            assert prov.status_code == 200 and prov.json()["subject"][0]["name"].endswith(".whl")
            expect(page.get_by_role("button", name="Build again")).to_have_count(0)  # it succeeded
            check(page, "job-succeeded")

            # the project's matrix
            page.goto(f"{base}/ui/projects/farmtest-web")
            cell = page.locator("table.matrix td .cell").first
            expect(cell.locator(".state")).to_have_text("succeeded")
            expect(cell.locator(".test")).to_have_text("tests passed")
            assert cell.get_by_role("link", name=re.compile("^log of")).get_attribute("href") == f"/ui/jobs/{built}/log"
            check(page, "project")

            page.goto(f"{base}/ui/workers")
            expect(page.locator("table.workers")).to_contain_text("cp311")
            check(page, "workers")
            page.goto(f"{base}/ui/channels")
            expect(page.locator("table.entries")).to_contain_text("farmtest_web-0.1.0")
            check(page, "channels")

            page.goto(f"{base}/?state=cancelled")
            expect(page.locator("table.jobs tbody tr")).to_have_count(1)
            check(page, "jobs-cancelled")
        finally:
            page.screenshot(path=str(shots / "last.png"), full_page=True)
            browser.close()
    assert failed_requests == [], failed_requests  # nothing from another site, nothing broken

    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(httpx.get(base + "/metrics").text) for s in f.samples}
    steps_counted = {dict(k[1])["step"] for k, v in samples.items() if k[0] == "farm_step_duration_seconds_count"}
    assert {"fetching", "building", "verifying"} <= steps_counted
    assert sum(v for k, v in samples.items() if k[0] == "farm_publish_latency_seconds_count") >= 1
    assert sum(v for k, v in samples.items() if k[0] == "farm_jobs_submitted_total") >= 3
    assert any(k[0] == "farm_jobs" and dict(k[1])["state"] == "succeeded" for k in samples)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_promote_and_yank_buttons_in_chromium(live_farm: "Farm", shots: Path, tmp_path: Path) -> None:
    """On the real farm: a pure-Python sdist built and published, then, as the admin, the project
    page's Promote button puts it into stable (its index lists it), the channels page's Yank button
    yanks it (the index says so) and offers Unyank."""
    from playwright.sync_api import expect, sync_playwright

    from tests.helpers.sdists import make_project, make_sdist

    farm = live_farm
    base = farm.url
    token = (farm.home / "admin.token").read_text().strip()
    job = _submit(farm, make_sdist(make_project(tmp_path, "farmtest-webrel", c_extension=False), tmp_path / "dist"))
    deadline = time.monotonic() + 900
    while _status(farm)[job]["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the build did not end"
        time.sleep(2)
    assert _status(farm)[job]["state"] == "succeeded"
    json_accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(base + "/ui/signin?next=%2Fui%2Fprojects%2Ffarmtest-webrel")
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("farmtest-webrel")
            assert page.evaluate(A11Y_CHECK) == []
            page.locator("table.releases select").first.select_option("stable")
            page.get_by_role("button", name="Promote farmtest-webrel 0.1.0").click()
            expect(page.get_by_role("heading", level=1)).to_have_text("Promote farmtest-webrel==0.1.0 to stable")
            expect(page.get_by_role("status")).to_contain_text("promoted to stable: farmtest_webrel-0.1.0")
            assert page.evaluate(A11Y_CHECK) == []
            page.screenshot(path=str(shots / "promoted.png"), full_page=True)
            stable = httpx.get(f"{base}/stable/simple/farmtest-webrel/", headers=json_accept).json()
            assert [f["filename"].startswith("farmtest_webrel-0.1.0") for f in stable["files"]] == [True]
            page.get_by_role("link", name="Back").click()
            expect(page.locator("table.releases")).to_contain_text("staging, stable")

            page.goto(f"{base}/ui/channels?channel=stable")
            expect(page.locator("table.entries")).to_contain_text("farmtest_webrel-0.1.0")
            page.get_by_role("button", name="Yank farmtest-webrel 0.1.0").click()
            expect(page.get_by_role("status")).to_contain_text("yanked: farmtest_webrel-0.1.0")
            files = httpx.get(f"{base}/simple/farmtest-webrel/", headers=json_accept).json()["files"]
            assert files and all(f.get("yanked") not in (None, False) for f in files)
            page.get_by_role("link", name="Back").click()
            expect(page.get_by_role("button", name="Unyank farmtest-webrel 0.1.0")).to_be_visible()
            assert page.evaluate(A11Y_CHECK) == []
            page.screenshot(path=str(shots / "channels-yanked.png"), full_page=True)
        finally:
            browser.close()
