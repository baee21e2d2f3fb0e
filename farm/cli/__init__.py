"""`farm`: the command line. One parser; the commands on jobs and releases run against a `Backend`
chosen once per command line, the farm's own database or a farm's HTTP API (`--server URL`).

- `commands.py`: the parser, `main`, and submit, status, logs, cancel, yank, promote (each written
  once, over a `Backend`), recipes, images, the database;
- `requirements.py`: requirements files read as pip reads them, into one submission's items;
- `tokens.py`: token create, list, revoke (in this host's farm database);
- `backend.py`: the `Backend` protocol, the views it returns, and the local backend (this host's
  FARM_HOME and database);
- `remote.py`: the remote backend, a client of the farm's API; it never imports the database;
- `render.py`: the status table, the `--wait` loop, records;
- `processes.py`: up, api, coordinator, worker;
- `publishing.py`: init, verify, publish-to, reindex, find, show, gc (on this host's farm).

Exit codes: docs/cli.md; every one is in farm/errors.py.
"""

from __future__ import annotations

_db_ready = False


def ensure_db(*, create: bool = True) -> None:
    """Create or migrate the database once per process.

    `create=False` is for the commands that read or change what a farm already holds: where the
    farm's SQLite database does not exist they raise `NoFarm` and create nothing (no `./.farm/farm.db`
    from a `farm status` run in the wrong folder).
    """
    global _db_ready
    if _db_ready:
        return
    if not create:
        _check_farm_exists()
    from farm.db.migrate import is_current, upgrade

    if not is_current():
        upgrade()
    _db_ready = True


def _check_farm_exists() -> None:
    from pathlib import Path

    from farm.config import get_settings
    from farm.errors import NoFarm

    settings = get_settings()
    url = settings.db_url
    if not url.startswith("sqlite"):
        return  # a database server: the database is the operator's to create
    path = url.split("///", 1)[-1]
    if path and path != ":memory:" and not Path(path).is_file():
        raise NoFarm(f"no farm at {settings.home}: {path} does not exist (nothing was created). Run this where "
                     "the farm is, or give --home DIR (FARM_HOME) or --server URL; `farm init` or `farm up` "
                     "makes a farm")


from farm.cli.commands import main, parser  # noqa: E402 - after ensure_db, which the commands import

__all__ = ["ensure_db", "main", "parser"]
