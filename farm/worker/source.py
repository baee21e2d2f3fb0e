"""The job's sdist and its unpacked tree, unpacked only when something needs the files.

The cibuildwheel engine builds from the sdist file itself and a verification without `{project}`
in its test command never looks at the tree, so for them only two top-level files are read
(PKG-INFO for SOURCE_DATE_EPOCH, pyproject.toml for the declared build requirements), straight
from the archive. Everything else (the native engine, recipe commands, build-requirement
overrides, test commands using `{project}`) asks for `path` and gets the tree, unpacked once.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from farm.util.archive import Limits, extract_sdist, read_top_level


class SdistSource:
    def __init__(self, sdist: Path, dest: Path, limits: Limits) -> None:
        self.sdist, self._dest, self._limits = Path(sdist), Path(dest), limits

    @classmethod
    def unpacked(cls, sdist: Path, tree: Path) -> SdistSource:
        """An sdist whose tree is already at `tree`."""
        source = cls(sdist, tree.parent, Limits(0, 0, 0))
        source.__dict__["path"] = Path(tree)
        return source

    @cached_property
    def path(self) -> Path:
        """The unpacked tree (unpacked on first use, with the archive checks of `extract_sdist`)."""
        return extract_sdist(self.sdist, self._dest, self._limits)

    @property
    def is_unpacked(self) -> bool:
        return "path" in self.__dict__

    def top_level(self, name: str) -> bytes | None:
        """The top-level file `name`: from the tree if unpacked (as the build sees it), else from the archive."""
        if self.is_unpacked:
            file = self.path / name
            return file.read_bytes() if file.is_file() else None
        found = read_top_level(self.sdist, name)
        return found[0] if found else None

    @cached_property
    def timestamp(self) -> int:
        """SOURCE_DATE_EPOCH: the archive's own time for PKG-INFO, so rebuilds of one sdist embed the same
        times (1980-01-01 without one, the earliest a wheel's zip can hold)."""
        found = read_top_level(self.sdist, "PKG-INFO")
        return int(found[1]) if found and found[1] >= 315532800 else 315532800
