"""Suggested recipes: the system packages the farm found for a build that lacked them.

When a build fails reporting a missing header, library or tool, the worker looks up the packages
that provide it and builds once more with them (farm/worker/sysdeps.py). What it found is recorded
as `adjustments.systemPackages`: in the provenance of the wheels it built, or in the job
(`Job.staged["adjustments"]`) when the build failed or the packages were not installed. From that
record this module writes the recipe that would have built it the first time (`farm recipe suggest
NAME`, `farm show`, the job's page and its JSON); the text is checked against the recipe schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from farm.errors import NotFound, RecipeError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from farm.db.models import Job

KEY = "systemPackages"


def recipe_text(name: str, version: str, record: dict[str, Any], *, recipe: str | None = None,
                job: int | None = None) -> str:
    """The suggested recipe file for `name` from one `systemPackages` record (TOML, valid against the schema)."""
    from farm.recipes.load import parse_recipe_text

    family, packages = record.get("family") or "apt", list(record.get("packages") or [])
    found = [f"{f['missing']} ({f['kind']}) from {f['package']}" for f in record.get("found") or []]
    outcome = {"built": "the build succeeded with them installed",
               "failed": "the build still failed with them installed"}.get(
        record.get("outcome", ""), "not installed: the build was not tried with them")
    lines = ["#:schema ./recipe.schema.json",
             f"# Suggested by the farm for {name} {version}{f' (job {job})' if job else ''}: the build reported",
             *[f"#   {f}" for f in found],
             f"# found in {record.get('lookup', 'the package index')}; {outcome}."]
    if recipe:
        lines.append(f"# The build used the recipe {recipe}: add these packages to it.")
    lines += ["", "[system-packages]", f"{family} = {json.dumps(packages)}", ""]
    text = "\n".join(lines)
    parse_recipe_text(text, Path(f"{canonicalize_name(name)}.toml"))  # RecipeError: never print a broken recipe
    return text


def job_record(job: Job) -> dict[str, Any] | None:
    """The `systemPackages` record of a job: from its wheels' provenance, else from the job itself."""
    for art in job.artifacts:
        prov = art.provenance
        stmt = prov.statement if prov is not None else None
        try:
            found = stmt["predicate"]["buildDefinition"]["internalParameters"]["adjustments"][KEY]  # type: ignore[index]
        except (KeyError, TypeError):
            continue
        return dict(found)
    found = ((job.staged or {}).get("adjustments") or {}).get(KEY)
    return dict(found) if isinstance(found, dict) and found.get("packages") else None


def for_job(job: Job | None) -> str | None:
    """The suggested recipe of one job (None: the farm found no system package for it)."""
    record = job_record(job) if job is not None else None
    if record is None or not record.get("packages"):
        return None
    try:
        return recipe_text(job.source.name, job.source.version, record, recipe=job.recipe_name, job=job.id)
    except RecipeError:  # shown where the job is shown: a record no recipe can hold shows nothing
        return None


def for_project(session: Session, name: str, version: str | None = None) -> tuple[str, int]:
    """The newest suggestion for project `name` (and `version`), preferring builds that succeeded with
    the packages found; with the job it comes from. NotFound when no job of it has one."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from farm.db.models import Artifact, Job, Source

    norm = canonicalize_name(name)
    q = (select(Job).join(Source).where(Source.name == norm).order_by(Job.id.desc())
         .options(selectinload(Job.source), selectinload(Job.artifacts).selectinload(Artifact.provenance)))
    if version:
        q = q.where(Source.version == version)
    candidates = []
    for job in session.scalars(q):
        record = job_record(job)
        if record is not None and record.get("packages"):
            candidates.append((record.get("outcome") != "built", job, record))
    if not candidates:
        what = f"{norm}=={version}" if version else norm
        raise NotFound(f"no build of {what} needed system packages the farm could find (a suggestion is written "
                       "when a build fails reporting a missing header, library or tool that a package provides)")
    _, job, record = min(candidates, key=lambda c: c[0])  # stable: the newest of the best kind
    return recipe_text(job.source.name, job.source.version, record, recipe=job.recipe_name, job=job.id), job.id
