"""Coverage: how many real compiled sdists a farm with no recipe written for them builds and verifies.

The sample (bench/coverage_sample.txt, NAME==VERSION one per line) goes through one real farm per
run: a fresh FARM_HOME, `farm up` (plus `--jobs - 1` more `farm worker` processes on the same
broker), every requirement submitted at once, then a wait until each requested job has ended (its
runtime dependencies are built by the farm too, as for any submission). Per package the outcome is

  verified   the requested job succeeded: built, repaired, verified (installed and imported in a
             fresh environment), published;
  failed     with the step that failed (the job's failed step), the farm's failure kind and a
             failure class read from the job's error and log (`classify`);
  refused    the submission itself was refused (the error class and message);
  unfinished the job had not ended when `--deadline` ran out (its state then).

Two paths:

  native     the embedded default: engine native on this host, one Python (this interpreter);
  container  engine cibuildwheel with the bullseye build image (cp39) and verification in the clean
             bullseye image (both made with `farm image build` if missing; needs the private Docker
             engine: `eval "$(scripts/docker-up.sh)"`).

The whole run is niced (`os.nice(10)`, inherited by the farm and its builds): the machine is shared.
Results go to a JSON file and a markdown table.

    .venv/bin/python bench/coverage.py --engine native --jobs 2 --json /tmp/cov-native.json --markdown /tmp/cov-native.md
    .venv/bin/python bench/coverage.py --engine container --limit 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded import BIN, Farm, fetch_sdist, say

SAMPLE = Path(__file__).resolve().parent / "coverage_sample.txt"
ENDED = ("succeeded", "failed", "cancelled")

# Failure classes, first match wins; each reads the job's error and the tail of its log.
CLASSES: list[tuple[str, re.Pattern[str]]] = [
    ("timeout", re.compile(r"timed out after|TimeoutExpired", re.I)),
    ("network at build", re.compile(r"host the build downloads from|Could not resolve host|Temporary failure in name "
                                    r"resolution|Network is unreachable|Failed to establish a new connection|"
                                    r"cannot download [\w.+-]+\.wrap", re.I)),
    ("missing system package", re.compile(r"the build output reports missing:|fatal error: [\w./+-]+\.h: No such file|"
                                          r"Dependency \"?[\w.+-]+\"? not found|Could NOT find|"
                                          r"Dependency lookup for [\w.+-]+ with method", re.I)),
    ("abi3 audit tool not installable", re.compile(r"'abi3audit'\] failed")),
    ("build requirement missing offline", re.compile(r"was not found in the cache and you require")),
    ("repair (auditwheel)", re.compile(r"auditwheel\.error\.\w+|'auditwheel repair [^\n]*\] failed")),
    ("unresolvable requirements", re.compile(r"No solution found when resolving|ResolutionImpossible|"
                                             r"No matching distribution found", re.I)),
    ("import check", re.compile(r"ImportError|ModuleNotFoundError|undefined symbol", re.I)),
    ("backend drift", re.compile(r"Error compiling Cython file|ERROR: Use [\w.]+ instead of [\w.]+|invalid pyproject|pyproject\.toml.*(?:invalid|must)|"
                                 r"configuration error|InvalidConfigError|setuptools\.errors|"
                                 r"has no attribute|unexpected keyword argument|deprecated and (?:has been )?removed",
                                 re.I)),
    ("compiler", re.compile(r"error: command '[^']*(?:gcc|g\+\+|cc|c\+\+|clang)[^']*' failed|"
                            r"\.(?:c|cc|cpp|cxx|h|hpp):\d+:\d+: error:|ninja: build stopped|collect2: error", re.I)),
]


def backend_of(sdist: Path) -> str:
    """The build backend the sdist's pyproject.toml names (setuptools through setup.py without one),
    and `+ Cython` when it holds .pyx sources or requires Cython to build."""
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
        tops = [n for n in names if n.count("/") == 1 and n.endswith("/pyproject.toml")]
        data = tomllib.loads(tf.extractfile(tops[0]).read().decode()) if tops else {}  # type: ignore[union-attr]
    system = data.get("build-system", {})
    backend = system.get("build-backend", "")
    label = {"setuptools.build_meta": "setuptools", "mesonpy": "meson-python", "pdm.backend": "pdm-backend",
             "scikit_build_core.build": "scikit-build-core", "maturin": "maturin",
             "": "setuptools (setup.py)"}.get(backend, backend)
    if "pep517_backend" in backend:
        label = "setuptools (in-tree wrapper)"
    if any(n.endswith(".pyx") for n in names) or re.search(r"\bcython\b", " ".join(system.get("requires", [])), re.I):
        label += " + Cython"
    return label


def classify(error: str, log: str, kind: str | None) -> str:
    if kind == "dependency":
        return "dependency failed"
    if kind in ("infrastructure", "internal"):
        return kind
    text = f"{error}\n{log[-20000:]}"
    for name, pattern in CLASSES:
        if pattern.search(text):
            return name
    return "other"


def settings_env(engine: str, timeout: float) -> dict[str, str]:
    env = {"FARM_BUILD_TIMEOUT": str(timeout), "FARM_CIBUILDWHEEL_TIMEOUT": str(timeout)}
    if engine == "native":
        env["FARM_PYTHONS"] = json.dumps([sys.executable])
        return env
    from containers import farm_environment, images

    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        raise SystemExit('the container path needs the private Docker engine: eval "$(scripts/docker-up.sh)"')
    build, verify = images(host)
    return {**env, **farm_environment(host, build, verify)}


def job_rows(job_ids: list[int]) -> dict[int, dict[str, Any]]:
    from sqlalchemy import select

    from farm.db.models import Job
    from farm.db.session import session_scope

    out: dict[int, dict[str, Any]] = {}
    with session_scope() as session:
        for job in session.scalars(select(Job).where(Job.id.in_(job_ids))):
            failed = [s.name for s in job.steps if str(getattr(s.outcome, "value", s.outcome)) == "failed"]
            seconds = sum(s.seconds or 0.0 for s in job.steps)
            out[job.id] = {"state": str(getattr(job.state, "value", job.state)), "error": job.error or "",
                           "kind": job.failure_kind, "step": failed[-1] if failed else None,
                           "seconds": round(seconds, 1), "python": job.python, "build_id": job.build_id,
                           "wheels": [a.filename for a in job.artifacts]}
    return out


def first_line(error: str) -> str:
    line = next((ln for ln in error.splitlines() if ln.strip()), "")
    return line if len(line) <= 160 else line[:157] + "..."


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.nice(10)
    sample = [ln.split("#")[0].strip() for ln in args.sample.read_text().splitlines()]
    sample = [ln for ln in sample if ln][: args.limit or None]
    backends = {req: backend_of(fetch_sdist(req)) for req in sample}
    work = Path(args.work or f"/tmp/farm-coverage-{args.engine}-{int(time.time())}")
    extra_env = settings_env(args.engine, args.timeout)
    os.environ.update(extra_env)
    farm = Farm(work / "home")
    farm.env.update(extra_env)
    workers: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any]] = {}
    started = time.time()
    try:
        say(f"{args.engine}: starting a farm in {work}")
        farm.start()
        for n in range(1, args.jobs):
            log = open(work / "home" / "logs" / f"worker-extra-{n}.log", "ab")
            workers.append(subprocess.Popen([str(BIN / "farm"), "worker", "--name", f"extra{n}"], env=farm.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        from farm.config import get_settings
        from farm.coordinator.submit import submit
        from farm.errors import FarmError

        jobs: dict[str, list[int]] = {}
        for req in sample:
            try:
                submitted = submit(req, settings=get_settings())
                jobs[req] = [job_id for job_id, _, _ in submitted.jobs]
                if not jobs[req]:
                    results[req] = {"outcome": "refused", "class": "no job planned",
                                    "error": "; ".join(submitted.warnings)}
            except FarmError as exc:
                results[req] = {"outcome": "refused", "class": type(exc).__name__, "error": first_line(str(exc))}
        say(f"submitted {len(jobs)} of {len(sample)} ({len(sample) - len(jobs)} refused)")
        deadline = started + args.deadline
        last = ""
        while True:
            rows = job_rows([j for ids in jobs.values() for j in ids])
            done = [req for req, ids in jobs.items() if all(rows[j]["state"] in ENDED for j in ids)]
            ok = [req for req in done if all(rows[j]["state"] == "succeeded" for j in jobs[req])]
            line = f"{len(done)}/{len(jobs)} ended, {len(ok)} verified"
            if line != last:
                say(line)
                last = line
            if len(done) == len(jobs) or time.time() > deadline:
                break
            time.sleep(5)
        for req, ids in jobs.items():
            row = {j: rows[j] for j in ids}
            states = {r["state"] for r in row.values()}
            entry: dict[str, Any] = {"jobs": row, "seconds": max(r["seconds"] for r in row.values())}
            if states == {"succeeded"}:
                entry["outcome"] = "verified"
            elif not states <= set(ENDED):
                entry.update(outcome="unfinished", state=",".join(sorted(states)))
            else:
                job_id, bad = next((j, r) for j, r in row.items() if r["state"] != "succeeded")
                log = farm.cli("logs", str(job_id)).stdout
                (work / f"job-{job_id}.log").write_text(log)
                entry.update(outcome="failed", step=bad["step"], kind=bad["kind"],
                             **{"class": classify(bad["error"], log, bad["kind"])},
                             error=first_line(bad["error"]), log=str(work / f"job-{job_id}.log"))
            results[req] = entry
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        farm.stop()
    for req in sample:
        results.setdefault(req, {"outcome": "unfinished", "state": "not collected"})
        results[req]["backend"] = backends[req]
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return {"engine": args.engine, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
            "cpus": os.cpu_count(), "jobs": args.jobs, "timeout": args.timeout, "work": str(work),
            "wall_seconds": round(time.time() - started), "counts": counts, "total": len(sample),
            "packages": {req: results[req] for req in sample}}


def reclassify(report: dict[str, Any]) -> dict[str, Any]:
    for req, r in report["packages"].items():
        r["backend"] = backend_of(fetch_sdist(req))
        if r["outcome"] == "failed":
            bad = next(j for j in r["jobs"].values() if j["state"] != "succeeded")
            log = Path(r["log"]).read_text(errors="replace") if r.get("log") and Path(r["log"]).exists() else ""
            r["class"] = classify(bad["error"], log, bad["kind"])
    return report


def markdown(report: dict[str, Any]) -> str:
    total, counts = report["total"], report["counts"]
    verified = counts.get("verified", 0)
    lines = [f"Engine `{report['engine']}`, {report['date']}, {report['wall_seconds']} s wall, "
             f"--jobs {report['jobs']}: **{verified} of {total} verified** ({100 * verified / total:.0f}%); "
             + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "verified"), "",
             "| package | backend | outcome | step | class | error (first line) |",
             "|---|---|---|---|---|---|"]
    for req, r in report["packages"].items():
        outcome = r["outcome"] + (f" ({r['state']})" if r.get("state") else "")
        error = (r.get("error") or "").replace("|", "\\|")
        lines.append(f"| {req} | {r['backend']} | {outcome} | {r.get('step') or ''} | {r.get('class') or ''} | "
                     f"{error} |")
    classes: dict[str, list[str]] = {}
    for req, r in report["packages"].items():
        if r["outcome"] in ("failed", "refused"):
            classes.setdefault(r["class"], []).append(req.split("==")[0])
    if classes:
        lines += ["", "Failure classes: " + "; ".join(f"{c}: {len(v)} ({', '.join(v)})"
                                                      for c, v in sorted(classes.items()))]
    return "\n".join(lines) + "\n"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    if r["outcome"] == "verified":
        return "verified"
    if r["outcome"] == "unfinished":
        return f"unfinished ({r.get('state', '')})"
    return f"{r['outcome']}: {r.get('step') or '-'}, {r.get('class')}"


def combined(reports: list[dict[str, Any]]) -> str:
    """One table of several runs (one column per engine), for docs/benchmarks.md."""
    names = list(dict.fromkeys(req for rep in reports for req in rep["packages"]))
    lines = ["| package | backend | " + " | ".join(rep["engine"] for rep in reports) + " |",
             "|---|---|" + "---|" * len(reports)]
    for req in names:
        backend = next(rep["packages"][req]["backend"] for rep in reports if req in rep["packages"])
        lines.append(f"| {req} | {backend} | " + " | ".join(_cell(rep["packages"].get(req)) for rep in reports) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("native", "container"), default="native")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="NAME==VERSION, one per line")
    parser.add_argument("--limit", type=int, default=0, help="only the first N of the sample")
    parser.add_argument("--jobs", type=int, default=1, help="builds at once (farm up's worker plus N-1 more)")
    parser.add_argument("--timeout", type=float, default=900.0, help="the farm's build timeout, seconds")
    parser.add_argument("--deadline", type=float, default=4 * 3600.0,
                        help="stop waiting after this many seconds; jobs not ended are reported unfinished")
    parser.add_argument("--work", help="folder for the farm home and the failed jobs' logs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--report", type=Path, help="no run: classify a run's JSON again from its saved job logs "
                        "(after a change to CLASSES) and print its table")
    parser.add_argument("--combine", type=Path, nargs="+", help="no run: one table of these runs' JSON files")
    args = parser.parse_args()
    if args.combine:
        print(combined([reclassify(json.loads(p.read_text())) for p in args.combine]), end="")
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    report = reclassify(json.loads(args.report.read_text())) if args.report else run(args)
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
