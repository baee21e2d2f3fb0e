"""Backup and restore of a farm: its database, its key, its configuration and its storage.

`backup(settings, dest)` writes one tar file::

    manifest.json            format, farm version, time, database kind, and the sha256 of every member
    database.sqlite          an online copy (SQLite's backup API) of the embedded database, or
    database.pgdump          `pg_dump --format=custom` of a PostgreSQL database
    home/farm.toml           the configuration (tokens are stored hashed), when present
    home/admin.token         the local CLI's admin token, when present
    home/keys/...            the signing key: whoever holds the backup can sign as the farm (mode 0600)
    storage/...              sdists, wheels, logs and provenance records, as stored

The database is copied first and storage after it: storage objects are written before the rows that
name them and never change, so every row of the copy finds its objects. The index is not copied:
it is written again from the database and storage on restore (`farm.index.doctor`), so a backup
holds each wheel once, and the restored index is checked against the records as it is written.

`restore(archive, settings)` unpacks into an empty FARM_HOME (and empty storage), loads the
database (SQLite: the file; PostgreSQL: `pg_restore` into the configured database, which must
exist and be empty), checks every member against the manifest, and rewrites the index.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from farm import __version__
from farm.config import Settings
from farm.errors import BackupError, ConfigError
from farm.util.hashing import sha256_file

FORMAT = 1
HOME_FILES = ("farm.toml", "admin.token")
HOME_DIRS = ("keys",)


def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of the farm of `settings` to `dest` (a tar file); its manifest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, str] = {}
    kind = _db_kind(settings.db_url)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar, tempfile.TemporaryDirectory() as work:
            dump = Path(work) / ("database.sqlite" if kind == "sqlite" else "database.pgdump")
            _dump_database(settings.db_url, dump)
            members[dump.name] = _add(tar, dump, dump.name)
            for name in HOME_FILES:
                if (settings.home / name).is_file():
                    members[f"home/{name}"] = _add(tar, settings.home / name, f"home/{name}")
            for sub in HOME_DIRS:
                for path in _files(settings.home / sub):
                    arc = f"home/{path.relative_to(settings.home).as_posix()}"
                    members[arc] = _add(tar, path, arc)
            for path in _files(settings.storage):
                arc = f"storage/{path.relative_to(settings.storage).as_posix()}"
                members[arc] = _add(tar, path, arc)
            manifest = {"format": FORMAT, "farm": __version__, "created": dt.datetime.now(dt.UTC).isoformat(),
                        "database": kind, "members": members}
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mode, info.mtime = len(data), 0o600, int(dt.datetime.now().timestamp())
            tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o600)  # it holds the signing key
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def restore(archive: Path, settings: Settings) -> dict[str, Any]:
    """Restore `archive` into the (empty) farm of `settings`, then rewrite its index; the manifest."""
    with tarfile.open(archive, "r") as tar:
        try:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError) as exc:
            raise BackupError(f"{archive}: not a farm backup (no readable manifest.json: {exc})") from None
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive}: backup format {manifest.get('format')!r}, this farm reads {FORMAT}")
        kind = _db_kind(settings.db_url)
        if manifest["database"] != kind:
            raise BackupError(f"{archive} holds a {manifest['database']} database, the farm is configured for {kind} "
                              f"({make_url(settings.db_url).render_as_string(hide_password=True)})")
        _refuse_non_empty(settings)
        members = [m for m in tar.getmembers() if m.name != "manifest.json"]
        for member in members:  # everything checked before anything is written
            expected = manifest["members"].get(member.name)
            if expected is None or not member.isfile():
                raise BackupError(f"{archive}: unexpected member {member.name!r}")
            _target(member.name, settings, Path("."))
            digest = _digest(tar, member)
            if digest != expected:
                raise BackupError(f"{archive}: {member.name} is damaged (sha256 {digest}, the manifest says {expected})")
        missing = set(manifest["members"]) - {m.name for m in members}
        if missing:
            raise BackupError(f"{archive}: members missing: {', '.join(sorted(missing))}")
        with tempfile.TemporaryDirectory() as work:
            for member in members:
                target = _target(member.name, settings, Path(work))
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.chmod(target, 0o600)
            dump = Path(work) / ("database.sqlite" if kind == "sqlite" else "database.pgdump")
            _load_database(settings.db_url, dump)
    from farm.db.migrate import is_current, upgrade

    if not is_current():  # a backup of an older farm: its schema is brought up to this one's
        upgrade()
    _rewrite_index(settings)
    return manifest


# Database ------------------------------------------------------------------------------------------


def _db_kind(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"backup: database {backend!r} is not supported (SQLite or PostgreSQL)")
    return backend


def _libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _dump_database(url: str, dest: Path) -> None:
    if _db_kind(url) == "sqlite":
        path = make_url(url).database
        if not path or not Path(path).is_file():
            raise BackupError(f"no database at {path}: nothing to back up (is this the farm's home?)")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(dest)) as out:
            src.backup(out)  # a consistent copy while the farm keeps running
        return
    _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(dest), _libpq_url(url)],
         "pg_dump")


def _load_database(url: str, dump: Path) -> None:
    if _db_kind(url) == "sqlite":
        path = Path(make_url(url).database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dump, path)
        os.chmod(path, 0o600)
        return
    _run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", _libpq_url(url), str(dump)],
         "pg_restore")


def _run(argv: list[str], what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise BackupError(f"{what} is needed for a PostgreSQL database (Debian: postgresql-client)")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _refuse_non_empty(settings: Settings) -> None:
    problems = []
    if _db_kind(settings.db_url) == "sqlite":
        path = Path(make_url(settings.db_url).database or "")
        if path.is_file() and path.stat().st_size > 0:
            problems.append(f"a database exists at {path}")
    else:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(settings.db_url)
        try:
            if inspect(engine).get_table_names():
                problems.append("the configured PostgreSQL database has tables")
        finally:
            engine.dispose()
    if (settings.home / "keys").is_dir() and any((settings.home / "keys").iterdir()):
        problems.append(f"{settings.home / 'keys'} holds a key")
    if any(_files(settings.storage)):
        problems.append(f"{settings.storage} is not empty")
    if problems:
        raise BackupError("restore needs an empty farm: " + "; ".join(problems))


# Files ---------------------------------------------------------------------------------------------


def _files(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if not (name.startswith(".tmp-") or (name.startswith(".") and name.endswith(".tmp"))):
                    yield Path(dirpath) / name


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> str:
    digest = sha256_file(path)
    info = tar.gettarinfo(str(path), arcname=arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(path, "rb") as f:
        tar.addfile(info, f)
    return digest


def _digest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    src = tar.extractfile(member)
    assert src is not None
    digest = hashlib.sha256()
    while block := src.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def _target(name: str, settings: Settings, work: Path) -> Path:
    parts = Path(name).parts
    if not parts or ".." in parts or Path(name).is_absolute():
        raise BackupError(f"refusing member {name!r}")
    if parts[0] == "home" and len(parts) > 1 and (parts[1] in HOME_FILES or parts[1] in HOME_DIRS):
        return settings.home.joinpath(*parts[1:])
    if parts[0] == "storage" and len(parts) > 1:
        return settings.storage.joinpath(*parts[1:])
    if name in ("database.sqlite", "database.pgdump"):
        return work / name
    raise BackupError(f"refusing member {name!r}")


def _rewrite_index(settings: Settings) -> None:
    from sqlalchemy import select

    from farm.db.models import Artifact
    from farm.db.session import session_scope
    from farm.index import channels

    channels.ensure_trees(settings)
    with session_scope() as session:
        for name in session.scalars(select(Artifact.name).where(Artifact.removed_at.is_(None)).distinct()):
            channels.regenerate(session, settings, name)
