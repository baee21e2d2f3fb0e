"""An exclusive lock between the processes of one host: a lock file, `flock`ed.

Used where several processes of one FARM_HOME (a worker's job slots, `farm up`'s processes, the
CLI) may do the same work at once: the index pages, SQLite migrations, a shared wheelhouse
resolution, a prepared image. Without `fcntl` (not POSIX) it does not lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def host_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made, with its folder, when missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
