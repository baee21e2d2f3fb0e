"""What the commands print: the status table, the submitted jobs, the `--wait` loop, records."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from farm.cli.backend import Backend, JobView, SubmissionView
from farm.db.states import TERMINAL
from farm.errors import EXIT_JOBS_FAILED, EXIT_OK, WaitTimeout

STATUS_COLUMNS = ("JOB", "PROJECT", "VERSION", "BUILD", "STATE", "STEPS")
_GAP = "  "


def submitted_lines(sub: SubmissionView) -> list[str]:
    return [f"job {j['id']}: {sub['name']} {sub['version']} {j['build_id']} {j['state']}" for j in sub["jobs"]]


def status_table(views: list[JobView]) -> str:
    """`farm status`: a header and one row per job, columns aligned; a failed job's first error line under it."""
    if not views:
        return "no jobs\n"
    rows = []
    for v in views:
        steps = " ".join(f"{s['name']}={s['seconds']:.1f}s{'!' if s['outcome'] == 'failed' else ''}" for s in v["steps"])
        extra = f"reuses job {v['cached_from']}" if v["cached_from"] else ""
        waiting = f"waiting for {', '.join(v['waiting_for'])}" if v["waiting_for"] else ""
        rows.append((str(v["id"]), v["name"], v["version"], v["build_id"], v["state"],
                     " ".join(p for p in (steps, extra, waiting) if p)))
    widths = [max(len(r[i]) for r in (STATUS_COLUMNS, *rows)) for i in range(len(STATUS_COLUMNS) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        first, *middle, last = cells
        padded = [first.rjust(widths[0]), *(c.ljust(w) for c, w in zip(middle, widths[1:], strict=True)), last]
        return _GAP.join(padded).rstrip()

    out = [line(STATUS_COLUMNS)]
    for v, row in zip(views, rows, strict=True):
        out.append(line(row))
        if v["error"] and v["state"] == "failed":
            out.append(" " * (widths[0] + len(_GAP)) + v["error"].splitlines()[0][:200])
    return "\n".join(out) + "\n"


def _progress_line(v: JobView) -> str:
    done_steps = " ".join(f"{s['name']} {s['seconds']:.1f}s" for s in v["steps"] if s["outcome"] != "running")
    return f"job {v['id']}: {v['name']} {v['version']} {v['build_id']}: {v['state']}" + (
        f"  [{done_steps}]" if done_steps else "")


def wait(backend: Backend, job_ids: list[int], *, timeout: float, quiet: bool) -> int:
    """`submit --wait`: a line per job whenever its state changes, until every job has ended.

    Exit `EXIT_OK` if every job succeeded, `EXIT_JOBS_FAILED` if one did not (each printed with its
    error on stderr); `WaitTimeout` if `timeout` seconds pass first (the jobs go on)."""
    deadline = time.monotonic() + timeout
    last: dict[int, str] = {}
    while True:
        views = backend.jobs_by_id(job_ids)
        for v in views:
            if not quiet and last.get(v["id"]) != v["state"]:
                print(_progress_line(v), flush=True)
                last[v["id"]] = v["state"]
        if all(v["state"] in TERMINAL for v in views):
            failed = [v for v in views if v["state"] != "succeeded"]
            for v in failed:
                print(f"job {v['id']} {v['state']}: {v['error']}", file=sys.stderr)
            for v in views:
                for wheel in v["wheels"]:
                    print(f"job {v['id']}: published {wheel}")
            return EXIT_JOBS_FAILED if failed else EXIT_OK
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for jobs {job_ids} (they go on: "
                              "`farm status` shows them)")
        time.sleep(backend.poll_interval)


def follow(backend: Backend, job_id: int, *, poll: float | None = None) -> int:
    """`farm logs -f`: the job's log as it grows, until the job has ended and its whole log is printed.

    The state is read before the log, so the last read after the job ended holds the whole log;
    the placeholder for a job with no log yet is not printed while the job runs."""
    printed = ""
    while True:
        view, = backend.jobs_by_id([job_id])
        ended = view["state"] in TERMINAL
        text = backend.log(job_id)
        placeholder = text == f"job {job_id} ({view['state']}): no log yet\n"
        if not placeholder or ended:
            common = len(printed) if text.startswith(printed) else _common_prefix(printed, text)
            if text[common:]:
                sys.stdout.write(text[common:])
                sys.stdout.flush()
            printed = text
        if ended:
            return EXIT_OK
        time.sleep(max(backend.poll_interval, 0.2) if poll is None else poll)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def lines(text_lines: list[str]) -> int:
    for line in text_lines:
        print(line)
    return EXIT_OK


def record(data: Any, as_json: bool) -> None:
    """`farm find/show/gc`: JSON, or `farm.records.render`."""
    if as_json:
        print(json.dumps(data, indent=1, default=str))
        return
    from farm.records import render

    sys.stdout.write(render(data))
