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

TOP_LEVEL = ("PKG-INFO", "pyproject.toml")  # the files read from the archive (one pass for both)


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

    @cached_property
    def _archived(self) -> dict[str, tuple[bytes, float]]:
        return read_top_level(self.sdist, *TOP_LEVEL)

    def top_level(self, name: str) -> bytes | None:
        """PKG-INFO or pyproject.toml: from the tree if unpacked (as the build sees it), else from the archive."""
        if name not in TOP_LEVEL:
            raise ValueError(f"only {', '.join(TOP_LEVEL)} are read from the archive")
        if self.is_unpacked:
            file = self.path / name
            return file.read_bytes() if file.is_file() else None
        found = self._archived.get(name)
        return found[0] if found else None

    @cached_property
    def timestamp(self) -> int:
        """SOURCE_DATE_EPOCH: the archive's own time for PKG-INFO, so rebuilds of one sdist embed the same
        times (1980-01-01 without one, the earliest a wheel's zip can hold)."""
        found = self._archived.get("PKG-INFO")
        return int(found[1]) if found and found[1] >= 315532800 else 315532800
