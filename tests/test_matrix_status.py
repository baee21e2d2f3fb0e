"""No silent queues: a queued job for a (platform, Python) that no live worker serves says why, in
`farm status` (table and --json), the API's job views, `submit --wait` (plain lines and the rich
table) and the dashboard's job list. The reason is computed from the workers' registrations when
the jobs are read (nothing is stored with the job), so it follows the workers as they come and go.

In process on a fresh FARM_HOME (SQLite, the broker folder, no worker running); registrations are
recorded as the coordinator records them (farm.coordinator.workers.record). Bad inputs covered: a
platform no worker ever served, a Python the live workers of a platform do not offer, a worker
that left, a worker that stopped registering; and the reason going away once a worker serves the
pair (a stale reason would be as wrong as none).
"""

from __future__ import annotations

import io
import html
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console
from starlette.testclient import TestClient

import farm.cli
from farm.api.app import create_app
from farm.cli.backend import LocalBackend
from farm.cli.remote import ApiClient
from farm.cli.render import wait
from farm.config import get_settings, reset_settings
from farm.coordinator import workers
from farm.db.session import session_scope
from farm.messages import OfferedPython, WorkerRegistration
from farm.tokens import ensure_local_admin_token
from farm.web import queries
from tests.helpers.sdists import make_good

Run = Callable[..., tuple[int, str, str]]


def reg(worker: str, platform: str, pythons: list[str], *, leaving: bool = False) -> WorkerRegistration:
    return WorkerRegistration(worker=worker, platform=platform, engine="native", interval=20.0, sent_at=time.time(),
                              pythons=[OfferedPython(python=p) for p in pythons], leaving=leaving)


@pytest.fixture
def run(farm_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64", "linux-aarch64"]))
    monkeypatch.setattr("farm.coordinator.submit.sdist_kind", lambda path: "platform")  # one job per pair
    for var in ("FARM_SERVER_URL", "FARM_TOKEN"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.chdir(farm_home.parent)
    reset_settings()

    def main(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = farm.cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield main


def _submit(run: Run, folder: Path, *args: str) -> dict[str, int]:
    """Submit a small real sdist; build id -> job id."""
    code, out, err = run("submit", *args, str(make_good(folder, "good", "1.0")))
    assert code == 0, err
    return {m[1]: int(m[0]) for m in re.findall(r"^job (\d+): good 1\.0 (\S+) queued$", out, re.MULTILINE)}


def _by_build(views: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {v["build_id"]: v for v in views}


def test_status_table_and_json_say_why_a_job_waits(run: Run, tmp_path: Path) -> None:
    settings = get_settings()
    workers.record(reg("x@host", "linux-x86_64", ["cp311", "cp313"]), settings)
    workers.record(reg("arm@pi", "linux-aarch64", ["cp312"]), settings, now=time.time() - 600)  # stopped registering
    jobs = _submit(run, tmp_path / "a", "--python", "3.11", "--python", "3.12")
    assert sorted(jobs) == ["cp311-manylinux_aarch64", "cp311-manylinux_x86_64", "cp312-manylinux_aarch64",
                            "cp312-manylinux_x86_64"]
    code, out, _ = run("status", "--json")
    views = _by_build(json.loads(out))
    assert views["cp311-manylinux_x86_64"]["unserved"] is None  # served: no reason
    why = views["cp312-manylinux_x86_64"]["unserved"]  # the platform is served, not this Python
    assert why.startswith("no live worker of linux-x86_64 builds for cp312") and "cp311, cp313" in why
    for build, python in (("cp311-manylinux_aarch64", "cp311"), ("cp312-manylinux_aarch64", "cp312")):
        why = views[build]["unserved"]
        assert why.startswith(f"no live worker serves linux-aarch64 {python}") and "arm@pi, was last seen 10 min ago" in why
    code, table, _ = run("status")
    rows = {line.split()[3]: line for line in table.splitlines()[1:]}
    assert "nobody to build it" not in rows["cp311-manylinux_x86_64"]
    assert rows["cp312-manylinux_aarch64"].endswith(
        "nobody to build it: " + views["cp312-manylinux_aarch64"]["unserved"])
    # a worker comes for aarch64 cp312: read again, that reason is gone, the others stay
    workers.record(reg("arm2@pi", "linux-aarch64", ["cp312"]), settings)
    views = _by_build(json.loads(run("status", "--json")[1]))
    assert views["cp312-manylinux_aarch64"]["unserved"] is None
    assert views["cp311-manylinux_aarch64"]["unserved"].startswith("no live worker of linux-aarch64 builds for cp311")
    # a job that is no longer queued has no reason, whoever serves it
    assert run("cancel", str(jobs["cp312-manylinux_x86_64"]))[0] == 0
    views = _by_build(json.loads(run("status", "--json")[1]))
    assert views["cp312-manylinux_x86_64"]["state"] == "cancelled" and views["cp312-manylinux_x86_64"]["unserved"] is None


def test_the_api_and_the_dashboard_give_the_same_reason(run: Run, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    workers.record(reg("arm@pi", "linux-aarch64", ["cp311"]), settings, now=time.time() - 3600)
    workers.record(reg("arm@pi", "linux-aarch64", [], leaving=True), settings, now=time.time() - 3600)  # it left
    jobs = _submit(run, tmp_path / "a", "--python", "3.11")
    local = _by_build(json.loads(run("status", "--json")[1]))
    aarch = jobs["cp311-manylinux_aarch64"]
    assert "no live worker serves linux-aarch64 cp311 (the last one, arm@pi, left 60 min ago)" in local["cp311-manylinux_aarch64"]["unserved"]
    token, _ = ensure_local_admin_token(settings.home)
    with TestClient(create_app(settings)) as http:
        headers = {"Authorization": f"Bearer {token}"}
        one = http.get(f"/api/jobs/{aarch}", headers=headers).json()
        listed = _by_build(http.get("/api/jobs", headers=headers).json())
        monkeypatch.setattr("farm.cli.remote.client_from_settings",
                            lambda: ApiClient("http://testserver", token, client=http))
        remote = _by_build(json.loads(run("--server", "http://testserver", "status", "--json")[1]))
        http.post("/ui/signin", data={"token": token})
        page, job_page = http.get("/").text, http.get(f"/ui/jobs/{aarch}").text
    for view in (one, listed["cp311-manylinux_aarch64"], remote["cp311-manylinux_aarch64"]):
        assert view["unserved"] == local["cp311-manylinux_aarch64"]["unserved"]
    # once any worker registered, this host's platform is not assumed served: none ever served it
    assert listed["cp311-manylinux_x86_64"]["unserved"] == ("no live worker serves linux-x86_64 cp311; "
                                                            "start one with `farm worker --platform linux-x86_64`")
    with session_scope() as session:
        rows = {r["build_id"]: r for r in queries.job_page(session, queries.JobFilter()).rows}
        detail = queries.job_detail(session, aarch)
    assert rows["cp311-manylinux_aarch64"]["unserved"] == local["cp311-manylinux_aarch64"]["unserved"]
    assert rows["cp311-manylinux_x86_64"]["unserved"] == listed["cp311-manylinux_x86_64"]["unserved"]
    assert detail is not None and detail["unserved"] == local["cp311-manylinux_aarch64"]["unserved"]
    shown = html.escape(local["cp311-manylinux_aarch64"]["unserved"], quote=False)
    assert shown in page and shown in job_page  # the dashboard's job list and job page say it too


def test_submit_wait_shows_the_reason_in_lines_and_in_the_table(run: Run, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    jobs = _submit(run, tmp_path / "a", "--python", "3.11")  # no worker ever registered for aarch64
    ids = sorted(jobs.values())
    aarch = jobs["cp311-manylinux_aarch64"]
    backend = LocalBackend(get_settings())
    backend.poll_interval = 0.05
    capsys.readouterr()
    with pytest.raises(farm.errors.WaitTimeout):
        wait(backend, ids, timeout=0.3, quiet=False)
    out = capsys.readouterr().out.splitlines()
    said = [line for line in out if "nobody to build it" in line]
    # once per job for all the looks the loop took, and only for the job nobody serves
    assert said == [f"job {aarch}: nobody to build it: no live worker serves linux-aarch64 cp311; "
                    "start one with `farm worker --platform linux-aarch64`"], out
    console = Console(file=io.StringIO(), width=250, record=True, force_terminal=False)
    with pytest.raises(farm.errors.WaitTimeout):
        wait(backend, ids, timeout=0.1, quiet=False, live=console)
    drawn = console.export_text()
    row = next(line for line in drawn.splitlines() if "cp311-manylinux_aarch64" in line)
    assert "queued" in row and "nobody to build it: no live worker serves linux-aarch64 cp311" in row, drawn
    other = next(line for line in drawn.splitlines() if "cp311-manylinux_x86_64" in line)
    assert "nobody to build it" not in other, drawn
