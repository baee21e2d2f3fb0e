"""Benchmark: upload-to-installable for a pure-Python wheel into a project that already holds N files
(default 2,000): the farm (`/<channel>/legacy/`, farm/api/routes_upload.py) against pypiserver and
devpi-server (tests/helpers/servers.py), all on 127.0.0.1, in one run.

One measurement: the clock starts when `twine upload` is started and stops when
`pip download --no-deps NAME==VERSION` from that server's index first succeeds (pip is retried at
once until it does). Client start-up (twine, pip) is inside the clock for every server alike.

Filling (not timed): the farm's project gets N wheels through the coordinator's publish (as
bench/index.py; signed provenance, pages of the first channel and its virtual index), pypiserver's
and devpi's through their upload APIs. Then `--rounds` rounds, each uploading one new version to
every server in turn (the order rotates each round, so load from other processes falls on all).

    .venv/bin/python bench/uploads.py --json /tmp/bench-uploads/results.json
    .venv/bin/python bench/uploads.py --report /tmp/bench-uploads/results.json    # the Markdown table

Also measured, in the same process, after the filling: what listing one new file costs the farm's
publish in that project (`channels.list_new`, what a publish runs after its commit) against rewriting
the project's pages from the database (`channels.regenerate`, what it ran before): the page's newest
file is taken off every page, then put back by each in turn. `--page-cost-only` measures that alone in
the farm home an earlier run left (`--work`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.index import FarmServer, _machine, farm_publish_all, log, upload_all  # noqa: E402
from tests.helpers.servers import DevpiServer, PypiServer  # noqa: E402

NAME = "uploadproj"
BIN = Path(sys.executable).parent


def make_wheels(work: Path, n: int, rounds: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    from tests.helpers.wheels import make_wheel

    fill = [(make_wheel(work / "wheels" / "fill", NAME, f"{i // 100}.{i % 100}"), f"{i // 100}.{i % 100}")
            for i in range(n)]
    measured = [(make_wheel(work / "wheels" / "measured", NAME, f"999.{r}"), f"999.{r}") for r in range(rounds)]
    return fill, measured


def upload_to_installable(wheel: Path, version: str, *, upload_url: str, username: str, password: str,
                          index_url: str, work: Path, timeout: float = 300) -> dict[str, float]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PIP_INDEX_URL", None)
    dest = work / "downloads" / f"{version}-{time.monotonic_ns()}"
    start = time.perf_counter()
    r = subprocess.run([str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar",
                        "--repository-url", upload_url, "-u", username, "-p", password, str(wheel)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    uploaded = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"twine upload to {upload_url}: {r.stdout}{r.stderr}")
    tries = 0
    while True:
        tries += 1
        d = subprocess.run([str(BIN / "pip"), "download", "--no-deps", "--no-cache-dir", "--quiet", "--dest", str(dest),
                            "--index-url", index_url, f"{NAME}=={version}"], capture_output=True, text=True, env=env,
                           timeout=timeout)
        if d.returncode == 0:
            break
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"{index_url}: {NAME}=={version} not installable after {timeout} s: {d.stderr[-500:]}")
    total = time.perf_counter() - start
    shutil.rmtree(dest, ignore_errors=True)
    return {"total_s": round(total, 3), "upload_s": round(uploaded, 3), "pip_tries": tries}


def held(index_url: str) -> int:
    """How many files the project's page on a server lists (its HTML page, anchors counted)."""
    import httpx

    r = httpx.get(f"{index_url.rstrip('/')}/{NAME}/", headers={"Accept": "text/html"}, follow_redirects=True,
                  timeout=120)
    r.raise_for_status()
    return r.text.count("<a ")


def page_cost(project: str, repeats: int = 5) -> dict[str, Any]:
    """Seconds to list one committed file that the pages lack: `list_new` against `regenerate` (medians)."""
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.index import channels, simple

    settings = get_settings()
    lay = channels.layout(settings)
    ways = {"list_new": channels.list_new, "regenerate": channels.regenerate}
    times: dict[str, list[float]] = {w: [] for w in ways}
    files = 0
    for r in range(repeats):
        for way in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            for t in lay.trees():  # the newest file off every page that lists it
                tree = lay.tree(t)
                current = simple.read_project(tree, project)
                if current:
                    newest = max(current, key=lambda f: f.upload_time or dt.datetime.min.replace(tzinfo=dt.UTC))
                    simple.write_project(tree, project, [f for f in current if f is not newest])
            start = time.perf_counter()
            with session_scope() as s:
                ways[way](s, settings, project)
            times[way].append(time.perf_counter() - start)
            files = len(simple.read_project(lay.tree(lay.first), project))
    med = {w: statistics.median(v) for w, v in times.items()}
    return {"files": files, "repeats": repeats, **{f"{w}_s": round(m, 4) for w, m in med.items()},
            "ratio": round(med["regenerate"] / med["list_new"], 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-uploads"))
    p.add_argument("--json", type=Path)
    p.add_argument("--report", type=Path, metavar="JSON", help="print the Markdown table of an earlier run's --json")
    p.add_argument("--page-cost-only", action="store_true", help="only the page cost, in the farm of an earlier run")
    p.add_argument("--reuse", action="store_true", help="measure on the servers an earlier (stopped) run filled in "
                   "--work, as filled (each server's file count is reported): no new filling")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    if args.page_cost_only:
        os.environ["FARM_HOME"] = str(args.work.absolute() / "farm")
        cost = page_cost(NAME)
        print(json.dumps(cost))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(cost, indent=1))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    work = args.work.absolute()
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    home = work / "farm"
    os.environ["FARM_HOME"] = str(home)
    started = time.time()
    if args.reuse:
        from tests.helpers.wheels import make_wheel

        fill = []
        stamp = int(time.time())  # versions no earlier run uploaded
        measured = [(make_wheel(work / "wheels" / f"measured-{stamp}", NAME, f"999.{stamp}.{r}"), f"999.{stamp}.{r}")
                    for r in range(args.rounds)]
    else:
        fill, measured = make_wheels(work, args.files, args.rounds)
    log(f"made {len(fill)} + {len(measured)} wheels")
    result: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "files": len(fill),
                              "rounds": args.rounds, "machine": _machine(), "runs": {}, "load": {}}

    from farm.cli import main as farm_main
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import issue

    if not args.reuse:
        assert farm_main(["init"]) == 0
        farm_publish_all(fill, None)
    settings = get_settings()
    with session_scope() as s:
        token = issue(s, settings, f"bench-uploader-{int(time.time())}", "upload")
    first = settings.channels[0]
    log(f"farm filled with {len(fill)} files")
    result["page_cost"] = page_cost(NAME)
    log(f"page cost: {result['page_cost']}")
    with FarmServer(home) as farm, PypiServer(work / "pypiserver") as pypi, DevpiServer(work / "devpi") as devpi:
        if not args.reuse:
            upload_all("pypiserver", pypi, fill, None)
            log("pypiserver filled")
            upload_all("devpi", devpi, fill, None)
            log("devpi filled")
        targets = {
            "farm": dict(upload_url=f"{farm.url}{first}/legacy/", username="__token__", password=token,
                         index_url=f"{farm.url}{first}/simple/"),
            "pypiserver": dict(upload_url=pypi.url, username=pypi.username, password=pypi.password,
                               index_url=pypi.index_url),
            "devpi": dict(upload_url=devpi.url, username=devpi.username, password=devpi.password,
                          index_url=devpi.index_url),
        }
        result["held"] = {name: held(t["index_url"]) for name, t in targets.items()}  # files before the rounds
        log(f"files in the project: {result['held']}")
        names = list(targets)
        for r, (wheel, version) in enumerate(measured):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                m = upload_to_installable(wheel, version, work=work, **targets[name])
                m["load1"] = round(os.getloadavg()[0], 2)
                result["runs"].setdefault(name, []).append(m)
                log(f"round {r} {name}: {m['total_s']} s (twine {m['upload_s']} s, pip tries {m['pip_tries']})")
    result["seconds"] = round(time.time() - started, 1)
    result["load"]["end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(report(result))
    return 0


def report(result: dict[str, Any]) -> str:
    med = {name: statistics.median(m["total_s"] for m in runs) for name, runs in result["runs"].items()}
    up = {name: statistics.median(m["upload_s"] for m in runs) for name, runs in result["runs"].items()}
    farm = med.get("farm")
    files = (", ".join(f"{n} {c}" for n, c in result["held"].items()) if "held" in result else str(result["files"]))
    lines = [f"files in the project before the first upload: {files}; {result['rounds']} rounds, "
             f"{result['date']}, load average at the end {', '.join(f'{x:.1f}' for x in result['load']['end'])}",
             "",
             *([f"Listing one new file in the farm's project of {c['files']} files: {c['list_new_s'] * 1000:.0f} ms "
                f"(`list_new`) against {c['regenerate_s'] * 1000:.0f} ms rewriting its pages from the database "
                f"(`regenerate`), {c['ratio']}x", ""] if (c := result.get("page_cost")) else []),
             "| server | upload-to-installable, median s | min - max s | twine upload, median s | vs the farm |",
             "|---|---|---|---|---|"]
    for name, runs in result["runs"].items():
        totals = [m["total_s"] for m in runs]
        ratio = "1" if name == "farm" or farm is None else f"{med[name] / farm:.2f}x the farm's time"
        lines.append(f"| {name} | {med[name]:.2f} | {min(totals):.2f} - {max(totals):.2f} | {up[name]:.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
