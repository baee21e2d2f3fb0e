"""The farm's HTTP side: health, submissions, job status and logs, worker storage, and the static
index (PEP 503/691) it serves.

The routes live in `routes_jobs` (role submit) and `routes_workers` (role worker), tokens in
`auth`; `/health` and the index (`/simple`, `/files`) need no token. A `FarmError` is answered with
`{"detail": MESSAGE, "error_class": NAME}` (a class of farm/errors.py). In the embedded farm this one
process serves everything; in production the index folder can be served by any static web server
instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from farm import web
from farm.api import auth, routes_jobs, routes_releases, routes_upload, routes_workers
from farm.config import Settings, get_settings
from farm.errors import FarmError, NotFound, StateError, UpstreamError
from farm.index.serve import index_app
from farm.storage import own_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    (settings.index / "files").mkdir(parents=True, exist_ok=True)  # served from the first request on
    from farm.index.channels import ensure_trees

    ensure_trees(settings)  # the channel and virtual-index trees exist, empty, before the first publish
    # No /docs or /redoc: their pages load Swagger UI and ReDoc from a CDN; /openapi.json stays.
    app = FastAPI(title="Wheel Farm", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.settings = settings
    own_storage()  # this process serves the storage; it never reaches it over HTTP itself

    @app.exception_handler(FarmError)
    async def farm_error(request: Request, exc: FarmError) -> JSONResponse:
        code = (404 if isinstance(exc, NotFound) else 502 if isinstance(exc, UpstreamError)
                else 409 if isinstance(exc, StateError) else 422)
        # The class travels with the message: the CLI's API client raises it again, with its exit code.
        return JSONResponse({"detail": str(exc), "error_class": type(exc).__name__}, status_code=code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    app.include_router(routes_jobs.router)
    app.include_router(routes_workers.router)
    app.include_router(routes_releases.router)
    app.include_router(routes_upload.router)  # /<channel>/legacy/
    web.install(app)  # the dashboard at / and /ui/, and /metrics (farm/web)
    app.mount("/", index_app(settings.index, guard=auth.index_guard(settings)))  # private channels
    return app
