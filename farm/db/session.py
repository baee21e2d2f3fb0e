"""Engines and sessions. SQLite gets WAL and a busy timeout so API, coordinator and CLI share it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from farm.config import get_settings

if os.environ.get("FARM_FORBID_DB"):
    # Set for processes that must never open the database (remote workers, and the test proving it).
    raise ImportError("farm.db.session imported although FARM_FORBID_DB is set: this process must not use the database")


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def begin_write(session: Session) -> None:
    """Start the database transaction now, before a SAVEPOINT. pysqlite (Python < 3.12) begins a
    transaction only at the first INSERT/UPDATE/DELETE, so a SAVEPOINT before any of them would be the
    outermost transaction and its RELEASE would commit what follows it at once, out of the session's
    control. On SQLite this takes the write lock (BEGIN IMMEDIATE) unless a transaction is open;
    elsewhere it does nothing. (Not done for every session: a deferred BEGIN before each transaction
    would make read-then-write transactions fail at once with SQLITE_BUSY whenever another process
    wrote in between, where pysqlite's late BEGIN waits on the busy timeout.)"""
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        return
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        dbapi.execute("BEGIN IMMEDIATE")


def get_engine() -> Engine:
    return engine_for(get_settings().db_url)


_AFTER_COMMIT = "farm.after_commit"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once `session`'s transaction has committed (warehouse sends its tasks so).

    Actions run in the order they were added, after the commit and once the session is closed;
    a rollback drops them unrun. Only `session_scope` sessions run them, so any other refuses."""
    actions = session.info.get(_AFTER_COMMIT)
    if actions is None:
        raise RuntimeError("this session runs nothing after its commit: open it with farm.db.session.session_scope")
    actions.append(action)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error; then what `after_commit` queued
    runs (build messages: farm.coordinator.dispatch.send_after_commit), on success only."""
    session = sessionmaker(get_engine(), expire_on_commit=False)()
    session.info[_AFTER_COMMIT] = []
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        actions = session.info.pop(_AFTER_COMMIT)
        session.close()
    for action in actions:
        action()
