"""Benchmark: the distributed farm on Redis and PostgreSQL, with real processes.

Three measurements, each on its own PostgreSQL database and a private redis-server (never the
machine's shared one), `farm coordinator` and two `farm worker` processes in one FARM_HOME:

  latency     submit-to-start: from the in-process `submit()` call returning until the worker
              reports `fetching` (the step's start, the worker's clock; same host). Tiny distinct
              pure-Python sdists, one at a time on idle workers. Also until the coordinator has
              recorded it (`job.started_at`).
  throughput  a set of small real C-extension sdists submitted at once to two workers: wall time
              from the first submit() until every job succeeded, against the sum of the same
              sdists done by hand one after the other (bench/embedded.py's `by_hand`: uv build,
              auditwheel repair, venv, pip install, import) divided by two. Efficiency =
              (sum by hand / 2) / farm wall time. The same against the bare compiles.
  status      10,000 jobs inserted directly (with steps, sources, artifacts): the list query
              behind `farm status` (farm.status.list_jobs, 50 newest, and --active) in process,
              GET /api/jobs?limit=50 from a running `farm api`, and the `farm status` command.

    .venv/bin/python bench/distributed.py [--latency-samples 40] [--rounds 2] [--status-jobs 10000]
                                          [--sdist NAME==VERSION ...] [--skip latency,throughput,status]
                                          [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import httpx
from embedded import bare, by_hand, fetch_sdist, say

from tests.helpers.env import free_port
from tests.helpers.servers import Cluster, RedisServer, drop_database, pg_database
from tests.helpers.sdists import make_project, make_sdist

DEFAULT_SDISTS = ["pyyaml==6.0.2", "msgpack==1.1.0", "markupsafe==3.0.2", "simplejson==3.19.3", "wrapt==1.17.2",
                  "ujson==5.10.0"]
TARGET_P50_MS = 20.0
TARGET_EFFICIENCY = 0.85
TARGET_LIST_MS = 50.0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation; q in 0..100)."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def bind(cluster: Cluster) -> None:
    """This process's farm modules pointed at the cluster (database, broker, storage)."""
    from farm.config import reset_settings
    from farm.coordinator.app import reset_app

    for key in [k for k in os.environ if k.startswith("FARM_")]:
        del os.environ[key]
    os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("FARM_")})
    reset_settings()
    reset_app()


def new_cluster(root: Path, redis: RedisServer, workers: int = 2) -> tuple[Cluster, str]:
    redis.client().flushdb()
    name, url = pg_database("farmbench_dist")
    cluster = Cluster(root, url, redis.url)
    try:
        cluster.launch("coordinator", *(f"w{i}" for i in range(1, workers + 1)))
    except BaseException:
        cluster.stop_all()
        drop_database(name)
        raise
    bind(cluster)
    return cluster, name


def _epoch(value: dt.datetime) -> float:
    return value.replace(tzinfo=dt.UTC).timestamp()


# submit-to-start latency ------------------------------------------------------------------------


def latency(root: Path, redis: RedisServer, samples: int) -> dict[str, Any]:
    from farm.config import get_settings
    from farm.coordinator.submit import submit

    shutil.rmtree(root, ignore_errors=True)  # make_project wants fresh folders
    say(f"latency: making {samples + 3} tiny sdists")
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda i: make_sdist(make_project(root / "src", f"farmbench-lat-{i:03d}",
                                                                c_extension=False), root / "dist" / str(i)),
                              range(samples + 3)))
    cluster, db = new_cluster(root / "farm", redis)
    try:
        to_worker, to_coordinator = [], []
        for n, path in enumerate(paths):
            job_id = submit(str(path), settings=get_settings()).jobs[0][0]
            returned = time.time()
            job = cluster.wait_done([job_id], 300)[job_id]
            assert job["state"] == "succeeded", job["error"]
            (step,) = cluster.rows("SELECT started_at FROM step WHERE job_id = :id AND name = 'fetching'", id=job_id)
            if n < 3:  # warm-up: first connections, first build environments
                continue
            to_worker.append(1000 * (_epoch(step["started_at"]) - returned))
            to_coordinator.append(1000 * (_epoch(job["started_at"]) - returned))
            time.sleep(0.2)  # both workers idle, blocked in BRPOP
    finally:
        cluster.stop_all()
        drop_database(db)
    out = {"samples": len(to_worker), "worker_ms": to_worker, "coordinator_ms": to_coordinator}
    for key, values in (("worker", to_worker), ("coordinator", to_coordinator)):
        out[f"{key}_p50_ms"], out[f"{key}_p95_ms"] = pct(values, 50), pct(values, 95)
        out[f"{key}_max_ms"] = max(values)
    say(f"latency: submit() to worker fetching p50 {out['worker_p50_ms']:.1f} ms, p95 {out['worker_p95_ms']:.1f} ms")
    return out


# throughput on two workers ----------------------------------------------------------------------


def throughput(root: Path, redis: RedisServer, sdists: dict[str, Path], rounds: int) -> dict[str, Any]:
    from farm.config import get_settings
    from farm.coordinator.submit import submit

    root.mkdir(parents=True, exist_ok=True)
    say("throughput: warm-up by hand (fills the uv cache)")
    for name, path in sdists.items():
        by_hand(path, Path(tempfile.mkdtemp(dir=root, prefix=f"warm-{name}-")))
    results = []
    for r in range(rounds):
        load = [os.getloadavg()[0]]
        hand, compile_ = {}, {}
        for name, path in sdists.items():
            hand[name] = by_hand(path, Path(tempfile.mkdtemp(dir=root, prefix=f"hand-{name}-")))["total"]
            compile_[name] = bare(path, Path(tempfile.mkdtemp(dir=root, prefix=f"bare-{name}-")))["total"]
        say(f"throughput round {r + 1}: by hand {sum(hand.values()):.1f} s in all, bare {sum(compile_.values()):.1f} s")
        cluster, db = new_cluster(root / f"farm-{r}", redis)
        try:
            settings = get_settings()
            start = time.perf_counter()
            ids = [submit(str(p), settings=settings).jobs[0][0] for p in sdists.values()]
            jobs = cluster.wait_done(ids, 1800)
            wall = time.perf_counter() - start
            failed = {i: j["error"] for i, j in jobs.items() if j["state"] != "succeeded"}
            if failed:
                raise SystemExit(f"farm jobs failed: {failed}")
            per_job = {cluster.rows("SELECT s.name FROM source s JOIN job j ON j.source_id = s.id WHERE j.id = :i",
                                    i=i)[0]["name"]: (_epoch(j["finished_at"]) - _epoch(j["started_at"]))
                       for i, j in jobs.items()}
            workers = sorted({j["worker"] for j in jobs.values()})
        finally:
            cluster.stop_all()
            drop_database(db)
        load.append(os.getloadavg()[0])
        res = {"round": r + 1, "by_hand_s": hand, "bare_s": compile_, "farm_wall_s": wall, "farm_job_s": per_job,
               "workers": workers, "efficiency_vs_by_hand": sum(hand.values()) / 2 / wall,
               "efficiency_vs_bare": sum(compile_.values()) / 2 / wall,
               # how busy the farm kept its two workers: its own job times / 2 over the wall time
               "packing": sum(per_job.values()) / 2 / wall, "load_1min": load}
        say(f"throughput round {r + 1}: farm {wall:.1f} s on {len(workers)} workers; efficiency "
            f"{res['efficiency_vs_by_hand']:.0%} vs by hand, {res['efficiency_vs_bare']:.0%} vs bare")
        results.append(res)
    return {"rounds": results,
            "efficiency_vs_by_hand": statistics.median(r["efficiency_vs_by_hand"] for r in results),
            "efficiency_vs_bare": statistics.median(r["efficiency_vs_bare"] for r in results)}


# farm status and the API with 10,000 jobs --------------------------------------------------------


def fill(url: str, n: int) -> None:
    """n jobs as a busy farm would have them: 1% running or queued, the rest ended with 6 steps each."""
    from sqlalchemy import create_engine, insert

    from farm.db.models import Artifact, Job, Source, Step, Submission

    engine = create_engine(url)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    steps = ("fetching", "building", "repairing", "verifying", "attesting", "uploading")
    with engine.begin() as conn:
        per_source = 4
        conn.execute(insert(Submission), [{"id": i, "kind": "file", "request": f"/tmp/p{i}.tar.gz", "created_at": now}
                                          for i in range(1, n // per_source + 2)])
        conn.execute(insert(Source), [{"id": i, "sha256": f"{i:064x}", "name": f"project-{i}", "version": "1.0",
                                       "filename": f"project-{i}-1.0.tar.gz", "size": 1000,
                                       "storage_key": f"sdists/{i}", "created_at": now}
                                      for i in range(1, n // per_source + 2)])
        jobs, step_rows, arts = [], [], []
        for i in range(1, n + 1):
            t = now - dt.timedelta(seconds=(n - i) * 5)
            state = "succeeded" if i % 10 else "failed"
            if i > n - n // 100:
                state = "building" if i % 2 else "queued"
            jobs.append({"id": i, "submission_id": (i - 1) // per_source + 1, "source_id": (i - 1) // per_source + 1,
                         "platform": "linux-x86_64", "python": f"cp3{9 + i % 5}", "build_id": f"cp3{9 + i % 5}-x",
                         "engine": "native", "recipe_digest": "d" * 64, "recipe": {}, "cache_key": f"{i:064x}",
                         "state": state, "attempt": 1, "worker": "w1@host", "staged": {}, "priority": 0,
                         "error": "build: does not compile" if state == "failed" else None,
                         "created_at": t, "started_at": t, "updated_at": t,
                         "finished_at": t + dt.timedelta(seconds=4) if state in ("succeeded", "failed") else None})
            for k, name in enumerate(steps if state != "queued" else ()):
                step_rows.append({"job_id": i, "attempt": 1, "name": name, "started_at": t, "seconds": 0.5 + k,
                                  "finished_at": t, "outcome": "ok", "log": "x" * 200})
            if state == "succeeded":
                arts.append({"job_id": i, "filename": f"project_{i}-1.0-py3-none-any.whl", "sha256": f"{i:064x}",
                             "size": 1000, "name": f"project-{i}", "version": "1.0", "tags": ["py3-none-any"],
                             "requires_dist": [], "storage_key": f"w/{i}", "verified": True, "created_at": t})
        conn.execute(insert(Job), jobs)
        conn.execute(insert(Step), step_rows)
        conn.execute(insert(Artifact), arts)
        for table in ("submission", "source", "job", "step", "artifact"):
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _timed(fn: Any, runs: int) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def status(root: Path, n: int, runs: int = 50) -> dict[str, Any]:
    from farm.db.session import session_scope
    from farm.status import list_jobs
    from farm.tokens import ensure_local_admin_token

    root.mkdir(parents=True, exist_ok=True)
    name, url = pg_database("farmbench_status")
    cluster = Cluster(root / "status", url, "redis://127.0.0.1:1/0")
    api = None
    try:
        res = cluster.farm("db", "upgrade")
        if res.returncode:
            raise SystemExit(res.stderr)
        start = time.perf_counter()
        fill(url, n)
        say(f"status: {n} jobs inserted in {time.perf_counter() - start:.1f} s")
        bind(cluster)

        def listing(active: bool = False) -> None:
            with session_scope() as session:
                assert len(list_jobs(session, limit=50, active_only=active)) == 50

        out: dict[str, Any] = {"jobs": n}
        out["list_ms"] = _timed(listing, runs)
        out["list_active_ms"] = _timed(lambda: listing(True), runs)
        port = free_port()
        token, _ = ensure_local_admin_token(cluster.home)  # the API trusts no client without a token
        with open(root / "api.log", "ab") as log:
            api = subprocess.Popen([sys.executable, "-m", "farm.cli", "api", "--port", str(port)], env=cluster.env,
                                   stdout=log, stderr=subprocess.STDOUT)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"farm api did not answer; see {root / 'api.log'}")
                time.sleep(0.1)

            def get() -> None:
                resp = http.get("/api/jobs", params={"limit": 50})
                assert resp.status_code == 200 and len(resp.json()) == 50, resp.text[:300]

            out["api_ms"] = _timed(get, runs)
        out["cli_s"] = []
        for _ in range(3):
            start = time.perf_counter()
            res = cluster.farm("status")
            out["cli_s"].append(time.perf_counter() - start)
            assert res.returncode == 0 and res.stdout.count("\n") >= 50, res.stderr
        plan = cluster.rows("EXPLAIN ANALYZE SELECT * FROM job WHERE state NOT IN ('succeeded', 'failed', 'cancelled') "
                            "ORDER BY id DESC LIMIT 50")
        out["active_plan"] = [next(iter(r.values())) for r in plan]
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=20)
        cluster.stop_all()
        drop_database(name)
    for key in ("list_ms", "list_active_ms", "api_ms"):
        out[key.replace("_ms", "_p50_ms")], out[key.replace("_ms", "_p95_ms")] = pct(out[key], 50), pct(out[key], 95)
    say(f"status: list p50 {out['list_p50_ms']:.1f} ms, --active p50 {out['list_active_p50_ms']:.1f} ms, "
        f"API p50 {out['api_p50_ms']:.1f} ms, CLI {statistics.median(out['cli_s']):.2f} s")
    return out


def machine() -> dict[str, Any]:
    import celery
    import kombu
    import sqlalchemy

    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "celery": celery.__version__, "kombu": kombu.__version__,
            "sqlalchemy": sqlalchemy.__version__, "redis": redis_version.split()[2] if redis_version else "?",
            "load_before": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency-samples", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2, help="throughput rounds")
    p.add_argument("--sdist", action="append", help="throughput sdists (NAME==VERSION); default: six small ones")
    p.add_argument("--status-jobs", type=int, default=10_000)
    p.add_argument("--skip", default="", help="comma-separated: latency, throughput, status")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = args.work or Path(tempfile.mkdtemp(prefix="farm-bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine()}
    redis = RedisServer(work / "redis")
    redis.start()
    started = time.perf_counter()
    try:
        if "status" not in skip:
            results["status"] = status(work / "status", args.status_jobs)
        if "latency" not in skip:
            results["latency"] = latency(work / "latency", redis, args.latency_samples)
        if "throughput" not in skip:
            sdists = {req.split("==")[0]: fetch_sdist(req) for req in (args.sdist or DEFAULT_SDISTS)}
            results["throughput"] = throughput(work / "throughput", redis, sdists, args.rounds)
    finally:
        redis.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    lat, thr, st = results.get("latency"), results.get("throughput"), results.get("status")
    if lat:
        print(f"submit-to-start p50 {lat['worker_p50_ms']:.1f} ms (target < {TARGET_P50_MS:.0f}), "
              f"p95 {lat['worker_p95_ms']:.1f} ms over {lat['samples']} jobs")
    if thr:
        print(f"two workers: {thr['efficiency_vs_by_hand']:.0%} of (sum by hand / 2) "
              f"(target >= {TARGET_EFFICIENCY:.0%}); {thr['efficiency_vs_bare']:.0%} of (sum bare compile / 2)")
    if st:
        print(f"{st['jobs']} jobs: list p50 {st['list_p50_ms']:.1f} / p95 {st['list_p95_ms']:.1f} ms, "
              f"API p50 {st['api_p50_ms']:.1f} / p95 {st['api_p95_ms']:.1f} ms (target < {TARGET_LIST_MS:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
