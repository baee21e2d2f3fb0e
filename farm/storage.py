"""Where sdists, wheels, logs and provenance records live, behind one small interface.

`LocalStorage` is a folder (the embedded default, or a shared mount). Keys are relative POSIX
paths; writes are atomic (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from farm.errors import NotFound


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_file(self, key: str, dest: Path) -> Path: ...
    def read_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def local_path(self, key: str) -> Path | None:
        """A path that can be read (and, for logs, appended to) directly, when storage is local."""


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        rel = PurePosixPath(key)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"bad storage key {key!r}")
        return self.root / rel

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            # A copy, never a link: the caller's file may change later, the stored one must not.
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)

    def get_file(self, key: str, dest: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"not in storage: {key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"not in storage: {key}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


_owner = False


def own_storage() -> None:
    """This process keeps the storage (API, coordinator): local even when `server_url` is set."""
    global _owner
    _owner = True


def get_storage() -> Storage:
    """Local storage; over the farm's API (`HttpStorage`) when `server_url` is set and `storage_root` is not."""
    from farm.config import get_settings

    settings = get_settings()
    if settings.server_url and settings.storage_root is None and not _owner:
        from farm.storage_http import HttpStorage

        return HttpStorage.shared(settings.server_url, settings.token)
    return LocalStorage(settings.storage)


def sdist_key(sha256: str, filename: str) -> str:
    return f"sdists/{sha256[:2]}/{sha256}/{filename}"


def wheel_key(job_id: int, filename: str) -> str:
    return f"jobs/{job_id}/wheels/{filename}"


def log_key(job_id: int, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}.log"
