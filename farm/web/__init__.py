"""The farm's web dashboard and its Prometheus metrics, served by the API app (farm/api/app.py).

`/` is the job list; the other pages are below `/ui/` (so they never meet a channel's index tree,
which is served at `/<channel>/simple/`); `/metrics` is for Prometheus. Templates and static files
ship in this package (docs/dashboard.md).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from farm.web.metrics import router as metrics_router
from farm.web.pages import router as pages_router

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Add the dashboard, its static files and `/metrics` to `app` (before the index's catch-all mount)."""
    app.include_router(pages_router)
    app.include_router(metrics_router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")
