"""Real servers on 127.0.0.1 for tests and the benchmarks, started as child processes and stopped
by their pid: third-party index servers (pypiserver, devpi-server), and a distributed farm made of
real processes.

`PypiServer` and `DevpiServer` each run in their own folder. `RedisServer` is a private
redis-server on a free loopback port (append-only file, so a restart keeps the queued messages),
never the machine's shared one. `pg_database` creates a PostgreSQL database of our own (dropped
afterwards). `Cluster` runs `python -m farm.cli coordinator|worker` processes against them in one
FARM_HOME (storage and index shared: workers on one host), each with its own log file, and can
kill, restart and inspect them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.helpers.env import ONE_JOB, ONE_PYTHON, free_port

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TERMINAL = {"succeeded", "failed", "cancelled"}


def pg_database(prefix: str) -> tuple[str, str]:
    """Create a fresh PostgreSQL database; return (its name, its SQLAlchemy URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RedisServer:
    """Our own redis-server: loopback only, no RDB snapshots, append-only file fsynced every write."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dir", str(self.folder), "--protected-mode", "yes"]
        with open(self.folder / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.folder / 'redis.log'}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, *, down_for: float = 1.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue, over all priority lists (kombu's key names)."""
        c = self.client()
        return sum(c.llen(k) for k in [queue, *(f"{queue}\x06\x16{p}" for p in range(1, 10))])


@dataclass
class Cluster:
    """Farm processes sharing one FARM_HOME, database and broker."""

    root: Path
    db_url: str
    broker_url: str
    settings: dict[str, str] = field(default_factory=dict)  # extra FARM_* variables
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _engine: Engine | None = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update({"FARM_HOME": str(self.home), "FARM_DATABASE_URL": self.db_url, "FARM_BROKER_URL": self.broker_url,
                    "FARM_PYTHONS": ONE_PYTHON, "FARM_WORKER_JOBS": ONE_JOB, **self.settings})
        return env

    def farm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, name: str) -> None:
        """`coordinator...` runs `farm coordinator`; any other name a worker with that node name."""
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "farm.cli", "coordinator"] if name.startswith("coordinator") else \
            [sys.executable, "-m", "farm.cli", "worker", "--name", name]
        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, names: Iterable[str], timeout: float = 60) -> None:
        """Until each Celery process logs `ready.` (connected, consuming)."""
        deadline = time.monotonic() + timeout
        for name in names:
            marker = self.root / f"{name}.log"
            while "ready." not in self.log(name).split("--- start ---")[-1]:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout} s:\n{marker.read_text()[-3000:]}")
                time.sleep(0.1)

    def launch(self, *names: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in names:
            with open(self.root / f"{name}.log", "a") as out:
                out.write("\n--- start ---\n")
            self.start(name)
        self.wait_ready(names)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        if self._engine is not None:
            self._engine.dispose()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # The database, read directly -----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = create_engine(self.db_url, pool_pre_ping=True)
        return self._engine

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), params)]

    def jobs(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        ids = list(ids)
        return {r["id"]: r for r in self.rows("SELECT * FROM job WHERE id = ANY(:ids)", ids=ids)}

    def wait_state(self, job_id: int, states: set[str], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.jobs([job_id])[job_id]
            if job["state"] in states:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {job['state']} ({job['error']})")

    def wait_done(self, ids: Iterable[int], timeout: float = 600) -> dict[int, dict[str, Any]]:
        ids = list(ids)
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(ids)
            if all(j["state"] in TERMINAL for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                open_jobs = {i: (j["state"], j["attempt"], j["error"]) for i, j in jobs.items() if j["state"] not in TERMINAL}
                raise AssertionError(f"jobs not done after {timeout} s: {open_jobs}")
            time.sleep(0.2)

    # The index, checked against the database -------------------------------------------------------

    def index_problems(self) -> list[str]:
        """Every artifact listed exactly once on its project's page with its sha256 and file; nothing else."""
        from farm.util.hashing import sha256_file

        index = self.home / "index"
        problems: list[str] = []
        arts = self.rows("SELECT name, filename, sha256 FROM artifact")
        by_project: dict[str, dict[str, str]] = {}
        for a in arts:
            if a["filename"] in by_project.setdefault(a["name"], {}):
                problems.append(f"{a['filename']}: two artifact rows")
            by_project[a["name"]][a["filename"]] = a["sha256"]
        listed_projects = set()
        root = index / "simple" / "index.json"
        if root.exists():
            listed_projects = {p["name"] for p in json.loads(root.read_text())["projects"]}
        pages = {p.name for p in (index / "simple").iterdir() if p.is_dir()} if (index / "simple").is_dir() else set()
        for project in sorted(set(by_project) | pages | listed_projects):
            want = by_project.get(project, {})
            page = index / "simple" / project / "index.json"
            files = json.loads(page.read_text())["files"] if page.exists() else []
            names = [f["filename"] for f in files]
            if project not in listed_projects:
                problems.append(f"{project}: not in the project list")
            for name in set(names):
                if names.count(name) > 1:
                    problems.append(f"{project}: {name} listed {names.count(name)} times")
            for f in files:
                if f["filename"] not in want:
                    problems.append(f"{project}: {f['filename']} listed without an artifact row (orphan)")
                elif f["hashes"]["sha256"] != want[f["filename"]]:
                    problems.append(f"{project}: {f['filename']} listed with another sha256 than its artifact")
            for name, sha in want.items():
                if name not in names:
                    problems.append(f"{project}: artifact {name} not listed")
                path = index / "files" / project / name
                if not path.is_file() or sha256_file(path) != sha:
                    problems.append(f"{project}: file {name} missing or with another sha256")
            folder = index / "files" / project
            if folder.is_dir():
                for path in folder.iterdir():
                    if path.name.endswith(".whl") and path.name not in want:
                        problems.append(f"{project}: orphan file {path.name}")
        return problems


# Third-party index servers

BIN = Path(sys.executable).parent


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class PypiServer:
    """`pypi-server run` on a folder; uploads need `username`/`password` (an htpasswd file)."""

    def __init__(self, folder: Path, *, username: str = "farm", password: str = "s3cret-pypiserver",
                 server: str = "auto") -> None:
        self.folder, self.username, self.password, self.server = Path(folder), username, password, server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.index_url = self.url + "simple/"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PypiServer:
        from passlib.apache import HtpasswdFile

        packages = self.folder / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        ht = HtpasswdFile(str(self.folder / "htpasswd"), new=True)
        ht.set_password(self.username, self.password)
        ht.save()
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(self.port), "-P",
                 str(self.folder / "htpasswd"), "-a", "update", "--disable-fallback", "--server", self.server,
                 str(packages)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self.index_url, self.proc, log)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


class DevpiServer:
    """`devpi-server --offline-mode` with user `username` owning the index `username/dev` (no bases)."""

    def __init__(self, folder: Path, *, username: str = "farm", password: str = "s3cret-devpi",
                 index: str = "dev") -> None:
        self.folder, self.username, self.password, self.index = Path(folder), username, password, index
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}/"
        self.url = f"{self.root_url}{username}/{index}/"  # the upload URL
        self.index_url = f"{self.url}+simple/"
        self.proc: subprocess.Popen[bytes] | None = None

    def _client(self, *args: str) -> None:
        r = subprocess.run([str(BIN / "devpi"), "--clientdir", str(self.folder / "client"), *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"devpi {' '.join(args)}: {r.stdout}{r.stderr}")

    def __enter__(self) -> DevpiServer:
        serverdir = self.folder / "server"
        root_password = "root-" + self.password
        if not (serverdir / ".serverversion").exists():
            subprocess.run([str(BIN / "devpi-init"), "--serverdir", str(serverdir), "--root-passwd", root_password],
                           check=True, capture_output=True, timeout=120)
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "devpi-server"), "--offline-mode", "--host", "127.0.0.1", "--port", str(self.port),
                 "--serverdir", str(serverdir)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self.root_url + "+api", self.proc, log)
        self._client("use", self.root_url)
        self._client("login", "root", "--password", root_password)
        try:
            self._client("user", "-c", self.username, f"password={self.password}", "email=farm@example.invalid")
        except RuntimeError as exc:
            if "exists" not in str(exc):
                raise
        self._client("login", self.username, "--password", self.password)
        try:
            self._client("index", "-c", self.index, "bases=", "volatile=False")
        except RuntimeError as exc:
            if "exists" not in str(exc):
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)
