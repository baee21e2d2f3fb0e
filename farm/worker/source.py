"""The job's sdist and its unpacked tree, unpacked only when something needs the files.

The cibuildwheel engine builds from the sdist file itself and a verification without `{project}`
in its test command never looks at the tree, so for them only two top-level files are read
(PKG-INFO for SOURCE_DATE_EPOCH, pyproject.toml for the declared build requirements), straight
from the archive. Everything else (the native engine, recipe commands, build-requirement
overrides, test commands using `{project}`) asks for `path` and gets the tree, unpacked once.
"""

from __future__ import annotations

import gzip
import shutil
import io
import tarfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TextIO

from farm.recipes.schema import Patch
from farm.util.archive import Limits, extract_sdist, read_top_level
from farm.worker import patches as patching

TOP_LEVEL = ("PKG-INFO", "pyproject.toml")  # the files read from the archive (one pass for both)


class SdistSource:
    def __init__(self, sdist: Path, dest: Path, limits: Limits, *, expect: tuple[str, str] | None = None) -> None:
        """`expect`: the (name, version) the sdist must be (a recipe's `source` is checked against the job's)."""
        self.sdist, self._dest, self._limits, self._expect = Path(sdist), Path(dest), limits, expect
        self.patched: list[dict[str, object]] = []  # the patches applied: name, sha256, files changed

    @classmethod
    def unpacked(cls, sdist: Path, tree: Path, limits: Limits | None = None) -> SdistSource:
        """An sdist whose tree is already at `tree`; `limits` for `fresh()`, which unpacks it again
        (none given: it cannot be unpacked again)."""
        source = cls(sdist, tree.parent, limits or Limits(0, 0, 0))
        source.__dict__["path"] = Path(tree)
        return source

    @cached_property
    def path(self) -> Path:
        """The unpacked tree (unpacked on first use, with the archive checks of `extract_sdist`)."""
        name, version = self._expect or (None, None)
        return extract_sdist(self.sdist, self._dest, self._limits, expect_name=name, expect_version=version)

    def fresh(self) -> SdistSource:
        """The same sdist (patched, if it was) unpacked anew where this one was: for a second build attempt
        that must not see what the first one left in the tree."""
        if self.is_unpacked:
            shutil.rmtree(self.path, ignore_errors=True)
        again = SdistSource(self.sdist, self._dest, self._limits, expect=self._expect)
        again.patched = list(self.patched)
        again.__dict__["timestamp"] = self.timestamp  # the original sdist's, not the repacked one's
        return again

    def apply_patches(self, patches: Sequence[Patch], log: TextIO) -> None:
        """Apply a recipe's patches to the tree, then pack the patched tree as the sdist that engines
        building from the archive (cibuildwheel) get: both see the same patched source."""
        if not patches:
            return
        tree = self.path
        for i, patch in enumerate(patches):
            assert patch.diff is not None, "the recipe loader reads each patch file into `diff`"
            label = patch.path or f"patches[{i}]"
            changed = patching.apply(patch.diff, tree)
            log.write(f"patch {label} (sha256 {patch.sha256}): {', '.join(changed)}\n")
            self.patched.append({"name": label, "sha256": patch.sha256, "files": changed})
        self.sdist = self._repack(tree)
        self.__dict__.pop("_archived", None)

    def _repack(self, tree: Path) -> Path:
        """The tree as a .tar.gz of the sdist's own name (members sorted, owners and times fixed)."""
        out = self._dest.parent / "patched" / (self.sdist.name if self.sdist.name.endswith(".tar.gz")
                                               else self.sdist.name[: -len(".zip")] + ".tar.gz")
        out.parent.mkdir(parents=True, exist_ok=True)
        mtime = self.timestamp

        def normal(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = mtime
            return info

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for path in [tree, *sorted(tree.rglob("*"))]:
                tf.add(path, arcname=str(Path(tree.name) / path.relative_to(tree)), recursive=False, filter=normal)
        with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=mtime) as gz:
            gz.write(buf.getvalue())
        return out

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
