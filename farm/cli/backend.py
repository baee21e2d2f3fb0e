"""The `Backend` the commands on jobs and releases run against, and the local one.

Two implementations return the same views: `LocalBackend` (this host's FARM_HOME and database) and
`farm.cli.remote.RemoteBackend` (a farm's HTTP API). `choose()` picks one per command line:
the remote one when `server_url` is set (`--server`, FARM_SERVER_URL, farm.toml). A job's view is
`farm.status.JobView.as_dict()`, which is also what the API's `/api/jobs` answers.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:
    from farm.cli.requirements import Item
    from farm.config import Settings
    from farm.coordinator.submit import SubmittedMany


class JobRef(TypedDict):
    id: int
    build_id: str
    state: str


class SubmissionView(TypedDict):
    """A submission and its jobs (the API's `SubmissionOut`)."""

    submission_id: int
    name: str
    version: str
    jobs: list[JobRef]


class RequirementsView(TypedDict):
    """A requirements file's one submission: a `SubmissionView` per sdist, and the lines skipped
    for their markers (the API's `RequirementsOut`)."""

    submission_id: int
    sources: list[SubmissionView]
    skipped: list[str]


class JobView(TypedDict):
    """A job with its steps (`farm.status.JobView.as_dict()`, the API's `/api/jobs/{id}`)."""

    id: int
    submission_id: int
    name: str
    version: str
    build_id: str
    state: str
    attempt: int
    cached_from: int | None
    error: str | None
    steps: list[dict[str, Any]]  # {"name", "seconds", "outcome"}
    wheels: list[str]
    waiting_for: list[str]
    seconds: float | None
    dependency_jobs: list[int]  # the jobs providing its runtime dependencies
    unserved: str | None  # queued with no live worker to take it: why (absent from older servers)


class Backend(Protocol):
    poll_interval: float  # seconds between two looks at the jobs of a `--wait`

    def submit(self, request: str, *, priority: int, rebuild: str | None = None,
               platforms: list[str] | None = None, pythons: list[str] | None = None) -> SubmissionView: ...

    def submit_requirements(self, label: str, items: list[Item], *, priority: int, rebuild: str | None = None,
                            platforms: list[str] | None = None, pythons: list[str] | None = None) -> RequirementsView: ...

    def jobs(self, *, submission: int | None, limit: int, active: bool) -> list[JobView]: ...

    def jobs_by_id(self, job_ids: list[int]) -> list[JobView]: ...

    def log(self, job_id: int) -> str: ...

    def cancel(self, job_id: int) -> str: ...

    def yank(self, pin: str, *, reason: str | None, undo: bool) -> list[str]: ...

    def promote(self, pin: str, *, to: str, upload: bool) -> list[str]: ...


def requirements_view(result: SubmittedMany) -> RequirementsView:
    sources: list[SubmissionView] = [
        {"submission_id": r.submission_id, "name": r.name, "version": r.version,
         "jobs": [{"id": i, "build_id": b, "state": str(st)} for i, b, st in r.jobs],
         "warnings": r.warnings} for r in result.sources]  # type: ignore[typeddict-unknown-key]
    return {"submission_id": result.sources[0].submission_id, "sources": sources, "skipped": result.skipped}


def choose() -> Backend:
    from farm.config import get_settings

    settings = get_settings()
    if settings.server_url:
        from farm.cli.remote import RemoteBackend, client_from_settings

        return RemoteBackend(client_from_settings())
    return LocalBackend(settings)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class LocalBackend:
    """This host's farm: its database, storage and index. Only `submit` creates a farm's database;
    the other methods raise `NoFarm` where there is none."""

    poll_interval = 0.02

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def _db(*, create: bool = False) -> None:
        from farm.cli import ensure_db

        ensure_db(create=create)

    def submit(self, request: str, *, priority: int, rebuild: str | None = None,
               platforms: list[str] | None = None, pythons: list[str] | None = None) -> SubmissionView:
        from farm.coordinator.submit import submit

        self._db(create=True)
        result = submit(request, settings=self.settings, priority=priority, rebuild=rebuild,
                        only_platforms=platforms or None, only_pythons=pythons or None)
        return {"submission_id": result.submission_id, "name": result.name, "version": result.version,  # type: ignore[typeddict-unknown-key]
                "jobs": [{"id": i, "build_id": b, "state": s} for i, b, s in result.jobs],
                "warnings": result.warnings}

    def submit_requirements(self, label: str, items: list[Item], *, priority: int, rebuild: str | None = None,
                            platforms: list[str] | None = None, pythons: list[str] | None = None) -> RequirementsView:
        from farm.coordinator.submit import submit_many

        self._db(create=True)
        result = submit_many(items, settings=self.settings, request=label, priority=priority, rebuild=rebuild,
                             only_platforms=platforms or None, only_pythons=pythons or None)
        return requirements_view(result)

    def jobs(self, *, submission: int | None, limit: int, active: bool) -> list[JobView]:
        from farm.db.session import session_scope
        from farm.status import list_jobs

        self._db()
        with session_scope() as session:
            views = list_jobs(session, submission=submission, limit=limit, active_only=active)
        return [v.as_dict() for v in views]  # type: ignore[misc]

    def jobs_by_id(self, job_ids: list[int]) -> list[JobView]:
        from farm.db.session import session_scope
        from farm.status import jobs_done

        self._db()
        with session_scope() as session:
            _, views = jobs_done(session, job_ids)
        return [v.as_dict() for v in views]  # type: ignore[misc]

    def log(self, job_id: int) -> str:
        from farm.db.session import session_scope
        from farm.status import job_log

        self._db()
        with session_scope() as session:
            return job_log(session, job_id)

    def cancel(self, job_id: int) -> str:
        from farm.coordinator.lifecycle import cancel

        self._db()
        return cancel(job_id, self.settings)

    def yank(self, pin: str, *, reason: str | None, undo: bool) -> list[str]:
        from farm.index.promote import yank_and_rewrite

        self._db()
        return yank_and_rewrite(self.settings, pin, reason=reason, undo=undo)

    def promote(self, pin: str, *, to: str, upload: bool) -> list[str]:
        from farm.index.promote import promote_and_publish

        self._db()
        return promote_and_publish(self.settings, pin, to, by=f"farm promote ({_who()})", upload=upload)
