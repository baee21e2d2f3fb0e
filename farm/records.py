"""The farm's records, read back (`farm find`, `farm show`) and kept in bounds (`farm gc`).

Retention (`farm gc`), in this order:

1. prune channels: in each channel named in `gc_keep_versions` (default: staging 10), keep the N
   newest versions of every project; older versions leave that channel (their entries in other
   channels stay: a version promoted to stable stays in stable). Channels not named are never pruned.
2. remove artifacts that no channel lists any more and that were published more than
   `gc_min_age_days` ago: their files leave every index tree and storage; the database row stays
   (with `removed_at`), so `farm find` and `farm show` still answer.
3. sweep files older than `gc_min_age_days` that nothing references: index files no page of their
   tree lists, stored wheels of removed artifacts and of jobs that published nothing, logs of ended
   jobs that have no live artifact, storage folders of jobs the database does not know. With
   `--logs-older-than DAYS`, also the logs of ended jobs older than that whose wheels are still served
   (the provenance and the step summaries in the database stay).

Never removed: a file any tree's page lists, the stored wheel of an artifact any channel lists (both
checked again right before each deletion), sdists (the inputs of every record), files of jobs
still running or waiting.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from farm.config import Settings
from farm.db.models import Artifact, ChannelEntry, Job, Source, utcnow
from farm.db.states import TERMINAL
from farm.errors import FarmError, NotFound
from farm.index import simple
from farm.index.channels import SIDECARS, layout, regenerate
from farm.provenance import statement
from farm.recipes import suggest
from farm.storage import log_key

_TERMINAL = {s.value for s in TERMINAL}


# find / show -----------------------------------------------------------------------------------------


def find_sha256(session: Session, digest: str) -> dict[str, Any]:
    """The wheel (or sdist) with this sha256 (a unique prefix of 8+ hex digits works) and its build."""
    digest = digest.strip().lower()
    if len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest):
        raise FarmError(f"{digest!r}: give a sha256 (at least 8 hex digits)")
    arts = list(session.scalars(select(Artifact).where(Artifact.sha256.startswith(digest)).limit(2)))
    sources = list(session.scalars(select(Source).where(Source.sha256.startswith(digest)).limit(2)))
    if len(arts) + len(sources) > 1:
        raise FarmError(f"{digest}: more than one match, give more digits")
    if arts:
        return {"kind": "wheel", **artifact_record(session, arts[0], build=True)}
    if sources:
        src = sources[0]
        jobs = session.scalars(select(Job).where(Job.source_id == src.id).order_by(Job.id))
        return {"kind": "sdist", **_source(src), "jobs": [_job(session, j) for j in jobs]}
    raise NotFound(f"no wheel or sdist with sha256 {digest}")


def artifact_record(session: Session, art: Artifact, *, build: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "filename": art.filename, "name": art.name, "version": art.version, "sha256": art.sha256, "size": art.size,
        "tags": art.tags, "requires_python": art.requires_python, "requires_dist": art.requires_dist,
        "verified": art.verified, "yanked": art.yanked, "published_at": art.published_at, "removed_at": art.removed_at,
        "channels": [{"channel": e.channel, "added_at": e.added_at, "added_by": e.added_by} for e in art.channels],
        "uploads": [{"target": u.target, "url": u.url, "uploaded_at": u.uploaded_at} for u in art.uploads],
    }
    prov = art.provenance
    if prov is not None:
        rec["provenance"] = {"statement_sha256": prov.digest, "signed": prov.envelope is not None, "keyid": prov.keyid}
        rec["verification"] = _verification(prov.statement)
    if build and art.job is not None:  # an uploaded wheel has no job
        rec["build"] = _job(session, art.job)
    return rec


def show(session: Session, settings: Settings, pin: str) -> dict[str, Any]:
    from farm.index.promote import parse_pin

    name, version = parse_pin(pin)
    arts = [a for a in session.scalars(select(Artifact).where(Artifact.name == name)
                                       .options(selectinload(Artifact.channels), selectinload(Artifact.uploads)))
            if _version_eq(a.version, version)]
    jobs = [j for j in session.scalars(select(Job).join(Source).where(Source.name == name).order_by(Job.id))
            if _version_eq(j.source.version, version)]
    if not arts and not jobs:
        raise NotFound(f"the farm has no record of {name}=={version}")
    sources = {j.source.id: j.source for j in jobs}
    return {"name": name, "version": version,
            "wheels": [artifact_record(session, a, build=False) | {"job": a.job_id} for a in arts],
            "inputs": [_source(s) for s in sources.values()],
            "jobs": [_job(session, j) for j in jobs]}


def _version_eq(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _source(src: Source) -> dict[str, Any]:
    return {"sdist": src.filename, "sha256": src.sha256, "size": src.size, "upstream_url": src.upstream_url,
            "stored_as": src.storage_key, "recorded_at": src.created_at}


def _verification(stmt: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        v = statement.verification(stmt)
    except (KeyError, TypeError, StopIteration):
        return None
    return {k: v.get(k) for k in ("passed", "environment", "imports", "testCommand", "seconds") if k in v}


def _job(session: Session, job: Job) -> dict[str, Any]:
    from farm.storage import get_storage

    storage = get_storage()
    logs = []
    for attempt in range(1, job.attempt + 1):
        key = log_key(job.id, attempt)
        path = storage.local_path(key)
        if path is not None and path.is_file():
            logs.append({"attempt": attempt, "key": key, "bytes": path.stat().st_size})
    failed = [s for s in job.steps if s.outcome == "failed"]
    return {
        "job": job.id, "state": job.state, "build_id": job.build_id, "platform": job.platform, "python": job.python,
        "engine": job.engine, "recipe": job.recipe_name, "recipe_sha256": job.recipe_digest, "cache_key": job.cache_key,
        "cached_from": job.cached_from_id, "worker": job.worker, "attempt": job.attempt, "submission": job.submission_id,
        "sdist": job.source.filename, "sdist_sha256": job.source.sha256,
        "started_at": job.started_at, "finished_at": job.finished_at, "error": job.error,
        "steps": [{"name": s.name, "attempt": s.attempt, "seconds": s.seconds and round(s.seconds, 2),
                   "outcome": s.outcome} for s in job.steps],
        "logs": logs, "log_tail": (failed[-1].log.strip().splitlines()[-5:] if failed and failed[-1].log else []),
        "wheels": [a.filename for a in job.artifacts],
        "suggested_recipe": suggest.for_job(job),  # system packages the farm found for it (farm recipe suggest)
    }


def render(data: Any, indent: int = 0) -> str:
    """Records as indented text (`--json` prints them as they are)."""
    pad = "  " * indent
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if v in (None, [], {}, ""):
                continue
            if isinstance(v, (dict, list)) and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                out.append(f"{pad}{k}:\n{render(v, indent + 1)}")
            else:
                text = ", ".join(v) if isinstance(v, list) else (v.isoformat(sep=" ", timespec="seconds")
                                                                 if isinstance(v, dt.datetime) else v)
                out.append(f"{pad}{k}: {text}\n")
    elif isinstance(data, list):
        for item in data:
            body = render(item, indent + 1)
            out.append(f"{pad}-\n{body}" if body else "")
    else:
        out.append(f"{pad}{data}\n")
    return "".join(out)


# gc ----------------------------------------------------------------------------------------------------


def gc(settings: Settings, *, dry_run: bool = False, keep: int | None = None,
       min_age_days: float | None = None, logs_older_than_days: float | None = None) -> dict[str, Any]:
    from farm.db.session import session_scope

    lay = layout(settings)
    keep_map = {c: (keep if keep is not None else n) for c, n in settings.gc_keep_versions.items()}
    for c, n in keep_map.items():
        if c not in lay.channels or n < 1:
            raise FarmError(f"gc_keep_versions.{c}: needs a channel and at least 1 (got {c!r}: {n})")
    age = settings.gc_min_age_days if min_age_days is None else min_age_days
    cutoff = utcnow() - dt.timedelta(days=age)
    cutoff_ts = time.time() - age * 86400
    report: dict[str, Any] = {"dry_run": dry_run, "min_age_days": age, "keep_versions": keep_map,
                              "pruned": [], "removed_artifacts": [], "deleted_files": [], "deleted_bytes": 0}
    touched: set[str] = set()
    with session_scope() as session:
        # 1. prune channels
        for channel, n in keep_map.items():
            by_project: dict[str, dict[Version, list[ChannelEntry]]] = defaultdict(lambda: defaultdict(list))
            for entry, art in session.execute(select(ChannelEntry, Artifact).join(Artifact).where(
                    ChannelEntry.channel == channel, Artifact.removed_at.is_(None))):
                try:
                    by_project[art.name][Version(art.version)].append(entry)
                except InvalidVersion:
                    continue
            for project, versions in by_project.items():
                for v in sorted(versions, reverse=True)[n:]:
                    for entry in versions[v]:
                        report["pruned"].append({"channel": channel, "filename": entry.artifact.filename})
                        touched.add(project)
                        if not dry_run:
                            session.delete(entry)
        session.flush()
        # 2. remove artifacts no channel lists
        orphans = session.scalars(select(Artifact).where(Artifact.removed_at.is_(None), ~Artifact.channels.any()))
        doomed = [a for a in orphans if (a.published_at or a.created_at) < cutoff]
        for art in doomed:
            report["removed_artifacts"].append(art.filename)
            touched.add(art.name)
            if not dry_run:
                art.removed_at = utcnow()
        session.flush()
        if dry_run:
            session.rollback()
    if not dry_run:
        with session_scope() as session:
            for project in sorted(touched):
                regenerate(session, settings, project)
    # 3. sweep
    logs_cutoff = None if logs_older_than_days is None else time.time() - logs_older_than_days * 86400
    report["logs_older_than_days"] = logs_older_than_days
    with session_scope() as session:
        protected = _protected(session, settings, lay)
        for path in _unreferenced(session, settings, lay, logs_cutoff=logs_cutoff):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime > cutoff_ts:
                continue
            if path.resolve() in protected:
                continue
            report["deleted_files"].append(str(path))
            report["deleted_bytes"] += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    if dry_run:
        report["note"] = "dry run: nothing was changed"
    return report


def _protected(session: Session, settings: Settings, lay: Any) -> set[Path]:
    """Every file a page lists in any tree, and the stored wheel of every artifact a channel lists."""
    from farm.storage import get_storage

    keep: set[Path] = set()
    for t in lay.trees():
        tree = lay.tree(t)
        for project in simple.list_projects(tree):
            for f in simple.read_project(tree, project):
                for suffix in SIDECARS:
                    keep.add((tree / "files" / project / f"{f.filename}{suffix}").resolve())
    storage = get_storage()
    for art in session.scalars(select(Artifact).where(Artifact.channels.any(), Artifact.removed_at.is_(None))):
        for key in (art.storage_key, art.provenance.storage_key if art.provenance else None):
            p = storage.local_path(key) if key else None
            if p is not None:
                keep.add(p.resolve())
    return keep


def _unreferenced(session: Session, settings: Settings, lay: Any, *, logs_cutoff: float | None = None) -> list[Path]:
    from farm.storage import get_storage

    out: list[Path] = []
    # index trees: files whose wheel no page of that tree lists, and leftover temporary files
    for t in lay.trees():
        tree = lay.tree(t)
        files = tree / "files"
        if not files.is_dir():
            continue
        for folder in files.iterdir():
            if not folder.is_dir():
                continue
            listed = {f.filename for f in simple.read_project(tree, folder.name)}
            for p in folder.iterdir():
                base = p.name
                for suffix in SIDECARS[1:]:
                    if base.endswith(suffix):
                        base = base[: -len(suffix)]
                        break
                if base not in listed and p.is_file():
                    out.append(p)
    # storage: per job folder
    root = getattr(get_storage(), "root", None)
    if root is None:  # not a local folder: nothing to sweep here
        return out
    jobs_root = Path(root) / "jobs"
    live_keys = {k for k, in session.execute(select(Artifact.storage_key).where(Artifact.removed_at.is_(None)))}
    for folder in sorted(jobs_root.iterdir()) if jobs_root.is_dir() else []:
        if not folder.is_dir():
            continue
        try:
            job = session.get(Job, int(folder.name))
        except ValueError:
            continue
        files = [p for p in folder.rglob("*") if p.is_file()]
        if job is None:
            out += files
            continue
        if job.state not in _TERMINAL:
            continue
        live = any(a.removed_at is None for a in job.artifacts)
        for p in files:
            key = p.relative_to(root).as_posix()
            stem = key.removesuffix(statement.SUFFIX)
            if stem in live_keys:
                continue
            if p.name.endswith(".log") and live and (logs_cutoff is None or p.stat().st_mtime > logs_cutoff):
                continue  # a published wheel's log is kept, unless older than --logs-older-than
            out.append(p)
    return out


__all__ = ["artifact_record", "find_sha256", "gc", "render", "show"]
