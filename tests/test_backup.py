"""Backup and restore (farm/backup.py), for the operator's runbook (docs/operating.md).

A farm with published, signed wheels in two channels is backed up while it is up, and restored
into an empty home: the restored index lists the same files with the same bytes, their signed
provenance still verifies with the restored key, and a new wheel publishes on top. Both database
kinds: the embedded SQLite file, and a real PostgreSQL database (pg_dump / pg_restore).

Bad inputs covered: a damaged archive (refused before anything is written), a file that is not a
backup, a restore over a farm that is not empty, and a backup of the wrong database kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from farm import backup
from farm.cli import main
from farm.config import get_settings, reset_settings
from farm.errors import BackupError
from farm.index import simple
from tests.helpers.servers import drop_database, pg_database
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel


def _farm(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


def _served(index: Path) -> dict[str, str]:
    """Every served wheel in every tree: relative path -> sha256."""
    return {p.relative_to(index).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in index.rglob("*.whl") if not p.name.startswith(".")}


def _switch_home(monkeypatch: pytest.MonkeyPatch, home: Path, db_url: str | None = None) -> None:
    import farm.cli
    from farm.coordinator.app import reset_app

    monkeypatch.setenv("FARM_HOME", str(home))
    if db_url:
        monkeypatch.setenv("FARM_DATABASE_URL", db_url)
    reset_settings()
    reset_app()
    farm.cli._db_ready = False


def _populate(tmp_path: Path) -> None:
    settings = get_settings()
    publish_wheel(settings, make_wheel(tmp_path / "w", "bkone", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(tmp_path / "w", "bktwo", "2.0", tag="cp311-cp311-manylinux_2_31_x86_64"),
                  version="2.0")
    code, out = _farm("promote", "bkone==1.0", "--to", "stable")
    assert code == 0, out


def _roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_db: str | None, second_db: str | None) -> None:
    _switch_home(monkeypatch, tmp_path / "a", first_db)
    assert _farm("init")[0] == 0
    _populate(tmp_path)
    before = _served(get_settings().index)
    assert len(before) >= 4  # staging, dev (two each), stable, prod
    archive = tmp_path / "farm-backup.tar"
    code, out = _farm("backup", str(archive))
    assert code == 0 and "holds the signing key" in out, out
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert archive.stat().st_mode & 0o077 == 0  # it holds the signing key
    assert "home/keys/farm.key" in manifest["members"]
    assert not any(m.startswith("index/") for m in manifest["members"])  # written again on restore

    _switch_home(monkeypatch, tmp_path / "b", second_db)
    code, out = _farm("restore", str(archive))
    assert code == 0, out
    assert _served(get_settings().index) == before
    for requirement in ("bkone==1.0", "bktwo==2.0"):
        code, out = _farm("verify", requirement)
        assert code == 0, out
    assert simple.list_projects(get_settings().index / "stable") == ["bkone"]
    publish_wheel(get_settings(), make_wheel(tmp_path / "w2", "bkone", "1.1"), version="1.1")
    assert {f.filename for f in simple.read_project(get_settings().index, "bkone")} == {
        "bkone-1.0-py3-none-any.whl", "bkone-1.1-py3-none-any.whl"}

    code, out = _farm("restore", str(archive))
    assert code == BackupError.exit_code and "restore needs an empty farm" in out, out


def test_sqlite_farm_backed_up_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _roundtrip(tmp_path, monkeypatch, None, None)


@pytest.mark.slow
def test_postgresql_farm_backed_up_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = []
    try:
        first, url1 = pg_database("farmbk")
        second, url2 = pg_database("farmbk")
        names = [first, second]
        _roundtrip(tmp_path, monkeypatch, url1, url2)
    finally:
        from farm.db.session import engine_for

        engine_for.cache_clear()
        for name in names:
            drop_database(name)


def test_damaged_or_foreign_archives_are_refused_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _switch_home(monkeypatch, tmp_path / "a")
    assert _farm("init")[0] == 0
    publish_wheel(get_settings(), make_wheel(tmp_path / "w", "bkbad", "1.0"), version="1.0")
    good = tmp_path / "good.tar"
    backup.backup(get_settings(), good)

    damaged = tmp_path / "damaged.tar"
    with tarfile.open(good) as src, tarfile.open(damaged, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith("storage/") and member.name.endswith(".whl"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            out.addfile(member, io.BytesIO(data))
    not_backup = tmp_path / "other.tar"
    with tarfile.open(not_backup, "w") as out:
        out.add(good, arcname="something")

    _switch_home(monkeypatch, tmp_path / "b")
    with pytest.raises(BackupError, match=r"storage/.*\.whl is damaged"):
        backup.restore(damaged, get_settings())
    with pytest.raises(BackupError, match="not a farm backup"):
        backup.restore(not_backup, get_settings())
    home = tmp_path / "b"
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))  # nothing written
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    reset_settings()
    with pytest.raises(BackupError, match="holds a sqlite database, the farm is configured for postgresql"):
        backup.restore(good, get_settings())
