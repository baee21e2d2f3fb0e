"""What the dashboard's pages read, each a bounded query that holds at a million jobs.

Job lists page by seek (keyset) on the job id, newest first: `WHERE id < :before ORDER BY id DESC
LIMIT n`, never OFFSET, never a COUNT over the table. The filters have indexes that end in the id
(migration 0005: `(state, id)`, `(platform, state, id)`, `(source_id, id)`), so every page reads n
index entries whatever the page's depth. Workers and queues read only the jobs that have not ended
(a small set, through the state index); channels read their newest entries. Submissions page by
seek on their id too, and a submission's closure follows `dependency` rows job by job (migration
0008 indexes `job.submission_id` and `submission.parent_job_id`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from farm.coordinator.workers import waiting_reasons
from farm.db.models import Artifact, ChannelEntry, Dependency, Job, Provenance, Source, Step, Submission
from farm.db.states import RUNNING, TERMINAL, JobState, StepOutcome
from farm.provenance.statement import verification
from farm.records import artifact_record
from farm.recipes import suggest

ACTIVE = [s.value for s in JobState if s not in TERMINAL]
ENDED = [s.value for s in TERMINAL]
WORKING = [s.value for s in RUNNING]
PAGE = 50


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True, kw_only=True)
class JobFilter:
    state: str | None = None
    project: str | None = None
    platform: str | None = None

    def params(self) -> dict[str, str]:
        return {k: v for k, v in (("state", self.state), ("project", self.project), ("platform", self.platform)) if v}


@dataclass(kw_only=True)
class JobPage:
    rows: list[dict[str, Any]]
    older: int | None  # `before` of the next (older) page
    newer: int | None  # `after` of the previous (newer) page


def job_page(session: Session, filt: JobFilter, *, before: int | None = None, after: int | None = None,
             limit: int = PAGE) -> JobPage:
    """One page of jobs matching `filt`: the `limit` newest with id < before, or the `limit` oldest
    with id > after (shown newest first)."""
    q = (select(Job.id, Job.state, Job.platform, Job.python, Job.build_id, Job.attempt, Job.worker,
                Job.created_at, Job.started_at, Job.finished_at, Job.cached_from_id, Job.error,
                Source.name, Source.version)
         .join(Source, Source.id == Job.source_id))
    if filt.state:
        q = q.where(Job.state == filt.state)
    if filt.platform:
        q = q.where(Job.platform == filt.platform)
    if filt.project:
        q = q.where(Job.source_id.in_(select(Source.id).where(Source.name == canonicalize_name(filt.project))))
    if after is not None:
        rows = list(session.execute(q.where(Job.id > after).order_by(Job.id.asc()).limit(limit + 1)))
        more_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        more_older = bool(rows) and session.scalar(_exists_below(q, rows[-1].id)) is not None
    else:
        if before is not None:
            q = q.where(Job.id < before)
        rows = list(session.execute(q.order_by(Job.id.desc()).limit(limit + 1)))
        more_older = len(rows) > limit
        rows = rows[:limit]
        more_newer = before is not None and bool(rows)
    t = now()
    out = []
    unserved = waiting_reasons(rows)  # queued with no live worker to take them: why (read from the registrations)
    for r in rows:
        d = r._asdict()
        d["seconds"] = ((r.finished_at or t) - r.started_at).total_seconds() if r.started_at else None
        d["unserved"] = unserved.get(r.id)
        out.append(d)
    return JobPage(rows=out, older=out[-1]["id"] if more_older and out else None,
                   newer=out[0]["id"] if more_newer and out else None)


def _exists_below(q: Any, job_id: int) -> Any:
    return q.with_only_columns(Job.id).where(Job.id < job_id).order_by(Job.id.desc()).limit(1)


# One job ---------------------------------------------------------------------------------------------


def job_detail(session: Session, job_id: int) -> dict[str, Any] | None:
    job = session.scalar(select(Job).where(Job.id == job_id)
                         .options(selectinload(Job.steps), selectinload(Job.source), selectinload(Job.dependencies),
                                  selectinload(Job.artifacts).selectinload(Artifact.provenance),
                                  selectinload(Job.artifacts).selectinload(Artifact.channels),
                                  selectinload(Job.artifacts).selectinload(Artifact.uploads)))
    if job is None:
        return None
    t = now()
    origin = job.created_at
    timeline = []
    for s in job.steps:
        secs = s.seconds if s.seconds is not None else ((s.finished_at or t) - s.started_at).total_seconds()
        timeline.append({"name": s.name, "attempt": s.attempt, "outcome": s.outcome, "seconds": secs,
                         "offset": max(0.0, (s.started_at - origin).total_seconds())})
    span = max([e["offset"] + e["seconds"] for e in timeline] or [0.0]) or 1.0
    for e in timeline:
        e["left"] = round(100 * e["offset"] / span, 2)
        e["width"] = max(0.5, round(100 * e["seconds"] / span, 2))
    wheels = [artifact_record(session, a, build=False) for a in job.artifacts]
    return {"job": job, "source": job.source, "timeline": timeline, "wheels": wheels,
            "test": test_result(job, wheels), "suggested_recipe": suggest.for_job(job),
            "waiting_for": [d.requirement for d in job.dependencies if d.state == "waiting"],
            "unserved": waiting_reasons([job]).get(job.id),
            "ended": job.state in ENDED,
            "seconds": ((job.finished_at or t) - job.started_at).total_seconds() if job.started_at else None}


def test_result(job: Job, wheels: list[dict[str, Any]]) -> str:
    """passed / failed / not run, from the provenance's verification record, else from the steps."""
    for w in wheels:
        v = w.get("verification")
        if v is not None and "passed" in v:
            return "passed" if v["passed"] else "failed"
    if any(s.name == JobState.VERIFYING.value and s.outcome == "failed" and s.attempt == job.attempt
           for s in job.steps):
        return "failed"
    return "not run"


# A project's matrix --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Matrix:
    name: str
    versions: list[str]
    columns: list[tuple[str, str]]  # (platform, python)
    cells: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (version, platform, python)
    older: int | None = None  # source id to page below


def project_matrix(session: Session, name: str, *, before_source: int | None = None, versions: int = 20) -> Matrix:
    """piwheels' matrix: version x platform x Python, the newest job of each cell, newest versions
    first (`versions` sdists a page, seek-paged on the source id).

    Bounded at any number of resubmissions: the newest job id of each cell is found in SQL (the
    `(source_id, id)` index), and only those jobs (one per cell), the wheels of the builds they are
    (or reused) with their verification result, and their failed verifying steps are read, as rows.
    The test result is `test_result`'s: the provenance's verification, else a failed verifying step
    of the build's current attempt."""
    name = canonicalize_name(name)
    q = select(Source).where(Source.name == name)
    if before_source is not None:
        q = q.where(Source.id < before_source)
    sources = list(session.scalars(q.order_by(Source.id.desc()).limit(versions + 1)))
    older = sources[versions - 1].id if len(sources) > versions else None
    sources = sources[:versions]
    by_id = {s.id: s for s in sources}
    newest = list(session.scalars(select(func.max(Job.id)).where(Job.source_id.in_(by_id))
                                  .group_by(Job.source_id, Job.platform, Job.python))) if by_id else []
    jobs = list(session.execute(select(Job.id, Job.source_id, Job.platform, Job.python, Job.state, Job.attempt,
                                       Job.cached_from_id).where(Job.id.in_(newest)))) if newest else []
    # a cached job shows its origin's wheels and test result
    built_ids = {j.cached_from_id or j.id for j in jobs}
    attempts = {j.id: j.attempt for j in jobs}
    missing = built_ids - set(attempts)
    if missing:
        attempts.update(dict(session.execute(select(Job.id, Job.attempt).where(Job.id.in_(missing))).tuples()))
    wheels: dict[int, list[dict[str, Any]]] = {}
    passed: dict[int, bool] = {}
    failed_verify: set[int] = set()
    if built_ids:
        for w in session.execute(select(Artifact.job_id, Artifact.filename, Artifact.yanked, Artifact.removed_at,
                                        Provenance.statement)
                                 .outerjoin(Provenance, Provenance.artifact_id == Artifact.id)
                                 .where(Artifact.job_id.in_(built_ids)).order_by(Artifact.id)):
            wheels.setdefault(w.job_id, []).append({"filename": w.filename, "yanked": w.yanked,
                                                    "removed": w.removed_at is not None})
            result = _passed(w.statement)
            if result is not None and w.job_id not in passed:
                passed[w.job_id] = result
        failed_verify = {job_id for job_id, attempt in session.execute(
            select(Step.job_id, Step.attempt).where(Step.job_id.in_(built_ids), Step.name == JobState.VERIFYING.value,
                                                    Step.outcome == StepOutcome.FAILED)) if attempt == attempts.get(job_id)}
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    columns: set[tuple[str, str]] = set()
    for j in jobs:
        src = by_id[j.source_id]
        built = j.cached_from_id or j.id
        test = ("passed" if passed[built] else "failed") if built in passed else \
            "failed" if built in failed_verify else "not run"
        cells[(src.version, j.platform, j.python)] = {"job": j.id, "state": j.state, "built_by": built, "test": test,
                                                      "wheels": wheels.get(built, [])}
        columns.add((j.platform, j.python))
    versions_sorted = sorted({s.version for s in sources}, key=_version_key, reverse=True)
    return Matrix(name=name, versions=versions_sorted, columns=sorted(columns), cells=cells, older=older)


def _passed(statement: dict[str, Any] | None) -> bool | None:
    """The verification result a provenance statement records, None when it records none."""
    try:
        v = verification(statement)
    except (KeyError, TypeError, StopIteration):
        return None
    return bool(v["passed"]) if "passed" in v else None


def version_channels(session: Session, name: str, versions: list[str]) -> dict[str, dict[str, Any]]:
    """For each of a project's `versions` with live wheels: the channels they are in, and whether
    every one is yanked (what the promote and yank buttons offer)."""
    if not versions:
        return {}
    rows = session.execute(select(Artifact.version, Artifact.yanked, ChannelEntry.channel)
                           .outerjoin(ChannelEntry, ChannelEntry.artifact_id == Artifact.id)
                           .where(Artifact.name == name, Artifact.version.in_(versions), Artifact.removed_at.is_(None)))
    out: dict[str, dict[str, Any]] = {}
    for version, yanked, channel in rows:
        v = out.setdefault(version, {"channels": set(), "yanked": True})
        if channel:
            v["channels"].add(channel)
        v["yanked"] = v["yanked"] and yanked is not None
    return out


def _version_key(v: str) -> tuple[int, Any]:
    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, v)


# Workers and queues --------------------------------------------------------------------------------


def queue_depths(session: Session) -> dict[str, int]:
    """Queued jobs per platform (the state index: only queued rows are read)."""
    rows = session.execute(select(Job.platform, func.count()).where(Job.state == JobState.QUEUED.value)
                           .group_by(Job.platform))
    return {p: n for p, n in rows}


def active_jobs_by_state(session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(select(Job.state, Job.platform, func.count()).where(Job.state.in_(ACTIVE))
                           .group_by(Job.state, Job.platform))
    return {(s, p): n for s, p, n in rows}


def workers(session: Session, *, recent_jobs: int = 1000) -> list[dict[str, Any]]:
    """The workers the farm knows of: those running a job now (with its step and last heartbeat),
    and those that ran one of the newest `recent_jobs` jobs (a bounded id range), with their Pythons.

    Workers report nothing while idle, so an idle worker appears here once it has taken a job."""
    found: dict[str, dict[str, Any]] = {}
    current = session.execute(
        select(Job.worker, Job.platform, Job.python, Job.id, Job.state, Job.heartbeat_at, Job.updated_at, Source.name,
               Source.version).join(Source, Source.id == Job.source_id)
        .where(Job.state.in_(WORKING), Job.worker.is_not(None)).order_by(Job.id))
    for r in current:
        w = found.setdefault(r.worker, {"name": r.worker, "platforms": set(), "pythons": set(), "jobs": [],
                                        "last_seen": None})
        w["platforms"].add(r.platform)
        w["pythons"].add(r.python)
        w["jobs"].append({"id": r.id, "state": r.state, "project": r.name, "version": r.version, "python": r.python})
        seen = r.heartbeat_at or r.updated_at
        w["last_seen"] = max(filter(None, (w["last_seen"], seen)))
    top = session.scalar(select(func.max(Job.id))) or 0
    recent = session.execute(
        select(Job.worker, Job.platform, Job.python, func.max(func.coalesce(Job.heartbeat_at, Job.updated_at)))
        .where(Job.id > top - recent_jobs, Job.worker.is_not(None))
        .group_by(Job.worker, Job.platform, Job.python))
    for worker, platform, python, seen in recent:
        w = found.setdefault(worker, {"name": worker, "platforms": set(), "pythons": set(), "jobs": [],
                                      "last_seen": None})
        w["platforms"].add(platform)
        w["pythons"].add(python)
        w["last_seen"] = max(filter(None, (w["last_seen"], seen)), default=None)
    return sorted(found.values(), key=lambda w: (not w["jobs"], w["name"]))


# Channels and promotions ---------------------------------------------------------------------------


def channel_counts(session: Session) -> dict[str, int]:
    """Live artifacts per channel (the channel index)."""
    rows = session.execute(select(ChannelEntry.channel, func.count()).join(Artifact)
                           .where(Artifact.removed_at.is_(None)).group_by(ChannelEntry.channel))
    return {c: n for c, n in rows}


def channel_entries(session: Session, *, channel: str | None = None, before: int | None = None,
                    limit: int = PAGE) -> tuple[list[dict[str, Any]], int | None]:
    """The newest channel entries (publishes into the first channel, promotions into the others),
    seek-paged on the entry id."""
    q = (select(ChannelEntry.id, ChannelEntry.channel, ChannelEntry.added_at, ChannelEntry.added_by,
                Artifact.name, Artifact.version, Artifact.filename, Artifact.job_id, Artifact.yanked)
         .join(Artifact, Artifact.id == ChannelEntry.artifact_id))
    if channel:
        q = q.where(ChannelEntry.channel == channel)
    if before is not None:
        q = q.where(ChannelEntry.id < before)
    rows = [r._asdict() for r in session.execute(q.order_by(ChannelEntry.id.desc()).limit(limit + 1))]
    return rows[:limit], (rows[limit - 1]["id"] if len(rows) > limit else None)


# Submissions and their closure ---------------------------------------------------------------------

TOP_KINDS = ("file", "requirement", "requirements")  # what a person submitted; `dependency` the farm did


def submissions(session: Session, *, before: int | None = None, limit: int = PAGE) -> tuple[list[dict[str, Any]], int | None]:
    """The newest submissions people made (not the farm's own dependency submissions), each with its
    jobs' states counted; seek-paged on the submission id."""
    q = select(Submission.id, Submission.kind, Submission.request, Submission.created_at).where(
        Submission.kind.in_(TOP_KINDS))
    if before is not None:
        q = q.where(Submission.id < before)
    rows = [r._asdict() for r in session.execute(q.order_by(Submission.id.desc()).limit(limit + 1))]
    older = rows[limit - 1]["id"] if len(rows) > limit else None
    rows = rows[:limit]
    counts: dict[int, dict[str, int]] = {}
    if rows:
        for sid, state, n in session.execute(
                select(Job.submission_id, Job.state, func.count()).where(Job.submission_id.in_([r["id"] for r in rows]))
                .group_by(Job.submission_id, Job.state)):
            counts.setdefault(sid, {})[JobState(state).value] = n
    for r in rows:
        r["states"] = dict(sorted(counts.get(r["id"], {}).items()))
        r["jobs"] = sum(r["states"].values())
    return rows, older


@dataclass(kw_only=True)
class Closure:
    submission: dict[str, Any]
    requested: list[dict[str, Any]]  # the submission's own jobs
    pulled_in: list[dict[str, Any]]  # jobs built (or reused) for their runtime dependencies, transitively
    waits: list[dict[str, Any]]  # (job, requirement, provider, state, reason) for every dependency row
    states: dict[str, int]  # over requested + pulled_in
    truncated: bool = False


def submission_closure(session: Session, submission_id: int, *, max_jobs: int = 2000) -> Closure | None:
    """A submission with its closure: the jobs it asked for, and every job their runtime dependencies
    linked to (a build the farm submitted for them, or one it reused), followed level by level
    through the `dependency` rows; at most `max_jobs` jobs."""
    sub = session.get(Submission, submission_id)
    if sub is None:
        return None
    cols = (Job.id, Job.state, Job.platform, Job.python, Job.build_id, Job.cached_from_id, Job.error,
            Job.submission_id, Source.name, Source.version)
    requested = [r._asdict() for r in session.execute(
        select(*cols).join(Source, Source.id == Job.source_id).where(Job.submission_id == submission_id)
        .order_by(Job.id))]
    seen = {r["id"] for r in requested}
    frontier = list(seen)
    pulled: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    truncated = False
    while frontier and not truncated:
        deps = list(session.execute(select(Dependency.job_id, Dependency.requirement, Dependency.dep_job_id,
                                           Dependency.state, Dependency.reason)
                                    .where(Dependency.job_id.in_(frontier)).order_by(Dependency.id)))
        waits += [{"job": d.job_id, "requirement": d.requirement, "provider": d.dep_job_id,
                   "state": d.state.value if hasattr(d.state, "value") else d.state, "reason": d.reason} for d in deps]
        new = sorted({d.dep_job_id for d in deps if d.dep_job_id is not None} - seen)
        if len(seen) + len(new) > max_jobs:
            new, truncated = new[:max(0, max_jobs - len(seen))], True
        frontier = new
        seen.update(new)
        if new:
            pulled += [r._asdict() for r in session.execute(
                select(*cols).join(Source, Source.id == Job.source_id).where(Job.id.in_(new)).order_by(Job.id))]
    states: dict[str, int] = {}
    for r in (*requested, *pulled):
        r["state"] = JobState(r["state"]).value
        states[r["state"]] = states.get(r["state"], 0) + 1
    return Closure(submission={"id": sub.id, "kind": sub.kind, "request": sub.request, "created_at": sub.created_at,
                               "parent_job_id": sub.parent_job_id},
                   requested=requested, pulled_in=pulled, waits=waits, states=dict(sorted(states.items())),
                   truncated=truncated)
