"""Bring the database schema to the newest migration (`farm db upgrade`, and at every start)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from farm.db.session import get_engine
from farm.util.locks import host_lock

_HERE = Path(__file__).resolve().parent / "migrations"


def alembic_config():  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    return cfg


def upgrade(engine: Engine | None = None) -> None:
    """Migrate to the head revision; several processes starting at once migrate one after another."""
    engine = engine or get_engine()
    with _exclusive(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4774)")  # held until this transaction ends
        from alembic import command

        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """For SQLite, a lock file beside the database (its own locks do not cover DDL races)."""
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:":
        yield
        return
    with host_lock(f"{db}.migrate-lock"):
        yield


def head_revision() -> str:
    """The newest migration's id; revisions are numbered `NNNN_*.py` in order."""
    return max(p.name[:4] for p in (_HERE / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def is_current(engine: Engine | None = None) -> bool:
    """Cheap check for every command: one query, no Alembic import."""
    engine = engine or get_engine()
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    except DBAPIError:  # no version table yet: not current
        return False
    return row is not None and row[0] == head_revision()
