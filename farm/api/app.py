"""The farm's HTTP side: health, job status and logs, and the static index (PEP 503/691) it serves.

In the embedded farm this one process serves everything; in production the index folder can be
served by any static web server instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse

from farm.config import Settings, get_settings
from farm.db.session import session_scope
from farm.errors import NotFound
from farm.index.serve import index_app
from farm.status import job_log, list_jobs


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.index.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="Wheel Farm", version="0.1.0")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/jobs")
    def jobs(submission: int | None = None, limit: int = 50, active: bool = False) -> list[dict[str, Any]]:
        with session_scope() as session:
            return [v.as_dict() for v in list_jobs(session, submission=submission, limit=limit, active_only=active)]

    @app.get("/api/jobs/{job_id}/log", response_class=PlainTextResponse)
    def log(job_id: int) -> str:
        with session_scope() as session:
            try:
                return job_log(session, job_id)
            except NotFound as exc:
                raise HTTPException(404, str(exc)) from None

    app.mount("/", index_app(settings.index))
    return app
