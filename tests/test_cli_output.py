"""What `farm status` and `farm submit --wait` print, on this host's farm and with `--server`.

In process (`farm.cli.main`, output captured) on a fresh FARM_HOME with SQLite; sdists made by
tests/test_submit.py's `make_good`; build messages go to the broker folder and no worker runs, so
the jobs stay queued unless a test cancels them. `--server` goes to the farm's API app in this
process on the same FARM_HOME (Starlette's TestClient): both backends must print the same table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import farm.cli
from farm.api.app import create_app
from farm.cli.backend import LocalBackend
from farm.cli.remote import ApiClient
from farm.cli.render import STATUS_COLUMNS, wait
from farm.config import get_settings, reset_settings
from farm.errors import EXIT_JOBS_FAILED, NotFound, WaitTimeout
from farm.tokens import ensure_local_admin_token
from tests.helpers.sdists import make_good


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(farm_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(["linux-x86_64", "linux-aarch64"]))
    # one job per platform even for a pure sdist: the output is under test here, the matrix in tests/test_matrix.py
    monkeypatch.setattr("farm.coordinator.submit.sdist_kind", lambda path: "platform")
    for var in ("FARM_SERVER_URL", "FARM_TOKEN"):  # `main` sets them for --server, --token: undone after the test
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


def _submit(run: Run, folder: Path, name: str, version: str) -> list[int]:
    code, out, err = run("submit", str(make_good(folder, name, version)))
    assert code == 0, err
    return [int(m) for m in re.findall(r"^job (\d+):", out, re.MULTILINE)]


def test_status_has_a_header_and_aligned_columns(run: Run, tmp_path: Path) -> None:
    farm.cli.ensure_db()
    assert run("status") == (0, "no jobs\n", "")
    short = _submit(run, tmp_path / "a", "good", "1.0")
    long = _submit(run, tmp_path / "b", "a-much-longer-project-name", "2024.10.1")
    code, out, err = run("cancel", str(short[0]))
    assert code == 0, err

    code, table, err = run("status")
    assert code == 0 and err == "", err
    lines = table.splitlines()
    assert lines[0].split() == list(STATUS_COLUMNS)
    rows = lines[1:]
    assert [int(r.split()[0]) for r in rows] == sorted(short + long, reverse=True)  # newest first
    # every column starts where its header does, whatever the width of the values above or below it
    starts = [lines[0].index(h) for h in STATUS_COLUMNS[1:5]]
    for row in rows:
        cells = re.finditer(r"\S+", row)
        next(cells)  # the job id, right-aligned under JOB
        assert [m.start() for m in cells][:4] == starts, (lines[0], row)
    assert re.search(rf"^ +{short[0]}  good +1\.0 +\S+ +cancelled", table, re.MULTILINE), table
    job_end = lines[0].index("JOB") + len("JOB")
    assert all(len(r) - len(r.lstrip()) + len(r.split()[0]) == job_end for r in rows)  # ids end where JOB does


def test_status_is_the_same_with_server(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _submit(run, tmp_path / "a", "good", "1.0")
    _submit(run, tmp_path / "b", "other-project", "3.1")
    local = run("status")
    local_json = run("status", "--json")
    token, _ = ensure_local_admin_token(get_settings().home)
    with TestClient(create_app(get_settings())) as http:
        monkeypatch.setattr("farm.cli.remote.client_from_settings",
                            lambda: ApiClient("http://testserver", token, client=http))
        remote = run("--server", "http://testserver", "status")
        remote_json = run("--server", "http://testserver", "status", "--json")
    assert remote == local and local[1].startswith("JOB ")
    assert json.loads(remote_json[1]) == json.loads(local_json[1])


def test_wait_timeout_is_not_a_failure(run: Run, tmp_path: Path) -> None:
    """No worker runs: the jobs stay queued, `--wait` gives up after --timeout with its own exit code."""
    code, out, err = run("submit", str(make_good(tmp_path / "a", "good", "1.0")), "--wait", "--timeout", "0.2")
    assert code == WaitTimeout.exit_code == 124, err
    warning, error = err.splitlines()  # no worker serves linux-aarch64: said at once, not a silent queue
    assert warning.startswith("farm: warning: cp") and "manylinux_aarch64: no live worker serves linux-aarch64" in warning, err
    assert error.startswith("farm: error: timed out after 0 s waiting for jobs [") and "farm status" in err, err
    assert out.count("queued\n") == 4  # two submitted, then two seen queued by the wait loop
    code, table, _ = run("status")
    assert table.count("queued") == 2  # they go on


def test_wait_on_jobs_that_did_not_succeed(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _submit(run, tmp_path / "a", "good", "1.0")
    assert run("cancel", *map(str, ids))[0] == 0
    assert wait(LocalBackend(get_settings()), ids, timeout=5, quiet=True) == EXIT_JOBS_FAILED == 1
    err = capsys.readouterr().err
    assert [line.split(":")[0] for line in err.splitlines()] == [f"job {i} cancelled" for i in sorted(ids)]


def _remote(monkeypatch: pytest.MonkeyPatch, http: TestClient, token: str) -> None:
    """`--server http://testserver` goes to `http`; a read over the API must never open the local database."""
    monkeypatch.setattr("farm.cli.remote.client_from_settings", lambda: ApiClient("http://testserver", token, client=http))

    def no_db(*, create: bool = True) -> None:
        raise AssertionError("a command with --server opened the local database")

    monkeypatch.setattr("farm.cli.ensure_db", no_db)
    monkeypatch.setattr("farm.cli.publishing.ensure_db", no_db)


def test_show_find_and_logs_are_the_same_with_server(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    sdist = make_good(tmp_path / "a", "good", "1.0")
    code, out, err = run("submit", str(sdist))
    job = int(re.findall(r"^job (\d+):", out, re.MULTILINE)[0])
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    reads = [("show", "good==1.0"), ("show", "good==1.0", "--json"), ("find", "--sha256", digest[:12]),
             ("find", "--sha256", digest, "--json"), ("status", "--json"), ("logs", str(job)),
             ("logs", str(job), "--json")]
    local = [run(*args) for args in reads]
    assert all(code == 0 for code, _, _ in local), local
    assert "good" in local[0][1] and json.loads(local[1][1])["name"] == "good"
    assert json.loads(local[3][1])["kind"] == "sdist"
    assert json.loads(local[6][1]) == {"job": job, "log": local[5][1]}
    missing_local = run("show", "absent==1.0")
    token, _ = ensure_local_admin_token(get_settings().home)
    with TestClient(create_app(get_settings())) as http:
        _remote(monkeypatch, http, token)
        remote = [run("--server", "http://testserver", *args) for args in reads]
        missing_remote = run("--server", "http://testserver", "show", "absent==1.0")
        bad_pin = run("--server", "http://testserver", "show", "not a pin")
    for args, l, r in zip(reads, local, remote, strict=True):
        if "--json" in args:
            assert json.loads(r[1]) == json.loads(l[1]), args
        else:
            assert r == l, (args, [(a, b) for a, b in zip(r[1].splitlines(), l[1].splitlines(), strict=False) if a != b])
    assert missing_remote[0] == missing_local[0] == NotFound.exit_code and "no record of absent==1.0" in missing_remote[2]
    assert bad_pin[0] != 0 and "NAME==VERSION" in bad_pin[2]


@pytest.mark.parametrize("args", [("show", "good==1.0"), ("find", "--sha256", "0123456789abcdef"), ("status",),
                                  ("logs", "1"), ("logs", "1", "--json"), ("status", "--json")])
def test_reads_with_server_create_no_database(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The real command in a folder with no farm, its server unreachable: an error that names the
    server, and nothing created here (no ./.farm, no database)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    result = subprocess.run([sys.executable, "-m", "farm.cli", "--server", url, "--token", "t", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and url in result.stderr and "ConnectError" in result.stderr, result
    assert list(tmp_path.iterdir()) == []


def test_logs_follow_prints_the_log_as_it_grows_until_the_job_ends(run: Run, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import threading
    import time

    from farm.cli.render import follow
    from farm.storage import get_storage, log_key

    job = _submit(run, tmp_path / "a", "good", "1.0")[0]
    seen: list[str] = []
    reads = threading.Semaphore(0)

    class Counting(LocalBackend):  # each read of the log is signalled, so the writer knows follow has looked
        def log(self, job_id: int) -> str:
            text = super().log(job_id)
            reads.release()
            return text

    backend = Counting(get_settings())

    def build() -> None:  # a worker writing the log line by line, then the job ending
        storage = get_storage()
        text = ""
        for line in ("fetching\n", "building\n", "repairing\n"):
            text += line
            storage.put_bytes(log_key(job, 1), text.encode(), replace=True)
            while reads.acquire(blocking=False):  # forget the reads before this write
                pass
            for _ in range(3):  # a read under way at the write, one after it, and the next (so its print is done)
                assert reads.acquire(timeout=30)
            seen.append(capsys.readouterr().out)  # what follow printed so far
        backend.cancel(job)

    thread = threading.Thread(target=build)
    capsys.readouterr()
    thread.start()
    assert follow(backend, job, poll=0.05) == 0
    thread.join()
    rest = capsys.readouterr().out
    assert seen == ["fetching\n", "building\n", "repairing\n"]  # each line as it came, none twice
    assert rest.startswith("\n[cancelled]")  # the end: the job's state and reason, then follow returns
    code, _, err = run("logs", str(job), "--follow", "--json")
    assert code == 2 and "give one of them" in err


class _Scripted:
    """A backend whose jobs go through scripted views, one per look."""

    poll_interval = 0.0

    def __init__(self, script: list[dict[int, dict]]) -> None:
        self.script, self.look = script, 0

    def jobs_by_id(self, job_ids: list[int]) -> list[dict]:
        frame = self.script[min(self.look, len(self.script) - 1)]
        self.look += 1
        return [frame[i] for i in job_ids if i in frame]


def _view(job: int, state: str, steps: list[tuple[str, float, str]] = (), *, seconds: float | None = None,
          deps: list[int] = (), waiting: list[str] = (), name: str = "good") -> dict:  # type: ignore[assignment]
    return {"id": job, "submission_id": 1, "name": name, "version": "1.0", "build_id": "cp311-linux", "state": state,
            "attempt": 1, "cached_from": None, "error": None if state != "failed" else "boom",
            "steps": [{"name": n, "seconds": s, "outcome": o} for n, s, o in steps], "wheels": [],
            "waiting_for": list(waiting), "seconds": seconds, "dependency_jobs": list(deps)}


_SCRIPT = [
    {1: _view(1, "queued")},
    {1: _view(1, "running", [("fetching", 0.4, "running")], seconds=0.4)},
    {1: _view(1, "running", [("fetching", 0.5, "ok"), ("building", 12.0, "running")], seconds=12.5)},
    {1: _view(1, "dep_wait", [("fetching", 0.5, "ok"), ("building", 40.0, "ok")], seconds=45.0, deps=[7],
              waiting=["dep>=1"]),
     7: _view(7, "running", [("building", 3.0, "running")], seconds=3.0, name="dep")},
    {1: _view(1, "succeeded", [("fetching", 0.5, "ok"), ("building", 40.0, "ok")], seconds=50.0, deps=[7]),
     7: _view(7, "succeeded", [("building", 5.0, "ok")], seconds=5.0, name="dep")},
]


def test_wait_says_each_step_with_elapsed_time_and_the_dependency_jobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert wait(_Scripted(_SCRIPT), [1], timeout=5, quiet=False) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "job 1: good 1.0 cp311-linux: queued",
        "job 1: good 1.0 cp311-linux: running",
        "job 1: good 1.0 cp311-linux: running, building 12s, 12s in all",
        "job 1: good 1.0 cp311-linux: dep_wait  [fetching 0.5s building 40.0s]",
        "job 1: good 1.0 cp311-linux: succeeded  [fetching 0.5s building 40.0s]",
        "job 7: dep 1.0 cp311-linux: succeeded  [building 5.0s] (a dependency of job 1)",
    ]


def test_wait_says_a_long_step_again(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("farm.cli.render.STILL_EVERY", 0.0)
    script = [{1: _view(1, "running", [("building", float(s), "running")], seconds=float(s))} for s in (1, 2)]
    with pytest.raises(WaitTimeout):
        wait(_Scripted(script), [1], timeout=0.05, quiet=False)  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "job 1: good 1.0 cp311-linux: running"
    assert lines[1:3] == ["job 1: good 1.0 cp311-linux: running, building 2s, 2s in all"] * 2


def test_wait_on_a_terminal_is_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    assert wait(_Scripted(_SCRIPT), [1], timeout=5, quiet=False, live=console) == 0  # type: ignore[arg-type]
    drawn = screen.getvalue()
    assert "JOB" in drawn and "ELAPSED" in drawn
    assert re.search(r"1 +good +1\.0 +cp311-linux +running +building 12s +12s", drawn), drawn
    assert re.search(r"7 +dep +1\.0 +cp311-linux +succeeded +5s +dependency of 1", drawn), drawn
    assert "waiting for dep>=1" in drawn
    assert capsys.readouterr().out == ""  # the table went to the console, nothing else to stdout
