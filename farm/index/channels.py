"""Channels and virtual indexes: which published wheels each index tree lists.

Every tree is a complete static index written by `farm.index.simple` (`simple/`, `files/`, `keys/`)::

    index/                 the first channel (default "staging"): served at /simple/ and /staging/simple/
    index/<channel>/       each other channel (default "stable"): /stable/simple/
    index/<virtual>/       each virtual index: its channels merged in order, the first listing a file
                           name wins (devpi inheritance); default prod = [stable], dev = [staging, stable]
    index/trees.json       tree names -> folders (the server reads it; people and nginx can too)

The first channel stays at the top of the index because every build lands there and the workers
verify against it (`Settings.verify_index_url`); its old URLs keep working. Files in the other trees
are hard links to the same stored wheel (copies across file systems).

The database is the truth: a `ChannelEntry(artifact, channel)` row puts a wheel into a channel.
`regenerate` rewrites one project's pages in the trees from it (yank, promote, gc); publishing adds
to the first channel incrementally: `on_publish` records and places, `list_new` lists after the commit,
at the cost of the new files only (not of the project's size). Page entries whose file name the database does
not know yet (a publish whose transaction is still open) are kept, so a regeneration racing a
publish never drops the new file; files are never deleted here, only by `farm gc`.

With `serve_sdists` (off by default), the trees of the channels it names (and the virtual indexes over
them) also list the sdist each listed wheel was built from (`Source`: its sha256, size, Requires-Python,
and the time the farm received it as the upload time), placed from storage with its digest checked; an
uploaded wheel has no sdist. An sdist that cannot be placed is left off the page, never the wheels.

Every copy into a tree is checked first: the file copied (the stored wheel, else a copy in another
tree) must have the sha256 the database records for it, or the copy is refused (`DigestMismatch`):
promotion, page regeneration and upload targets never spread bytes the farm did not publish.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, ChannelEntry, Job, Provenance, Source, utcnow
from farm.errors import ConfigError, DigestMismatch, SigningError
from farm.index import simple
from farm.index.simple import IndexFile
from farm.provenance import keys
from farm.provenance.sign import INTOTO_SUFFIX, document_bytes, intoto_bundle
from farm.util.hashing import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

TREES_JSON = "trees.json"
SIDECARS = ("", ".metadata", ".provenance", ".provenance.json", INTOTO_SUFFIX)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_RESERVED = {"simple", "files", "keys", "api", "health", "docs", "openapi.json", "redoc", "ui", "metrics"}


@dataclass(frozen=True)
class Layout:
    index: Path
    channels: tuple[str, ...]
    virtual: dict[str, tuple[str, ...]] = field(hash=False)
    base_url: str  # where the index is served: `public_url`, else http://api_host:api_port/ (for people to read)
    public_url: str = ""  # `public_url` (with a slash at the end), "" when it is not configured
    sdists: tuple[str, ...] = ()  # `serve_sdists`: the channels whose trees list the sdists wheels were built from

    @property
    def first(self) -> str:
        return self.channels[0]

    def trees(self) -> list[str]:
        return [*self.channels, *self.virtual]

    def tree(self, name: str) -> Path:
        return self.index if name == self.first else self.index / name

    def prefix(self, name: str) -> str:
        """The tree's URL path below the index's base URL ("" for the first channel)."""
        return "" if name == self.first else f"{name}/"

    def containing(self, channel: str) -> list[str]:
        """The trees that list `channel`'s wheels: itself and the virtual indexes that include it."""
        return [channel, *(v for v, members in self.virtual.items() if channel in members)]

    def members(self, tree: str) -> tuple[str, ...]:
        return (tree,) if tree in self.channels else self.virtual[tree]

    def sdist_members(self, tree: str) -> tuple[str, ...]:
        """The channels of `tree` whose wheels' sdists it lists (`serve_sdists`)."""
        return tuple(c for c in self.members(tree) if c in self.sdists)

    def provenance_url(self, tree: str, project: str, filename: str) -> str:
        """The link a page of `tree` writes to a file's provenance: absolute below `public_url`; without
        one, below a placeholder origin that the farm's server replaces with each request's own
        (`simple.absolute_provenance`). No command that writes a page guesses the host and port the
        index is served on: `farm yank` on the command line knows neither."""
        if self.public_url:
            return f"{self.public_url}{self.prefix(tree)}files/{project}/{quote(filename)}.provenance"
        return simple.unserved_provenance_url(project, filename)


def layout(settings: Settings) -> Layout:
    """The channel layout of `settings`, checked (a ConfigError names every problem)."""
    problems: list[str] = []
    channels = tuple(settings.channels)
    if not channels:
        problems.append("channels: at least one channel is needed")
    names = [*channels, *settings.virtual_indexes]
    for n in names:
        if not _NAME.fullmatch(n) or n in _RESERVED:
            problems.append(f"{n!r}: not usable as a channel or index name (lowercase letters, digits, . _ -; "
                            f"not {', '.join(sorted(_RESERVED))})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"names used twice (channels and virtual indexes share one namespace): {dupes}")
    for v, members in settings.virtual_indexes.items():
        unknown = [m for m in members if m not in channels]
        if unknown or not members:
            problems.append(f"virtual_indexes.{v}: {unknown or 'no channels'} are not channels {list(channels)}")
    for ch in settings.channel_requirements:
        if ch not in channels:
            problems.append(f"channel_requirements.{ch}: not a channel {list(channels)}")
    for ch in settings.serve_sdists:
        if ch not in channels:
            problems.append(f"serve_sdists: {ch!r} is not a channel {list(channels)}")
    for t, target in settings.upload_targets.items():
        if target.channel is not None and target.channel not in channels:
            problems.append(f"upload_targets.{t}.channel: {target.channel!r} is not a channel {list(channels)}")
    if problems:
        raise ConfigError("channel configuration:\n  " + "\n  ".join(problems))
    public = settings.public_url.strip()
    public = public if not public or public.endswith("/") else public + "/"
    return Layout(index=settings.index, channels=channels,
                  virtual={k: tuple(v) for k, v in settings.virtual_indexes.items()},
                  base_url=public or f"http://{settings.api_host}:{settings.api_port}/", public_url=public,
                  sdists=tuple(settings.serve_sdists))


def provenance_url(settings: Settings, project: str, filename: str) -> str:
    """The provenance URL of a file in the first channel (the top-level tree)."""
    lay = layout(settings)
    return lay.provenance_url(lay.first, project, filename)


def ensure_trees(settings: Settings) -> Layout:
    """Write `trees.json`, an (empty) project list and the public key into every tree that lacks them."""
    lay = layout(settings)
    doc = {"default": lay.first, "channels": list(lay.channels), "virtual": {k: list(v) for k, v in lay.virtual.items()},
           "trees": {t: (lay.prefix(t).rstrip("/") or ".") for t in lay.trees()}}
    data = json.dumps(doc, indent=1).encode() + b"\n"
    path = lay.index / TREES_JSON
    lay.index.mkdir(parents=True, exist_ok=True)
    try:
        same = path.read_bytes() == data
    except FileNotFoundError:
        same = False
    if not same:
        simple._atomic_write(path, data)
    try:
        public = keys.farm_public_key(settings.home)
    except SigningError:
        public = None
    for t in lay.trees():
        tree = lay.tree(t)
        if not (tree / "simple" / "index.json").is_file():
            with simple._lock(lay.index):
                if not (tree / "simple" / "index.json").is_file():
                    simple.write_root(tree, simple.list_projects(tree))
        if public is not None and not (tree / "keys" / keys.PUB_FILE).is_file():
            keys.publish_public_key(public, tree)
    return lay


# Publishing into the first channel ---------------------------------------------------------------


def on_publish(session: Session, settings: Settings, art: Artifact, wheel: Path, *, sha256: str | None = None) -> None:
    """`art`'s files were just placed in the top-level tree: record it in the first channel, and place
    its files in the virtual indexes that list that channel (unless an earlier channel of one shadows
    its name). No page is written here: the publisher lists it from the rows once they are committed
    (`regenerate`, farm/coordinator/publish.py)."""
    lay = ensure_trees(settings)
    # No other live artifact holds this file name (farm/coordinator/publish.py, the unique filename_key).
    session.add(ChannelEntry(artifact=art, channel=lay.first, added_by="publish"))
    session.flush()
    src = lay.tree(lay.first) / "files" / art.name
    for v in lay.containing(lay.first)[1:]:
        earlier = lay.virtual[v][: lay.virtual[v].index(lay.first)]
        if earlier and session.scalar(select(ChannelEntry.id).join(Artifact).where(
                ChannelEntry.channel.in_(earlier), Artifact.filename == art.filename).limit(1)):
            continue
        tree = lay.tree(v)
        _link_sidecars(src, tree / "files" / art.name, art.filename)
        simple.add_file(tree, art.name, wheel, provenance_url=lay.provenance_url(v, art.name, art.filename),
                        sha256=sha256)


# Regeneration from the database --------------------------------------------------------------------


@dataclass
class _Row:
    artifact: Artifact
    channel: str
    added_at: Any
    signed: bool


def _rows(session: Session, project: str) -> tuple[dict[str, dict[str, _Row]], set[str]]:
    """Per channel the live artifacts of `project` by file name (newest entry wins), and every file name
    the database knows for the project (removed ones included)."""
    q = (select(Artifact, ChannelEntry.channel, ChannelEntry.added_at, Provenance.keyid)
         .join(ChannelEntry, ChannelEntry.artifact_id == Artifact.id)
         .outerjoin(Provenance, Provenance.artifact_id == Artifact.id)
         .where(Artifact.name == project, Artifact.removed_at.is_(None))
         .order_by(ChannelEntry.added_at, Artifact.id))
    by_channel: dict[str, dict[str, _Row]] = {}
    for art, channel, added_at, keyid in session.execute(q):
        by_channel.setdefault(channel, {})[art.filename] = _Row(art, channel, added_at, keyid is not None)
    known = set(session.scalars(select(Artifact.filename).where(Artifact.name == project)))
    known |= set(session.scalars(select(Source.filename).where(Source.name == project)))
    return by_channel, known


# Sdists served beside the wheels (`serve_sdists`) ------------------------------------------------------


def _sdists(session: Session, lay: Layout, project: str) -> dict[str, dict[str, Source]]:
    """Per channel of `serve_sdists`, the sdists (by file name) the farm built its live artifacts of
    `project` in that channel from. Empty when no channel serves sdists (then nothing is queried)."""
    if not lay.sdists:
        return {}
    q = (select(Source, ChannelEntry.channel).distinct()
         .join(Job, Job.source_id == Source.id)
         .join(Artifact, Artifact.job_id == Job.id)
         .join(ChannelEntry, ChannelEntry.artifact_id == Artifact.id)
         .where(Artifact.name == project, Artifact.removed_at.is_(None), ChannelEntry.channel.in_(lay.sdists)))
    found: dict[str, dict[str, Source]] = {}
    for src, channel in session.execute(q):
        found.setdefault(channel, {})[src.filename] = src
    return found


def tree_sdists(lay: Layout, tree: str, sdists: dict[str, dict[str, Source]]) -> dict[str, Source]:
    merged: dict[str, Source] = {}
    for ch in lay.sdist_members(tree):
        for filename, src in sdists.get(ch, {}).items():
            merged.setdefault(filename, src)
    return merged


def sdist_entry(src: Source) -> IndexFile:
    """The page entry of a served sdist: its sha256, size, Requires-Python and the time the farm received it."""
    return IndexFile(filename=src.filename, sha256=src.sha256, size=src.size, requires_python=src.requires_python,
                     upload_time=src.created_at)


def place_sdist(tree: Path, project: str, src: Source) -> None:
    """Put the stored sdist into `tree/files/<project>/`, its bytes checked against the record first."""
    from farm.storage import get_storage

    target = tree / "files" / project / src.filename
    if target.is_file() and target.stat().st_size == src.size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    storage = get_storage()
    local = storage.local_path(src.storage_key)
    if local is None or not local.is_file():
        local = storage.get_file(src.storage_key, target.with_name(f".{src.filename}.fetch.tmp"))
    digest = sha256_file(local)
    if digest != src.sha256:
        raise DigestMismatch(f"{src.filename}: refusing to serve it: {local} has sha256 {digest}, but the farm "
                             f"recorded {src.sha256} when it received it")
    simple._place(local, target)
    if local.name.endswith(".fetch.tmp"):
        local.unlink(missing_ok=True)


def _placed_sdists(tree: Path, project: str, sources: Iterable[Source]) -> list[Source]:
    """The sdists of `sources` placed in `tree`; one that cannot be (not in storage, other bytes than
    recorded) is left off the page with a warning, and the wheels are listed all the same."""
    placed = []
    for src in sources:
        try:
            place_sdist(tree, project, src)
        except (DigestMismatch, FileNotFoundError, OSError) as exc:
            log.warning("%s: sdist not served: %s", src.filename, exc)
            continue
        placed.append(src)
    return placed


def tree_rows(lay: Layout, tree: str, by_channel: dict[str, dict[str, _Row]]) -> dict[str, _Row]:
    merged: dict[str, _Row] = {}
    for ch in lay.members(tree):
        for filename, row in by_channel.get(ch, {}).items():
            merged.setdefault(filename, row)
    return merged


def regenerate(session: Session, settings: Settings, project: str, trees: Iterable[str] | None = None, *,
               keep_unlisted_since: dt.datetime | None = None) -> None:
    """Rewrite `project`'s pages in `trees` (default: all) from the database, placing missing files.

    Page entries the database does not know are kept (a publish in flight), or with `keep_unlisted_since`
    only those uploaded since then (farm/index/doctor.py drops what a crashed publish left)."""
    lay = ensure_trees(settings)
    name = canonicalize_name(project)
    by_channel, known = _rows(session, name)
    sdists = _sdists(session, lay, name)
    with simple._lock(lay.index):
        for t in trees if trees is not None else lay.trees():
            _rewrite(session, lay, t, name, by_channel, known, sdists, keep_unlisted_since)


def _rewrite(session: Session, lay: Layout, t: str, name: str, by_channel: dict[str, dict[str, _Row]],
             known: set[str], sdists: dict[str, dict[str, Source]],
             keep_unlisted_since: dt.datetime | None = None) -> None:
    """`regenerate` of one tree, under the index lock."""
    tree = lay.tree(t)
    rows = tree_rows(lay, t, by_channel)
    entries = [_entry(session, lay, t, name, row) for row in rows.values()]
    inflight = [f for f in simple.read_project(tree, name) if f.filename not in known and (
        keep_unlisted_since is None or (f.upload_time is not None and f.upload_time >= keep_unlisted_since))]
    for row in rows.values():
        _place(session, lay, tree, row)
    served = _placed_sdists(tree, name, tree_sdists(lay, t, sdists).values())
    files = [*entries, *(sdist_entry(src) for src in served), *inflight]
    listed = name in simple.list_projects(tree)
    if files:
        simple.write_project(tree, name, files)
        if not listed:
            simple.write_root(tree, simple.list_projects(tree))
    elif listed:
        shutil.rmtree(tree / "simple" / name, ignore_errors=True)
        simple.write_root(tree, simple.list_projects(tree))


def list_new(session: Session, settings: Settings, project: str) -> None:
    """After a publish or an upload committed: add to `project`'s pages, in every tree, the live files
    the database lists there and the page does not yet. The cost is that of the new files, not of the
    project: the page's current entries are kept as they are (parsed once, `simple.read_project`) and
    only the new ones are read from the database, placed and rendered.

    A page that lists a file the database knows but no longer lists in that tree (removed, or taken
    out of the channel, by something that has not rewritten the page yet) is rewritten whole
    (`regenerate`), so this never keeps a stale entry; entries the database does not know (a publish
    in flight) are kept, as `regenerate` keeps them."""
    lay = ensure_trees(settings)
    name = canonicalize_name(project)
    q = (select(Artifact.id, Artifact.filename, Artifact.removed_at, ChannelEntry.channel)
         .outerjoin(ChannelEntry, ChannelEntry.artifact_id == Artifact.id)
         .where(Artifact.name == name))
    live: dict[str, dict[str, int]] = {}  # channel -> file name -> artifact id
    known: set[str] = set()
    for art_id, filename, removed_at, channel in session.execute(q):
        known.add(filename)
        if removed_at is None and channel is not None:
            live.setdefault(channel, {})[filename] = art_id
    sdists = _sdists(session, lay, name)
    known |= set(session.scalars(select(Source.filename).where(Source.name == name)))
    with simple._lock(lay.index):
        for t in lay.trees():
            wanted: dict[str, tuple[str, int]] = {}
            for ch in lay.members(t):
                for filename, art_id in live.get(ch, {}).items():
                    wanted.setdefault(filename, (ch, art_id))
            served = tree_sdists(lay, t, sdists)
            tree = lay.tree(t)
            page = simple.read_project(tree, name)
            listed = {f.filename for f in page}
            if any(f.filename in known and f.filename not in wanted and f.filename not in served for f in page):
                by_channel, known_all = _rows(session, name)
                _rewrite(session, lay, t, name, by_channel, known_all, sdists)
                continue
            missing = {wanted[f] for f in wanted if f not in listed}
            new_sdists = [src for f, src in served.items() if f not in listed]
            if not missing and not new_sdists:
                continue
            rows = _rows_of(session, missing)
            entries = [_entry(session, lay, t, name, row) for row in rows]
            for row in rows:
                _place(session, lay, tree, row)
            new_sdists = _placed_sdists(tree, name, new_sdists)
            simple.write_project(tree, name, [*page, *entries, *(sdist_entry(src) for src in new_sdists)])
            if name not in simple._listed_projects(tree):
                simple.write_root(tree, simple.list_projects(tree))


def _rows_of(session: Session, wanted: set[tuple[str, int]]) -> list[_Row]:
    """The `_Row`s of the (channel, artifact id) pairs `wanted`."""
    ids = {art_id for _, art_id in wanted}
    q = (select(Artifact, ChannelEntry.channel, ChannelEntry.added_at, Provenance.keyid)
         .join(ChannelEntry, ChannelEntry.artifact_id == Artifact.id)
         .outerjoin(Provenance, Provenance.artifact_id == Artifact.id)
         .where(Artifact.id.in_(ids))
         .order_by(ChannelEntry.added_at, Artifact.id))
    rows: dict[str, _Row] = {}
    for art, channel, added_at, keyid in session.execute(q):
        if (channel, art.id) in wanted:
            rows[art.filename] = _Row(art, channel, added_at, keyid is not None)
    return list(rows.values())


def drop_unlisted(settings: Settings, project: str, filenames: Iterable[str]) -> list[Path]:
    """Remove the files (with their sidecars) of `filenames` from every tree that does not list them:
    a withdrawn artifact's files leave every folder, not only its pages. The paths removed."""
    lay = layout(settings)
    name = canonicalize_name(project)
    removed: list[Path] = []
    with simple._lock(lay.index):
        for t in lay.trees():
            tree = lay.tree(t)
            listed = {f.filename for f in simple.read_project(tree, name)}
            folder = tree / "files" / name
            for filename in filenames:
                if filename in listed:
                    continue
                for suffix in SIDECARS:
                    path = folder / f"{filename}{suffix}"
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed.append(path)
    return removed


def _entry(session: Session, lay: Layout, tree: str, project: str, row: _Row) -> IndexFile:
    art = row.artifact
    if art.metadata_sha256 is None:  # published before the digest was recorded
        meta = _metadata_bytes(session, lay, art)
        art.metadata_sha256 = sha256_bytes(meta) if meta is not None else None
    t = row.added_at
    return IndexFile(filename=art.filename, sha256=art.sha256, size=art.size, requires_python=art.requires_python,
                     metadata_sha256=art.metadata_sha256, yanked=False if art.yanked is None else (art.yanked or True),
                     upload_time=t, provenance_url=lay.provenance_url(tree, project, art.filename) if row.signed else None)


def _metadata_bytes(session: Session, lay: Layout, art: Artifact) -> bytes | None:
    for t in lay.trees():
        p = lay.tree(t) / "files" / art.name / f"{art.filename}.metadata"
        if p.is_file():
            return p.read_bytes()
    wheel = _source_wheel(lay, art)
    return simple.wheel_metadata(wheel) if wheel is not None else None


def _source_wheel(lay: Layout, art: Artifact) -> Path | None:
    from farm.storage import get_storage

    local = get_storage().local_path(art.storage_key)
    if local is not None and local.is_file():
        return local
    for t in lay.trees():
        p = lay.tree(t) / "files" / art.name / art.filename
        if p.is_file():
            return p
    return None


def checked_source(lay: Layout, art: Artifact, purpose: str) -> Path | None:
    """The copy of `art` to copy from (the stored wheel, else one in a tree), None if none is left;
    `DigestMismatch` when its sha256 is not the recorded one: a changed file is never copied on."""
    src = _source_wheel(lay, art)
    if src is not None:
        check_digest(src, art, purpose)
    return src


def check_digest(path: Path, art: Artifact, purpose: str) -> None:
    digest = sha256_file(path)
    if digest != art.sha256:
        raise DigestMismatch(f"{art.filename}: refusing to {purpose}: {path} has sha256 {digest}, but the farm "
                             f"recorded {art.sha256} when it published it: the file was changed after publishing")


def _place(session: Session, lay: Layout, tree: Path, row: _Row) -> None:
    """Make sure the wheel and its sidecar files are in `tree/files/<project>/`."""
    art = row.artifact
    folder = tree / "files" / art.name
    target = folder / art.filename
    if target.is_file() and target.stat().st_size == art.size and (folder / f"{art.filename}.metadata").is_file() \
            and (not row.signed or ((folder / f"{art.filename}.provenance").is_file()
                                    and (folder / f"{art.filename}{INTOTO_SUFFIX}").is_file())):
        return
    folder.mkdir(parents=True, exist_ok=True)
    src = checked_source(lay, art, f"copy it into {tree}")
    if src is None:
        raise FileNotFoundError(f"{art.filename}: no copy in storage or any index tree")
    if not (target.is_file() and _same(src, target)):
        simple._place(src, target)  # new, or restoring the recorded bytes over a changed copy
    meta = _metadata_bytes(session, lay, art)
    if meta is not None:
        simple._atomic_write(folder / f"{art.filename}.metadata", meta)
    prov = session.scalar(select(Provenance).where(Provenance.artifact_id == art.id))
    if prov is not None and prov.envelope is not None:
        simple._atomic_write(folder / f"{art.filename}{INTOTO_SUFFIX}", intoto_bundle(prov.envelope))
        simple._atomic_write(folder / f"{art.filename}.provenance", document_bytes(prov.envelope))


def _link_sidecars(src_folder: Path, dest_folder: Path, filename: str) -> None:
    dest_folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".provenance", ".provenance.json", INTOTO_SUFFIX):
        src = src_folder / f"{filename}{suffix}"
        if src.is_file():
            dest = dest_folder / f"{filename}{suffix}"
            if not (dest.is_file() and _same(src, dest)):
                simple._place(src, dest)


def _same(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def artifacts_in(session: Session, channel: str, name: str | None = None) -> list[Artifact]:
    """The live artifacts a channel lists (optionally of one project)."""
    q = (select(Artifact).join(ChannelEntry).where(ChannelEntry.channel == channel, Artifact.removed_at.is_(None)))
    if name is not None:
        q = q.where(Artifact.name == canonicalize_name(name))
    return list(session.scalars(q))


def add_entries(session: Session, arts: Iterable[Artifact], channel: str, by: str) -> list[Artifact]:
    added = []
    for art in arts:
        if not any(e.channel == channel for e in art.channels):
            art.channels.append(ChannelEntry(channel=channel, added_at=utcnow(), added_by=by))
            added.append(art)
    session.flush()
    return added
