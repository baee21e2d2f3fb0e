"""Where sdists, wheels, logs and provenance records live, behind one small interface.

`LocalStorage` is a folder (the embedded default, or a shared mount). Keys are relative POSIX
paths; writes are atomic (temp file, then linked into place), so a reader never sees half a file.

Objects are write-once: a key that exists is never replaced by `put_file`/`put_bytes`. Writing
the same bytes again is a no-op (a retried upload); other bytes raise `StorageConflict`. The only
objects rewritten are the coordinator's stop markers (`jobs/<id>/stop.json`, farm/liveness.py),
and a live attempt's own log, which the API replaces on purpose (`replace=True`, see
farm/api/routes_workers.py). A job's log on local storage grows by appending (`local_path`).

What a worker writes for one attempt of a job (`result_key`): `jobs/<id>/attempt-<n>.log`, and
below `jobs/<id>/attempt-<n>/`: `wheels/<file>.whl` with `<file>.whl.provenance.json` and
`staged/<file>.whl` (`wheel_key`/`staged_key`), where no other attempt of the job can write.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Protocol

from farm.errors import NotFound, StorageConflict

_RESULT = re.compile(r"^jobs/(?P<job>[0-9]+)/(?:attempt-(?P<log>[0-9]+)\.log|attempt-(?P<attempt>[0-9]+)/"
                     r"(?:staged/[^/]+\.whl|wheels/[^/]+\.whl(?:\.provenance\.json)?))$")
_REWRITABLE = re.compile(r"^jobs/[0-9]+/stop\.json$")


class ResultKey(NamedTuple):
    """Whose result a storage key is."""

    job_id: int
    attempt: int
    log: bool  # the attempt's log


def result_key(key: str) -> ResultKey | None:
    """The job (and attempt) whose result `key` is; None for any key that is not a worker's result."""
    m = _RESULT.match(key)
    if m is None:
        return None
    return ResultKey(int(m.group("job")), int(m.group("log") or m.group("attempt")), m.group("log") is not None)


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

    def put_file(self, key: str, path: Path, *, replace: bool = False) -> None:
        # A copy, never a link to the caller's file: it may change later, the stored one must not.
        self._store(key, lambda tmp: shutil.copyfile(path, tmp), replace=replace)

    def put_bytes(self, key: str, data: bytes, *, replace: bool = False) -> None:
        self._store(key, lambda tmp: Path(tmp).write_bytes(data), replace=replace)

    def _store(self, key: str, fill, *, replace: bool) -> None:  # type: ignore[no-untyped-def]
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            fill(tmp)
            if replace or _REWRITABLE.match(key):
                os.replace(tmp, dest)
                return
            try:
                os.link(tmp, dest)  # never replaces: fails when the key exists
            except FileExistsError:
                if not filecmp.cmp(tmp, dest, shallow=False):
                    raise StorageConflict(key) from None
        finally:
            Path(tmp).unlink(missing_ok=True)

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


def get_storage(*, capability: str = "") -> Storage:
    """Local storage; over the farm's API (`HttpStorage`) when `server_url` is set and `storage_root` is not.

    `capability`: a job attempt's storage capability (`JobSpec.storage_capability`), shown with every
    upload to the API; local storage needs none.
    """
    from farm.config import get_settings

    settings = get_settings()
    if settings.server_url and settings.storage_root is None and not _owner:
        from farm.storage_http import HttpStorage

        shared = HttpStorage.shared(settings.server_url, settings.token)
        return shared.with_capability(capability) if capability else shared
    return LocalStorage(settings.storage)


def sdist_key(sha256: str, filename: str) -> str:
    return f"sdists/{sha256[:2]}/{sha256}/{filename}"


def wheel_key(job_id: int, filename: str, *, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}/wheels/{filename}"


def staged_key(job_id: int, filename: str, *, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}/staged/{filename}"


def log_key(job_id: int, attempt: int) -> str:
    return f"jobs/{job_id}/attempt-{attempt}.log"
