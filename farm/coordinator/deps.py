"""Runtime dependencies the farm's index lacks: find or submit a build for each, and wait.

A job whose wheel needs `requests` waits in `dep_wait` until a job that provides it (already
running, or submitted here from the newest matching upstream sdist) has published; then its
verification is sent again (the release: farm/coordinator/lifecycle.py). A requirement no upstream
sdist satisfies fails the job with that reason.

Requirements are evaluated for the job's targets (`job_pythons`: its Python; every Python a pure or
abi3 wheel is for) in each target's marker environment, known before any build (`needed_for`), so
a dependency under a marker is built for the Pythons that need it and for no other.

Jobs that wait on each other (a dependency cycle: A needs B, B needs A) are all built by then and
their wheels staged; none can be verified from the index alone, so they are released together, each
verified with the others' staged wheels beside the farm's index (`JobSpec.co_staged`). Each is
published on its own verification; one failing does not hold back the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.coordinator.intake import IntakePolicy, Release
from farm.coordinator.lifecycle import fail, release
from farm.coordinator.workers import Workers, python_sort_key
from farm.db.models import Dependency, Job, Source
from farm.db.session import session_scope
from farm.db.states import DependencyState, JobState
from farm.errors import FarmError
from farm.messages import BuildRecord
from farm.worker.platforms import marker_environment
from farm.util.python_tags import dotted, is_threaded, major_of, pure_majors


def _python_version(tag: str) -> str:
    return dotted(tag) or tag


def _covers(provider: Job, platform: str, python: str) -> bool:
    """Whether `provider`'s wheels serve `python` on `platform`: it was built for that pair, or its
    wheels (published, or staged while it waits itself) are pure Python, or abi3 with a floor at or
    below `python` on that platform."""
    if provider.platform == platform and provider.python == python:
        return True
    names = [a.filename for a in provider.artifacts] + [w.filename for w in BuildRecord.load(provider.staged).wheels]
    for name in names:
        try:
            tags = parse_wheel_filename(name)[3]
        except InvalidWheelFilename:
            continue
        for tag in tags:
            if tag.abi == "none" and tag.platform == "any" and major_of(tag.interpreter) in (None, major_of(python)):
                return True
            if tag.abi == "abi3" and provider.platform == platform and not is_threaded(python) and \
                    python_sort_key(tag.interpreter) <= python_sort_key(python):
                return True
    return False


def _existing_provider(session: Session, platform: str, python: str, req: Requirement) -> Job | None:
    rows = session.execute(
        select(Job, Source.version).join(Source, Job.source_id == Source.id)
        .where(Source.name == canonicalize_name(req.name), Job.state.notin_([JobState.FAILED, JobState.CANCELLED]))
        .order_by(Job.id.desc()))
    for provider, version in rows:
        if req.specifier.contains(version, prereleases=True) and _covers(provider, platform, python):
            return provider
    return None


def job_pythons(job: Job, requires_python: str | None, settings: Settings, workers: Workers | None = None) -> list[str]:
    """The Pythons a job's wheels are for: its own; for pure-Python and abi3 wheels (one job builds
    them for every Python) every Python the platform's workers offer that they admit (Requires-Python,
    an abi3 wheel's floor). These are the targets its requirements are evaluated for."""
    names = [w.filename for w in BuildRecord.load(job.staged).wheels]
    tags = [t for n in names for t in _tags(n)]
    if not tags or not all((t.abi == "none" and t.platform == "any") or t.abi == "abi3" for t in tags):
        return [job.python]
    floor = max((python_sort_key(t.interpreter) for t in tags if t.abi == "abi3"), default=(0, 0, 0))
    try:
        spec = SpecifierSet(requires_python or "")
    except InvalidSpecifier:
        spec = SpecifierSet()
    offered = [p for p, _ in (workers or Workers(settings)).offers(job.platform)]
    abi3 = any(t.abi == "abi3" for t in tags)  # does not install on a free-threaded build (PEP 703)
    majors = pure_majors((t.interpreter for t in tags), requires_python=bool(requires_python))  # py3: not 2.7
    found = [p for p in offered if python_sort_key(p) >= floor and not (abi3 and is_threaded(p))
             and major_of(p) in majors and spec.contains(_python_version(p), prereleases=True)]
    return sorted(set(found) | {job.python}, key=python_sort_key)


def _tags(name: str) -> list[Tag]:
    try:
        return list(parse_wheel_filename(name)[3])
    except InvalidWheelFilename:
        return []


def needed_for(line: str, platform: str, pythons: Sequence[str]) -> list[str]:
    """The Pythons among `pythons` a requirement line applies to on `platform`: its marker evaluated in
    each target's marker environment (python_version, sys_platform, platform_machine, ...), which is
    known before any build; all of them when it has no marker."""
    marker = Requirement(line).marker
    return [p for p in pythons if marker is None or marker.evaluate({**marker_environment(platform, p), "extra": ""})]


def _key(line: str, python: str, own: str) -> str:
    """The Dependency row of `line` for `python`: the line itself for the job's own Python, else the
    line and the target it was evaluated for."""
    return line if python == own else f"{line} (for {python})"


def wait_for(job_id: int, missing: list[str], settings: Settings) -> None:
    """Link the waiting job to a provider for each missing requirement and each target Python it
    applies to (its marker evaluated for that target), submitting builds as needed; release it at once
    when every provider has published already, fail it when one cannot be had.

    A job's wheel for cp311 needs its dependencies for cp311; a pure-Python or abi3 wheel, verified on
    the oldest and newest Python it admits, needs them for every Python it is for, so `foo;
    python_version < "3.11"` is built first for cp39 (and cp310), and not for cp311 or later. Each
    (requirement, target) is a Dependency row: the line for the job's own Python, `LINE (for cp39)`
    for another."""
    from farm.coordinator.submit import submit
    from farm.index.upstream import Upstream

    links: dict[str, tuple[int | None, str | None]] = {}  # Dependency row -> (provider job, why none)
    wanted: dict[str, list[tuple[str, str]]] = {}  # line -> [(python, row)] that have no provider yet
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        platform, own = job.platform, job.python
        pythons = job_pythons(job, job.source.requires_python, settings)
        for line in missing:
            req = Requirement(line)
            for python in needed_for(line, platform, pythons) or [own]:
                key = _key(line, python, own)
                provider = _existing_provider(session, platform, python, req)
                if provider is not None:
                    links[key] = (provider.id, None)
                else:
                    wanted.setdefault(line, []).append((python, key))
    policy = IntakePolicy.from_settings(settings)
    if wanted:
        with Upstream(settings.upstream_index) as upstream:
            for line, pairs in wanted.items():
                req = Requirement(line)
                by_version: dict[str, list[tuple[str, str]]] = {}
                for python, key in pairs:
                    version = _python_version(python)
                    try:
                        found = upstream.best_sdist(line, version, accept=policy.accepts)
                    except FarmError as exc:
                        links[key] = (None, str(exc))
                        continue
                    if found is None:
                        reason = f"no sdist on {settings.upstream_index} satisfies {line} for Python {version}"
                        if policy.active and (newest := upstream.best_sdist(line, version)):
                            reason = f"the intake policy admits no release of {line}; the newest: " + str(
                                policy.refusal(Release(newest.project, newest.version, upload_time=newest.upload_time)))
                        links[key] = (None, reason)
                        continue
                    by_version.setdefault(found.version, []).append((python, key))
                for release_version, group in by_version.items():  # one submission per release chosen
                    try:
                        sub = submit(f"{canonicalize_name(req.name)}=={release_version}", settings=settings,
                                     kind="dependency", parent_job_id=job_id, only_platforms=[platform],
                                     only_pythons=[p for p, _ in group])
                    except FarmError as exc:
                        for _, key in group:
                            links[key] = (None, f"{line}: {exc}")
                        continue
                    for python, key in group:  # a pure dependency: one job for all of them
                        job_ids = [i for i, build_id, _ in sub.jobs if build_id.split("-")[0] == python] or \
                            [i for i, _, _ in sub.jobs]
                        links[key] = (job_ids[0], None) if job_ids else (None, f"{line}: nothing to build")
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.state != JobState.DEP_WAIT:
            return
        for line, (provider_id, reason) in links.items():
            dep = session.scalar(select(Dependency).where(Dependency.job_id == job_id, Dependency.requirement == line))
            if dep is None:
                dep = Dependency(job=job, requirement=line)
                session.add(dep)
            dep.dep_job_id, dep.reason = provider_id, reason
            provider = session.get(Job, provider_id) if provider_id else None
            if provider is None or provider.state == JobState.FAILED:
                dep.state = DependencyState.UNAVAILABLE
                dep.reason = reason or f"job {provider_id} failed"
            else:
                dep.state = DependencyState.MET if provider.state == JobState.SUCCEEDED else DependencyState.WAITING
        session.flush()
        unavailable = [d for d in job.dependencies if d.state == DependencyState.UNAVAILABLE]
        if unavailable:
            fail(session, job, "; ".join(f"dependency {d.requirement} cannot be had: {d.reason}"
                                         for d in unavailable), "dependency")
        else:
            release(session, job, settings)
