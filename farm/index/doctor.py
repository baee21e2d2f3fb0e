"""Compare the index trees with the database, and repair what a crash or a hand left behind.

The database is the truth (farm/index/channels.py): a tree lists exactly the live artifacts of the
channels it serves, and holds their files with the recorded bytes. A coordinator killed between
writing a file and committing its row, a disk that filled up half-way, or a person editing the
tree leaves it otherwise. `examine` finds each difference; with `fix=True` it repairs it:

=================  =====================================================  =============================
kind               what                                                   repair
=================  =====================================================  =============================
orphan-listing     a page lists a file no artifact row knows                 page rewritten without it
stale-listing      a page lists a known file this tree must not list         page rewritten from the rows
                   (removed, another channel), or with other sha256
missing-listing    a live artifact of the tree (or an sdist it serves,       page rewritten from the rows
                   `serve_sdists`) is not on its page
missing-file       a listed file (or its metadata/provenance) is absent      placed again from storage
changed-file       a served file's bytes differ from the record (`deep`)     replaced with the stored bytes
orphan-file        a file in `files/` that no page lists and no row wants    removed
temp-file          a `.tmp` file left by an interrupted write                removed
=================  =====================================================  =============================

Files and listings younger than `grace` seconds are left alone: a publish may be writing them right
now (its row is not committed yet). Age is the inode's change time, which linking into a tree sets,
and a listing's upload time. The reconciler runs this on start and then periodically; `farm doctor`
runs it by hand and reports the same findings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact
from farm.index import channels, simple
from farm.util.hashing import sha256_file

_TEMP = re.compile(r"^\..+\.tmp$|^\.tmp-")
_SIDECARS = sorted((s for s in channels.SIDECARS if s), key=len, reverse=True)
DEFAULT_GRACE = 600.0


@dataclass(frozen=True)
class Finding:
    kind: str
    tree: str
    path: str
    detail: str
    fixed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        state = "fixed" if self.fixed else "found"
        return f"{state:5}  {self.kind:15}  {self.tree}: {self.path}: {self.detail}"


def examine(session: Session, settings: Settings, *, fix: bool = False, deep: bool = False,
            grace: float = DEFAULT_GRACE, now: float | None = None) -> list[Finding]:
    """Every difference between the trees and the database (repaired when `fix`), oldest first by tree."""
    lay = channels.ensure_trees(settings)
    now = time.time() if now is None else now
    cutoff = now - grace
    findings: list[Finding] = []
    nested = {lay.tree(t).resolve() for t in lay.trees()} - {lay.index.resolve()}
    findings += _temp_files(lay.index, "index", cutoff, fix, skip=nested)
    for t in lay.trees():
        tree = lay.tree(t)
        for sub in ("simple", "files", "keys"):
            findings += _temp_files(tree / sub, t, cutoff, fix)
        for project in sorted(_projects(session, tree)):
            findings += _project(session, settings, lay, t, project, cutoff, fix=fix, deep=deep)
        findings += _root_page(tree, t, fix, lay.index)
    storage = settings.storage
    if storage.is_dir():
        findings += _temp_files(storage, "storage", cutoff, fix)
    return findings


def _project(session: Session, settings: Settings, lay: channels.Layout, t: str, project: str, cutoff: float, *,
             fix: bool, deep: bool) -> list[Finding]:
    tree = lay.tree(t)
    by_channel, known = channels._rows(session, project)
    expected = channels.tree_rows(lay, t, by_channel)
    listed = {f.filename: f for f in simple.read_project(tree, project)}
    page = f"simple/{project}/"
    found: list[Finding] = []
    rewrite = False
    served = channels.tree_sdists(lay, t, channels._sdists(session, lay, project))  # `serve_sdists`
    for filename, entry in listed.items():
        row = expected.get(filename)
        if row is None and filename in served:
            if entry.sha256 != served[filename].sha256:
                found.append(Finding("stale-listing", t, page, f"{filename}: listed with sha256 {entry.sha256}, the "
                                     f"record of the sdist says {served[filename].sha256}", fix))
                rewrite = True
        elif row is None and filename not in known:
            if entry.upload_time is None or entry.upload_time.timestamp() < cutoff:
                found.append(Finding("orphan-listing", t, page, f"{filename}: listed, but no artifact row has it "
                                     "(a publish that never committed)", fix))
                rewrite = True
        elif row is None:
            found.append(Finding("stale-listing", t, page, f"{filename}: listed, but this tree must not list it", fix))
            rewrite = True
        elif entry.sha256 != row.artifact.sha256:
            found.append(Finding("stale-listing", t, page, f"{filename}: listed with sha256 {entry.sha256}, the "
                                 f"record says {row.artifact.sha256}", fix))
            rewrite = True
    for filename in sorted(set(expected) - set(listed)):
        found.append(Finding("missing-listing", t, page, f"{filename}: a live artifact, not on the page", fix))
        rewrite = True
    for filename in sorted(set(served) - set(listed)):
        found.append(Finding("missing-listing", t, page, f"{filename}: a served sdist, not on the page", fix))
        rewrite = True
    folder = tree / "files" / project
    for filename, row in sorted(expected.items()):
        target = folder / filename
        wanted = [target, folder / f"{filename}.metadata", *([folder / f"{filename}.provenance"] if row.signed else [])]
        missing = [p.name for p in wanted if not p.is_file()]
        if missing:
            found.append(Finding("missing-file", t, f"files/{project}/", f"{', '.join(missing)} absent", fix))
            rewrite = True
        elif deep and (digest := sha256_file(target)) != row.artifact.sha256:
            found.append(Finding("changed-file", t, f"files/{project}/{filename}",
                                 f"sha256 {digest}, the record says {row.artifact.sha256}", fix))
            if fix:
                target.unlink()  # placed again from the checked stored copy below
            rewrite = True
    if fix and rewrite:
        channels.regenerate(session, settings, project, trees=[t],
                            keep_unlisted_since=dt.datetime.fromtimestamp(cutoff, dt.UTC))
        listed = {f.filename: f for f in simple.read_project(tree, project)}
    for path in _files(folder):
        base = _base_name(path.name)
        if base in expected or base in listed:
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_ctime >= cutoff:
                continue
            found.append(Finding("orphan-file", t, f"files/{project}/{path.name}",
                                 "no page lists it and no live artifact of this tree has it", fix))
            if fix:
                path.unlink()
    if fix and folder.is_dir() and not any(folder.iterdir()):
        with contextlib.suppress(OSError):
            folder.rmdir()
    return found


def _root_page(tree: Path, t: str, fix: bool, lock_root: Path) -> list[Finding]:
    try:
        root = json.loads((tree / "simple" / "index.json").read_bytes())
        listed = {canonicalize_name(p["name"]) for p in root.get("projects", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = set()  # unreadable: written again below
    pages = set(simple.list_projects(tree))
    found = [Finding("missing-listing", t, "simple/", f"project {p}: has a page, not on the project list", fix)
             for p in sorted(pages - listed)]
    found += [Finding("stale-listing", t, "simple/", f"project {p}: on the project list, has no page", fix)
              for p in sorted(listed - pages)]
    if fix and found:
        with simple._lock(lock_root):
            simple.write_root(tree, sorted(pages))
    return found


def _projects(session: Session, tree: Path) -> set[str]:
    """Every project the database or the tree knows of (pages, file folders, the project list)."""
    names = set(session.scalars(select(Artifact.name).where(Artifact.removed_at.is_(None)).distinct()))
    for sub in ("simple", "files"):
        folder = tree / sub
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {n for n in names if canonicalize_name(n) == n}


def _files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        yield from sorted(p for p in folder.iterdir() if p.is_file() and not _TEMP.match(p.name))


def _base_name(name: str) -> str:
    for suffix in _SIDECARS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _temp_files(root: Path, where: str, cutoff: float, fix: bool, *, skip: Iterable[Path] = ()) -> list[Finding]:
    skipped = set(skip)
    found: list[Finding] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skipped]
        for name in filenames:
            if not _TEMP.match(name):
                continue
            path = here / name
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_ctime >= cutoff:
                    continue
                found.append(Finding("temp-file", where, str(path.relative_to(root)),
                                     "left by an interrupted write", fix))
                if fix:
                    path.unlink()
    return found
