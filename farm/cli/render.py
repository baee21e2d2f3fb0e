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
                     " ".join(p for p in (steps, extra, waiting, _unserved(v)) if p)))
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


def _unserved(v: JobView) -> str:
    """Why a queued job has nobody to build it (computed when the view was read), or ""."""
    return f"nobody to build it: {v['unserved']}" if v.get("unserved") else ""


def _progress_line(v: JobView) -> str:
    done_steps = " ".join(f"{s['name']} {s['seconds']:.1f}s" for s in v["steps"] if s["outcome"] != "running")
    return f"job {v['id']}: {v['name']} {v['version']} {v['build_id']}: {v['state']}" + (
        f"  [{done_steps}]" if done_steps else "")


def _running_step(v: JobView) -> dict[str, Any] | None:
    return next((s for s in v["steps"] if s["outcome"] == "running"), None)


def _now(v: JobView) -> str:
    """Where a job is: its state, the step it runs and for how long, how long it has run, what it waits for."""
    step = _running_step(v)
    parts = [v["state"]]
    if step is not None:
        parts.append(f"{step['name']} {step['seconds']:.0f}s")
    if v["seconds"] is not None:
        parts.append(f"{v['seconds']:.0f}s in all")
    if v.get("waiting_for"):
        parts.append(f"waiting for {', '.join(v['waiting_for'])}")
    if v.get("unserved"):
        parts.append(_unserved(v))
    return ", ".join(parts)


def _now_line(v: JobView) -> str:
    return f"job {v['id']}: {v['name']} {v['version']} {v['build_id']}: {_now(v)}"


STILL_EVERY = 30.0  # seconds between two "still running" lines per job when stdout is no terminal


def wait(backend: Backend, job_ids: list[int], *, timeout: float, quiet: bool, live: Any = None) -> int:
    """`submit --wait`: where each job is, until every job has ended; the jobs providing their runtime
    dependencies are shown too (`dependency_jobs` of the views), though only `job_ids` decide the exit.

    On a terminal (or with `live`, a rich Console) a table redrawn at each look: a row per job with its
    state, running step and elapsed time. Otherwise plain lines: one when a job's state or running step
    changes, and one every `STILL_EVERY` seconds while a job runs.

    Exit `EXIT_OK` if every job succeeded, `EXIT_JOBS_FAILED` if one did not (each printed with its
    error on stderr); `WaitTimeout` if `timeout` seconds pass first (the jobs go on)."""
    deadline = time.monotonic() + timeout
    if live is None and not quiet and sys.stdout.isatty():
        from rich.console import Console

        live = Console()
    display = None
    if live is not None and not quiet:
        from rich.live import Live

        display = Live(console=live, auto_refresh=False, transient=False)
        display.start()
    try:
        return _wait(backend, job_ids, deadline=deadline, timeout=timeout, quiet=quiet, display=display)
    finally:
        if display is not None:
            display.stop()


def _table(views: list[JobView], parents: dict[int, int]) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("JOB", "PROJECT", "VERSION", "BUILD", "STATE", "STEP", "ELAPSED", ""):
        table.add_column(column, justify="right" if column == "JOB" else "left")
    for v in views:
        step = _running_step(v)
        note = f"dependency of {parents[v['id']]}" if v["id"] in parents else ""
        if v.get("waiting_for"):
            note = (note + "; " if note else "") + f"waiting for {', '.join(v['waiting_for'])}"
        if v.get("unserved"):
            note = (note + "; " if note else "") + _unserved(v)
        table.add_row(str(v["id"]), v["name"], v["version"], v["build_id"], v["state"],
                      f"{step['name']} {step['seconds']:.0f}s" if step else "",
                      f"{v['seconds']:.0f}s" if v["seconds"] is not None else "", note)
    return table


def _wait(backend: Backend, job_ids: list[int], *, deadline: float, timeout: float, quiet: bool,
          display: Any) -> int:
    last: dict[int, tuple[str, str | None]] = {}
    told: set[int] = set()  # jobs whose reason for waiting with nobody to build them was printed
    said: dict[int, float] = {}
    parents: dict[int, int] = {}  # dependency job -> the job it provides for
    while True:
        shown = [*job_ids, *(j for j in parents if j not in job_ids)]
        views = backend.jobs_by_id(shown)
        for v in views:
            for dep in v.get("dependency_jobs") or []:
                if dep not in job_ids and dep not in parents:
                    parents[dep] = v["id"]
        mine = [v for v in views if v["id"] in job_ids]
        now = time.monotonic()
        if display is not None:
            display.update(_table(views, parents), refresh=True)
        elif not quiet:
            for v in views:
                step = _running_step(v)
                key = (v["state"], step["name"] if step else None)
                line = None
                if last.get(v["id"]) != key:  # a new state (the line it always had), or a new step
                    new_state = v["id"] not in last or last[v["id"]][0] != v["state"]
                    line = _progress_line(v) if new_state else _now_line(v)
                    last[v["id"]] = key
                elif v["state"] not in TERMINAL and now - said.get(v["id"], now) >= STILL_EVERY:
                    line = _now_line(v)  # still at it: say how long
                if line is not None:
                    dep = f" (a dependency of job {parents[v['id']]})" if v["id"] in parents else ""
                    print(line + dep, flush=True)
                    said[v["id"]] = now
                if v.get("unserved") and v["id"] not in told:  # once; again if it was served meanwhile
                    print(f"job {v['id']}: {_unserved(v)}", flush=True)
                    told.add(v["id"])
                elif not v.get("unserved"):
                    told.discard(v["id"])
        if all(v["state"] in TERMINAL for v in mine):
            if display is not None:
                display.stop()
            failed = [v for v in mine if v["state"] != "succeeded"]
            for v in failed:
                print(f"job {v['id']} {v['state']}: {v['error']}", file=sys.stderr)
            for v in mine:
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


def rebuild_plan(plan: Any) -> list[str]:
    """`farm rebuild`: the plan (farm.coordinator.cascade.Plan), round by round."""
    items = plan.items
    out: list[str] = []
    if not items:
        out.append(f"nothing to rebuild for --affected-by {plan.selector}: {plan.note}")
    else:
        out.append(f"rebuild plan for --affected-by {plan.selector}: {len(items)} build(s) in {len(plan.rounds)} round(s)")
        for n, rnd in enumerate(plan.rounds, 1):
            out.append(f"round {n}:")
            for p in rnd:
                t = p.target
                out.append(f"  {t.label} -> build tag {p.build_tag} (was job {t.job_id}: {', '.join(t.wheels)})")
                out.append(f"    {p.reason}")
    out += [f"left out, a build is under way: {u}" for u in plan.under_way]
    return out


def stale_recipes(stale: list[Any], *, shown: int = 10) -> list[str]:
    """`farm recipe check`: the projects whose published wheels an older recipe built, each with the
    command that rebuilds them (farm.coordinator.cascade.Stale)."""
    if not stale:
        return []
    out = [f"published wheels built with an older recipe ({len(stale)} project(s)):"]
    for s in stale[:shown]:
        first = s.wheels[0] + (f" and {len(s.wheels) - 1} more" if len(s.wheels) > 1 else "")
        out.append(f"  {s.name}: {first}")
        out.append(f"    to rebuild them (and what depends on them): {s.command}")
    if len(stale) > shown:
        out.append(f"  ... and {len(stale) - shown} more project(s)")
    return out
