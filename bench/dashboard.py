"""Benchmark of the dashboard at a million jobs, on PostgreSQL.

A scratch database (created here, dropped at the end) gets the farm's schema by its migrations,
then, by `INSERT ... SELECT generate_series` (no row passes through Python):

    sources       N/50 sdists of N/500 projects (10 versions each)
    submissions   N/5, one in ten made by the farm for a dependency (`kind` dependency)
    jobs          N (default 1,000,000): 50 per sdist (platforms x Pythons x resubmissions), on four
                  platforms (70 % linux-x86_64, 25 % linux-aarch64, 4 % macos-arm64, 1 % win-amd64),
                  2 % failed, 1 % cancelled, the newest 200 queued or building, the rest succeeded
    steps         3 per job (fetching, building, verifying)
    artifacts     one wheel per succeeded job, each with its provenance and its staging entry
    dependencies  one in ten jobs waited for another job

The API app (the dashboard included) runs under uvicorn on 127.0.0.1; an ASGI wrapper records each
request's server time (from the request reaching the app to the last byte of the response leaving
it), and the CPU time the benchmark's process spent per request (the server's work, the client's
few hundred microseconds included): on a machine that other work shares, the server time grows
with the load average (recorded) while the CPU time does not. Measured, `--rounds` times each after
a warm-up, over one keep-alive connection:

    jobs, first page          /
    jobs, filtered            /?state=failed&platform=linux-aarch64
    jobs, by project          /?project=NAME
    jobs, rare platform       /?platform=win-amd64
    jobs, deep page           /?before=ID (ID near the oldest jobs: the last pages of the list)
    jobs, deep filtered page  /?state=failed&before=ID
    project page              /ui/projects/NAME (the matrix of its newest 20 sdists)
    submissions               /ui/submissions, and one submission with its closure

Baselines, in the same run and database: the deep page as OFFSET paging reads it (`ORDER BY id DESC
OFFSET k LIMIT 51`, the page number times 50) against the seek query the dashboard sends, both in
SQL on the same connection; and the project page's query as it was before this benchmark (every job
of its 20 sdists, with their steps, wheels and provenance, loaded as objects) against its
replacement (farm/web/queries.py `project_matrix`).

SSE: a job in `building` with a log file; a client follows `/ui/jobs/ID/log/stream`; `--lines`
lines are appended at random intervals (50-300 ms) and the time from the write to the line's
arrival at the client is recorded.

    .venv/bin/python bench/dashboard.py                      # 1,000,000 jobs, 30 rounds
    .venv/bin/python bench/dashboard.py --jobs 100000 --rounds 10 --json /tmp/dash.json

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), about 2 GB of disk for the scratch
database; takes about 5 minutes on 2 cores (most of it the inserts and indexes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(ms), 2), "p95": round(pct(ms, 95), 2), "n": len(ms)}


# The data --------------------------------------------------------------------------------------------

def fill(url: str, n: int) -> dict[str, Any]:
    """Bulk rows by generate_series; returns what the measurements address (names, ids)."""
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    sources, projects, subs = n // 50, max(1, n // 500), n // 5
    t0 = time.monotonic()
    sql = [
        f"""INSERT INTO source (id, sha256, name, version, filename, size, storage_key, requires_python, created_at)
            SELECT i, md5(i::text) || md5('s' || i), 'proj-' || (i % {projects}), ((i / {projects}) + 1) || '.0',
                   'proj_' || (i % {projects}) || '-' || ((i / {projects}) + 1) || '.0.tar.gz', 1000,
                   'sdists/x/' || i, '>=3.9', now() - interval '1 day' + i * interval '1 ms'
            FROM generate_series(1, {sources}) i""",
        f"""INSERT INTO submission (id, created_at, kind, request)
            SELECT i, now() - interval '1 day' + i * interval '5 ms',
                   CASE WHEN i % 10 = 0 THEN 'dependency' WHEN i % 7 = 0 THEN 'requirements' ELSE 'requirement' END,
                   CASE WHEN i % 7 = 0 THEN 'requirements-' || i || '.txt' ELSE 'proj-' || (i % {projects}) || '==1.0' END
            FROM generate_series(1, {subs}) i""",
        f"""INSERT INTO job (id, submission_id, source_id, platform, python, build_id, engine, recipe_digest, recipe,
                             cache_key, state, attempt, worker, staged, priority, created_at, started_at, finished_at,
                             updated_at)
            SELECT i, (i - 1) / 5 + 1, (i - 1) / 50 + 1,
                   CASE WHEN i % 100 < 70 THEN 'linux-x86_64' WHEN i % 100 < 95 THEN 'linux-aarch64'
                        WHEN i % 100 < 99 THEN 'macos-arm64' ELSE 'win-amd64' END,
                   'cp3' || (9 + i % 5), 'cp3' || (9 + i % 5) || '-build', 'native', repeat('0', 64), '{{}}',
                   md5('k' || i) || md5('c' || i),
                   CASE WHEN i > {n} - 100 THEN 'queued' WHEN i > {n} - 200 THEN 'building'
                        WHEN i % 50 = 0 THEN 'failed' WHEN i % 97 = 0 THEN 'cancelled' ELSE 'succeeded' END,
                   1, CASE WHEN i > {n} - 100 THEN NULL ELSE 'worker-' || (i % 8) END, '{{}}', 0,
                   now() - interval '1 day' + i * interval '1 ms', now() - interval '1 day' + i * interval '1 ms',
                   CASE WHEN i > {n} - 200 THEN NULL ELSE now() - interval '1 day' + i * interval '1 ms' + interval '40 s' END,
                   now()
            FROM generate_series(1, {n}) i""",
        """INSERT INTO step (job_id, attempt, name, started_at, finished_at, seconds, outcome, log)
            SELECT j.id, 1, s.name, j.started_at, j.finished_at, 10, 'ok', ''
            FROM job j CROSS JOIN (VALUES ('fetching'), ('building'), ('verifying')) s(name)""",
        """INSERT INTO artifact (id, job_id, filename, filename_key, sha256, size, name, version, tags, requires_dist,
                                 storage_key, verified, published_at, created_at)
            SELECT j.id, j.id, 'w' || j.id || '.whl', 'w' || j.id || '.whl', md5('a' || j.id) || md5('w' || j.id),
                   1000, s.name, s.version, '[]', '[]', 'wheels/' || j.id, true, j.finished_at, j.finished_at
            FROM job j JOIN source s ON s.id = j.source_id WHERE j.state = 'succeeded'""",
        """INSERT INTO provenance (artifact_id, statement, digest, storage_key)
            SELECT a.id, '{"predicate": {"runDetails": {"byproducts": [{"name": "verification",
                          "annotations": {"passed": true}}]}}}', repeat('0', 64), a.storage_key || '.provenance.json'
            FROM artifact a""",
        """INSERT INTO channel_entry (artifact_id, channel, added_at, added_by)
            SELECT a.id, 'staging', a.created_at, 'publish' FROM artifact a""",
        # one job in ten waited for another (the job 25 below it), through a dependency submission
        """INSERT INTO dependency (job_id, requirement, dep_job_id, state)
            SELECT i, 'dep-' || i, i - 25, 'met' FROM generate_series(26, (SELECT max(id) FROM job), 10) i""",
        """UPDATE submission SET parent_job_id = id * 5 - 30 WHERE kind = 'dependency' AND id > 10""",
    ]
    for stmt in sql:
        conn.execute(stmt)
    for table in ("source", "submission", "job", "step", "artifact", "provenance", "channel_entry", "dependency"):
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    conn.execute("VACUUM ANALYZE")
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
              for t in ("job", "step", "artifact", "submission", "source")}
    top = conn.execute("SELECT id FROM submission WHERE kind = 'requirements' ORDER BY id DESC LIMIT 1").fetchone()[0]  # type: ignore[index]
    conn.close()
    return {"seconds": round(time.monotonic() - t0, 1), "rows": counts, "project": f"proj-{projects // 2}",
            "submission": top}


# The server ------------------------------------------------------------------------------------------

class Timed:
    """ASGI wrapper: the server time of each request, by its path and query."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.times: dict[str, list[float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        key = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.times.setdefault(key, []).append((time.perf_counter() - t0) * 1000)

        await self.app(scope, receive, timed_send)


def serve(app: Any, port: int) -> Any:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return server


def measure_pages(base: str, token: str, pages: dict[str, str], timed: Timed, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/ui/signin", data={"token": token, "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        for label, path in pages.items():
            for _ in range(3):  # warm-up (connection, caches, plans)
                r = c.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])
            timed.times.pop(path, None)
            client_ms, cpu_ms = [], []
            for _ in range(rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                c.get(path).raise_for_status()
                client_ms.append((time.perf_counter() - t0) * 1000)
                cpu_ms.append((time.process_time() - c0) * 1000)
            out[label] = {"path": path, "server_ms": summary(timed.times[path]), "client_ms": summary(client_ms),
                          "cpu_ms": summary(cpu_ms)}
            print(f"  {label:28} {path:50} server p50 {out[label]['server_ms']['p50']:7.1f} ms  "
                  f"p95 {out[label]['server_ms']['p95']:7.1f} ms  cpu p50 {out[label]['cpu_ms']['p50']:6.1f} ms",
                  flush=True)
    return out


def measure_sse(base: str, token: str, storage: Path, lines: int) -> dict[str, Any]:
    from farm.db.models import Job, Source, Submission
    from farm.db.session import session_scope
    from farm.storage import log_key

    with session_scope() as s:
        sub = Submission(kind="file", request="sse.tar.gz")
        src = s.get(Source, 1)
        job = Job(submission=sub, source=src, platform="linux-x86_64", python="cp311", build_id="cp311-sse",
                  engine="native", recipe_digest="0" * 64, cache_key=uuid.uuid4().hex * 2, state="building",
                  worker="bench")
        s.add(job)
        s.flush()
        job_id = job.id
    path = storage / log_key(job_id, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("start\n")
    written: dict[int, float] = {}
    arrived: dict[int, float] = {}
    done = threading.Event()

    def follow() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            c.post("/ui/signin", data={"token": token, "next": "/"})
            with c.stream("GET", f"/ui/jobs/{job_id}/log/stream") as r:
                for line in r.iter_lines():
                    if line.startswith("data: line "):
                        arrived[int(line.split()[2])] = time.perf_counter()
                        if len(arrived) == lines:
                            break
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    time.sleep(1.0)  # connected, the first chunk sent
    rng = random.Random(7)
    for i in range(lines):
        time.sleep(rng.uniform(0.05, 0.3))
        with open(path, "a") as f:
            f.write(f"line {i} of the build\n")
            f.flush()
            written[i] = time.perf_counter()
    done.wait(30)
    ms = [(arrived[i] - written[i]) * 1000 for i in written if i in arrived]
    with session_scope() as s:
        j = s.get(Job, job_id)
        assert j is not None
        j.state = "failed"
    return {"latency_ms": summary(ms), "lost": lines - len(ms)}


def baselines(url: str, n: int, project: str) -> dict[str, Any]:
    """OFFSET paging vs the seek query for the deep page; both in SQL on one connection."""
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    cols = "job.id, job.state, job.platform, source.name, source.version"
    page_no = (n - 1000) // 50
    offset_sql = (f"SELECT {cols} FROM job JOIN source ON source.id = job.source_id "
                  f"ORDER BY job.id DESC OFFSET {page_no * 50} LIMIT 51")
    seek_sql = (f"SELECT {cols} FROM job JOIN source ON source.id = job.source_id "
                f"WHERE job.id < 1000 ORDER BY job.id DESC LIMIT 51")

    def run(sql: str, k: int = 7) -> list[float]:
        conn.execute(sql).fetchall()
        ms = []
        for _ in range(k):
            t0 = time.perf_counter()
            conn.execute(sql).fetchall()
            ms.append((time.perf_counter() - t0) * 1000)
        return ms

    off, seek = run(offset_sql), run(seek_sql)
    conn.close()
    return {"deep_page_offset_ms": summary(off), "deep_page_seek_ms": summary(seek),
            "ratio": round(statistics.median(off) / statistics.median(seek), 1)}


def project_page_baseline(name: str, rounds: int) -> dict[str, Any]:
    """The project page's reads as an object load of every job of its newest 20 sdists (steps,
    wheels, provenance, channels), against `project_matrix`."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from farm.db.models import Artifact, Job, Source
    from farm.db.session import session_scope
    from farm.records import artifact_record
    from farm.web.queries import project_matrix

    def old() -> None:
        with session_scope() as session:
            ids = list(session.scalars(select(Source.id).where(Source.name == name).order_by(Source.id.desc()).limit(21)))
            jobs = list(session.scalars(select(Job).where(Job.source_id.in_(ids[:20])).order_by(Job.id)
                                        .options(selectinload(Job.steps),
                                                 selectinload(Job.artifacts).selectinload(Artifact.provenance),
                                                 selectinload(Job.artifacts).selectinload(Artifact.channels),
                                                 selectinload(Job.artifacts).selectinload(Artifact.uploads))))
            for j in jobs:
                [artifact_record(session, a, build=False) for a in j.artifacts]

    def new() -> None:
        with session_scope() as session:
            project_matrix(session, name)

    def run(fn: Any) -> list[float]:
        fn()
        ms = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t0) * 1000)
        return ms

    o, n = run(old), run(new)
    return {"every_job_as_objects_ms": summary(o), "project_matrix_ms": summary(n),
            "ratio": round(statistics.median(o) / statistics.median(n), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--lines", type=int, default=60, help="log lines for the SSE measurement")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    db = f"farmbench_dashboard_{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    server = None
    try:
        with tempfile.TemporaryDirectory(prefix="farm-bench-dash-") as tmp:
            home = Path(tmp) / "home"
            home.mkdir()
            for var in [v for v in os.environ if v.startswith("FARM_")]:
                del os.environ[var]
            os.environ.update(FARM_HOME=str(home), FARM_DATABASE_URL=url)
            import farm.cli
            from farm.api.app import create_app
            from farm.config import get_settings, reset_settings
            from farm.tokens import create_token
            from tests.helpers.env import free_port

            token = create_token(home, "bench", "admin")
            reset_settings()
            farm.cli.ensure_db()
            print(f"filling {db} with {args.jobs:,} jobs ...", flush=True)
            data = fill(url, args.jobs)
            print(f"  {data['rows']} in {data['seconds']} s", flush=True)
            settings = get_settings()
            timed = Timed(create_app(settings))
            port = free_port()
            server = serve(timed, port)
            base = f"http://127.0.0.1:{port}"
            deep = 1000
            pages = {
                "jobs, first page": "/",
                "jobs, filtered": "/?state=failed&platform=linux-aarch64",
                "jobs, by project": f"/?project={data['project']}",
                "jobs, by project and state": f"/?project={data['project']}&state=failed",
                "jobs, rare platform": "/?platform=win-amd64",
                "jobs, deep page": f"/?before={deep}",
                "jobs, deep filtered page": f"/?state=failed&before={deep * 5}",
                "project page": f"/ui/projects/{data['project']}",
                "submissions": "/ui/submissions",
                "one submission": f"/ui/submissions/{data['submission']}",
            }
            print(f"pages (server time; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):", flush=True)
            load_before = os.getloadavg()[0]
            results = measure_pages(base, token, pages, timed, args.rounds)
            load_after = os.getloadavg()[0]
            print("SSE ...", flush=True)
            sse = measure_sse(base, token, settings.storage, args.lines)
            print(f"  new log line to client: p50 {sse['latency_ms']['p50']} ms, p95 {sse['latency_ms']['p95']} ms",
                  flush=True)
            base_line = baselines(url, args.jobs, data["project"])
            print(f"  deep page: OFFSET {base_line['deep_page_offset_ms']['p50']} ms vs seek "
                  f"{base_line['deep_page_seek_ms']['p50']} ms ({base_line['ratio']}x)", flush=True)
            proj = project_page_baseline(data["project"], min(args.rounds, 10))
            print(f"  project page reads: every job as objects {proj['every_job_as_objects_ms']['p50']} ms vs "
                  f"project_matrix {proj['project_matrix_ms']['p50']} ms ({proj['ratio']}x)", flush=True)
            report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
                      "cpus": os.cpu_count(), "load_average": [load_before, load_after], "jobs": args.jobs, "rounds": args.rounds, "fill": data,
                      "pages": results, "sse": sse, "baseline_deep_page": base_line, "baseline_project_page": proj}
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
            server.should_exit = True
            time.sleep(0.5)
            from farm.db.session import engine_for

            engine_for(url).dispose()
    finally:
        if server is not None:
            server.should_exit = True
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    bad = [k for k, v in results.items() if v["server_ms"]["p50"] >= 100]
    if bad or sse["latency_ms"]["p95"] >= 250:
        print(f"TARGETS MISSED: {bad} sse p95 {sse['latency_ms']['p95']}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
