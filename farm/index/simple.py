"""The farm's static simple index: plain files that any web server, or `farm.index.serve`, can serve.

Layout below `root`::

    simple/index.html, simple/index.json            the project list (PEP 503 / PEP 691)
    simple/<project>/index.html, index.json          one project's files (PEP 503, 592, 658, 691, 700, 714, 740)
    files/<project>/<filename>                       the distributions
    files/<project>/<filename>.metadata              each wheel's core metadata (PEP 658 / PEP 714)
    files/<project>/<filename>.provenance            its signed provenance, PEP 740 layout (farm/provenance/sign.py)

`<project>` is always the normalized name. Links are relative (`../../files/...`), so the tree can be
served under any prefix. Every page is written to a temporary file in its own directory and moved
into place with `os.replace`, so a reader sees the old page or the new one, never half of one, and
regenerating one project touches nothing of any other project.

The project's `index.json` is also the record of its files: `read_project` parses it back, so one
file can be added without a database::

    f = add_file(root, "foo", wheel)
    write_project(root, "foo", [*read_project(root, "foo"), f])
    write_root(root, list_projects(root))

(`publish` does exactly that, under a per-project lock.)

A published file name is immutable (as on PyPI: "File already exists"): `publish` and `add_file`
never put different bytes under a name a tree already lists or holds, nor under a name that
normalizes to the same file (`file_key`: `Foo_Bar-1.0-py3-none-any.whl` is `foo_bar-1.0-...`);
the same bytes again are idempotent. `identity_problem` says why a wheel is not the project and
version it claims to be (file name and METADATA, names compared normalized, ASCII only).
"""

from __future__ import annotations

import contextlib
import email.parser
import html
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.utils import InvalidWheelFilename, canonicalize_name, canonicalize_version, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from farm.errors import FileExists, PublishError
from farm.util.archive import is_project_name
from farm.util.hashing import sha256_bytes, sha256_file
from farm.util.locks import host_lock

# The Simple API version a page declares is that of the newest key it serves (PEP 691 says a page
# declares its own version): 1.1 (PEP 700: `versions`, `size`, `upload-time`) for every page, 1.3 for a
# project page that serves PEP 740's `provenance` (1.2, PEP 708, added keys the farm does not serve; PEP
# 714's `core-metadata` changed no version).
REPOSITORY_VERSION = "1.1"
PROVENANCE_VERSION = "1.3"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "application/vnd.pypi.simple.v1+html"

_SHA256 = re.compile(r"[0-9a-f]{64}")


# File identity -----------------------------------------------------------------------------------


@lru_cache(maxsize=65536)  # a publish checks the new name against every file of the project's page
def file_key(filename: str) -> str:
    """The normalized identity of a distribution file name: two names with one key are one file.

    Wheels: normalized project name (`-` as `_`), PEP 440 version (1.0 = 1.0.0), build tag, and the three tag
    fields lowercased with their dotted parts sorted; sdists: normalized name, version and extension.
    Anything unparsable is its own key.
    """
    try:
        if filename.endswith(".whl"):
            name, version, build, _tags = parse_wheel_filename(filename)
            fields = filename[:-4].split("-")[-3:]
            tags = "-".join(".".join(sorted(f.lower().split("."))) for f in fields)
            tag = f"-{build[0]}{build[1]}" if build else ""
            return f"{name.replace('-', '_')}-{canonicalize_version(version)}{tag}-{tags}.whl"
        for ext in (".tar.gz", ".zip"):
            if filename.endswith(ext):
                raw_name, _, raw_version = filename[: -len(ext)].rpartition("-")
                return f"{canonicalize_name(raw_name).replace('-', '_')}-{canonicalize_version(Version(raw_version))}{ext}"
    except (InvalidWheelFilename, InvalidVersion, ValueError):
        pass
    return filename


def identity_problem(filename: str, name: str, version: str, metadata: bytes | None = None) -> str | None:
    """Why the wheel `filename` (and its METADATA, when given) is not a wheel of project `name`,
    version `version`, or None when it is. Names compare normalized (PEP 503) and must be ASCII
    (PEP 508), versions as PEP 440 versions. An sdist builds wheels of its own project and version
    only: a build that names its distribution after another project must not publish as that one.
    """
    try:
        want_name, want_version = canonicalize_name(name), Version(version)
    except InvalidVersion:
        return f"its sdist's version {version!r} is not a PEP 440 version"
    want = f"{want_name} {want_version}"
    if not filename.endswith(".whl"):
        return f"{filename!r} is not a wheel file name"
    try:
        got_name, got_version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        return f"{filename!r} is not a valid wheel file name: {exc}"
    raw = filename[:-4].split("-")[0]
    if not is_project_name(raw):
        return f"{filename}: {raw!r} is not a valid (ASCII, PEP 508) project name"
    if got_name != want_name or got_version != want_version:
        return (f"{filename} is a wheel of {got_name} {got_version}, but it was built from the sdist of {want}: "
                "a build publishes only its own project and version")
    if metadata is None:
        return None
    msg = email.parser.BytesHeaderParser().parsebytes(metadata)
    meta_name, meta_version = (str(msg.get("Name") or "").strip(), str(msg.get("Version") or "").strip())
    if not is_project_name(meta_name):
        return f"{filename}: its METADATA Name {meta_name!r} is not a valid (ASCII, PEP 508) project name"
    try:
        parsed = Version(meta_version)
    except InvalidVersion:
        return f"{filename}: its METADATA Version {meta_version!r} is not a PEP 440 version"
    if canonicalize_name(meta_name) != want_name or parsed != want_version:
        return (f"{filename}: its METADATA says {meta_name} {meta_version}, but it was built from the sdist of "
                f"{want}: a build publishes only its own project and version")
    return None


def conflict(files: Iterable[IndexFile], filename: str, sha256: str) -> IndexFile | None:
    """The listed file that `filename` with `sha256` may not join: another file under the same
    (normalized) name. None when nothing clashes or the very same file is listed."""
    key = file_key(filename)
    for f in files:
        if file_key(f.filename) == key and (f.sha256 != sha256 or f.filename != filename):
            return f
    return None


def already_exists(filename: str, existing: str, sha256: str, where: str) -> FileExists:
    return FileExists(f"File already exists: {existing} ({where}) has sha256 {sha256[:16]}..., and a published "
                      f"file name is never replaced: this {filename} is different bytes. A rebuild of the same "
                      "version needs its own file name (a wheel build tag).")


@dataclass(frozen=True, kw_only=True)
class IndexFile:
    """One file of one project, as the index lists it.

    `yanked`: False (or "") = not yanked, True = yanked without a reason, a non-empty string =
    yanked with that reason (PEP 592). `upload_time` without a time zone is taken as UTC and stored
    with one.
    """

    filename: str
    sha256: str
    size: int
    requires_python: str | None = None
    metadata_sha256: str | None = None
    yanked: str | bool = False
    upload_time: datetime | None = None
    provenance_url: str | None = None  # PEP 740: where its signed provenance is (farm/provenance/sign.py)

    def __post_init__(self) -> None:
        _check_filename(self.filename)
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{self.filename}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.metadata_sha256 is not None and not _SHA256.fullmatch(self.metadata_sha256):
            raise ValueError(f"{self.filename}: metadata_sha256 must be 64 lowercase hex digits")
        if self.yanked == "":
            object.__setattr__(self, "yanked", False)
        t = self.upload_time
        if t is not None:
            t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
            object.__setattr__(self, "upload_time", t)

    @property
    def is_yanked(self) -> bool:
        return bool(self.yanked)


# Placing files ---------------------------------------------------------------------------------


def add_file(root: Path, project: str, wheel: Path, *, provenance_url: str | None = None,
             sha256: str | None = None) -> IndexFile:
    """Put `wheel` into `root/files/<project>/` with its `.metadata` file; return its index entry.

    The file is hard-linked when `wheel` is on the same file system, else copied under a temporary
    name and renamed into place. The pages are not rewritten: call `write_project` (or `publish`).
    A wheel must belong to `project`; other files (sdists) are placed without a metadata file.
    `sha256`, when the caller has just hashed this very file, is used instead of hashing it again.
    A file already at the target with other bytes is never replaced: `FileExists`.
    """
    name = canonicalize_name(project)
    wheel = Path(wheel)
    filename = wheel.name
    _check_filename(filename)
    meta: bytes | None = None
    if filename.endswith(".whl"):
        try:
            dist, _version, _build, _tags = parse_wheel_filename(filename)
        except InvalidWheelFilename as exc:
            raise PublishError(f"{wheel}: {exc}") from exc
        if dist != name:
            raise PublishError(f"{filename} is a wheel of {dist!r}, not of {name!r}")
        meta = wheel_metadata(wheel)
    folder = Path(root) / "files" / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    digest = sha256 or sha256_file(wheel)
    if not (target.exists() and _same_file(wheel, target)):
        if target.exists():
            held = sha256_file(target)
            if held != digest:
                raise already_exists(filename, filename, held, f"the file in {folder}")
        _place(wheel, target)
    metadata_sha256 = None
    requires_python = None
    if meta is not None:
        _atomic_write(folder / f"{filename}.metadata", meta)
        metadata_sha256 = sha256_bytes(meta)
        requires_python = _requires_python(meta)
    return IndexFile(
        filename=filename,
        sha256=digest,
        size=target.stat().st_size,
        requires_python=requires_python,
        metadata_sha256=metadata_sha256,
        upload_time=datetime.now(timezone.utc),
        provenance_url=provenance_url,
    )


def wheel_metadata(wheel: Path) -> bytes:
    """The bytes of the wheel's `<name>-<version>.dist-info/METADATA`, exactly as stored."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            candidates = [
                n for n in zf.namelist()
                if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if not candidates:
                raise PublishError(f"{wheel}: no *.dist-info/METADATA")
            if len(candidates) > 1:
                # Several .dist-info folders: take the one named after the wheel's own name-version.
                prefix = "-".join(Path(wheel).name.split("-")[:2]).lower()
                matching = [n for n in candidates if n.split("/")[0][: -len(".dist-info")].lower() == prefix]
                if len(matching) != 1:
                    raise PublishError(f"{wheel}: several *.dist-info folders: {sorted(candidates)}")
                candidates = matching
            return zf.read(candidates[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise PublishError(f"{wheel}: not a readable wheel: {exc}") from exc


def _requires_python(meta: bytes) -> str | None:
    msg = email.parser.BytesHeaderParser().parsebytes(meta)
    value = msg.get("Requires-Python")
    if value is None:
        return None
    return str(value).strip() or None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _place(src: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copyfile(src, tmp)
        # World-readable: a static web server's workers run as another user (storage writes 0600;
        # a hard link shares the mode, so the stored copy becomes 0644 too).
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _check_filename(filename: str) -> None:
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"not a plain file name: {filename!r}")


# Writing pages ---------------------------------------------------------------------------------


def write_project(root: Path, project: str, files: Sequence[IndexFile]) -> None:
    """Write `simple/<project>/index.html` and `index.json` for exactly `files`, atomically.

    Files are listed by version, then file name (files whose version cannot be read come last).
    Two entries with the same file name are an error. Nothing outside `simple/<project>/` changes.
    """
    name = canonicalize_name(project)
    ordered = sorted(files, key=_sort_key)
    seen: set[str] = set()
    for f in ordered:
        if f.filename in seen:
            raise ValueError(f"{name}: {f.filename} listed twice")
        seen.add(f.filename)
    folder = Path(root) / "simple" / name
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "index.html", render_project_html(name, ordered))
    st = _atomic_write(folder / "index.json", render_project_json(name, ordered))
    _READ_CACHE[folder / "index.json"] = ((st.st_ino, st.st_mtime_ns, st.st_size), tuple(ordered))


def write_root(root: Path, projects: Iterable[str]) -> None:
    """Write `simple/index.html` and `simple/index.json` listing `projects` (normalized, sorted)."""
    names = sorted({canonicalize_name(p) for p in projects})
    folder = Path(root) / "simple"
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "index.html", render_root_html(names))
    _atomic_write(folder / "index.json", render_root_json(names))


def read_project(root: Path, project: str) -> list[IndexFile]:
    """The files `write_project` last listed for `project` (empty when it has no page yet)."""
    path = Path(root) / "simple" / canonicalize_name(project) / "index.json"
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = _READ_CACHE.get(path)
            if cached is not None and cached[0] == key:  # pages are replaced, never changed in place
                return list(cached[1])
            data = json.loads(fh.read())
    except FileNotFoundError:
        return []
    files = [_from_json(entry) for entry in data.get("files", [])]
    _READ_CACHE[path] = (key, tuple(files))
    return files


# index.json path -> ((inode, mtime, size), its files): publishing re-reads a big page without parsing it
_READ_CACHE: dict[Path, tuple[tuple[int, int, int], tuple[IndexFile, ...]]] = {}


def list_projects(root: Path) -> list[str]:
    """The normalized names of all projects that have a page below `root/simple/`."""
    folder = Path(root) / "simple"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "index.json").is_file())


def publish(root: Path, project: str, wheel: Path, *, replace: bool | None = None,
            provenance_url: str | None = None, sha256: str | None = None) -> IndexFile:
    """Add one file to the index: place it, rewrite its project's pages and the project list.

    Serialized per index by a lock file, so concurrent publishers do not lose each other's files.
    A published file name is immutable: the same bytes under the same name again are idempotent
    (the entry is rewritten); other bytes under that name, or under a name that normalizes to it,
    are refused (`FileExists`), whatever `replace` says. `replace=False` refuses the same bytes too.
    """
    name = canonicalize_name(project)
    filename = Path(wheel).name
    with _lock(Path(root)):
        current = read_project(root, name)
        if replace is False and any(f.filename == filename for f in current):
            raise PublishError(f"{name}: {filename} is already published")
        digest = sha256 or sha256_file(wheel)
        clash = conflict(current, filename, digest)
        if clash is not None:
            raise already_exists(filename, clash.filename, clash.sha256, f"listed in {Path(root) / 'simple' / name}")
        entry = add_file(root, name, wheel, provenance_url=provenance_url, sha256=digest)
        write_project(root, name, [*(f for f in current if f.filename != entry.filename), entry])
        if name not in _listed_projects(root):
            write_root(root, list_projects(root))
    return entry


def _listed_projects(root: Path) -> set[str]:
    try:
        data = json.loads((Path(root) / "simple" / "index.json").read_bytes())
    except FileNotFoundError:
        return set()
    return {p["name"] for p in data.get("projects", [])}


def _lock(root: Path) -> contextlib.AbstractContextManager[None]:
    return host_lock(root / ".lock")


# Rendering -------------------------------------------------------------------------------------


_SAFE_NAME = re.compile(r"[A-Za-z0-9._~+!-]+")


@lru_cache(maxsize=65536)
def _version_str(v: Version) -> str:
    return str(v)


@lru_cache(maxsize=65536)
def _version_of(filename: str) -> Version | None:
    """The version in a wheel or sdist file name (only that part is parsed: this runs per file)."""
    try:
        if filename.endswith(".whl"):
            parts = filename[:-4].split("-")
            if len(parts) not in (5, 6):
                return None
            return Version(parts[1])
        for ext in (".tar.gz", ".zip"):
            if filename.endswith(ext):
                return Version(filename[: -len(ext)].rpartition("-")[2])
        return None
    except InvalidVersion:
        return None


def _sort_key(f: IndexFile) -> tuple[Any, ...]:
    v = _version_of(f.filename)
    return (0, v, f.filename) if v is not None else (1, 0, f.filename)


def _file_url(project: str, filename: str) -> str:
    name = filename if _SAFE_NAME.fullmatch(filename) else quote(filename)
    return f"../../files/{project}/{name}"


# Where a page links its provenance files when the farm has no `public_url`: a placeholder origin
# (`.invalid` never resolves, RFC 2606) that the farm's server replaces with the origin and tree path of
# each request (`absolute_provenance`). PEP 740 asks for a URL that clients fetch as it is (pypi-simple
# refuses a page whose `provenance` is relative), so the page on disk holds an absolute URL even so.
UNSERVED_BASE = "http://farm.invalid/"


def unserved_provenance_url(project: str, filename: str) -> str:
    """A provenance link below `UNSERVED_BASE`, relative to the tree (written without a `public_url`)."""
    return UNSERVED_BASE + _file_url(project, filename).removeprefix("../../") + ".provenance"


# How a placeholder provenance link starts in each page format, as rendered.
_UNSERVED = {
    "json": b'"provenance":' + json.dumps(UNSERVED_BASE).encode()[:-1],
    "html": b' data-provenance="' + html.escape(UNSERVED_BASE).encode(),
}
# The PEP 658 key pages written before PEP 714 was followed carry; pip 22.3 to 23.1 fail on it.
_OLD_METADATA_KEY = b',"dist-info-metadata":'


def absolute_provenance(page: bytes, kind: str, tree_url: str) -> bytes:
    """`page` (a project page of `kind` "json" or "html", as written here) with its placeholder
    provenance links (`UNSERVED_BASE`) made absolute below `tree_url`, the absolute URL of the tree
    the page is served from (ending in a slash). Links below a `public_url` are left as they are.

    A JSON page written before the farm followed PEP 714 gets its `dist-info-metadata` key served as
    `data-dist-info-metadata` (until `farm reindex` rewrites it)."""
    marker = _UNSERVED[kind]
    if marker in page:
        quoted = (json.dumps(tree_url)[1:-1] if kind == "json" else html.escape(tree_url)).encode()
        page = page.replace(marker, marker[: -len(UNSERVED_BASE)] + quoted)
    if kind == "json" and _OLD_METADATA_KEY in page:
        page = page.replace(_OLD_METADATA_KEY, b',"data-dist-info-metadata":')
    return page


def _time(t: datetime) -> str:
    if t.utcoffset():
        t = t.astimezone(timezone.utc)
    return t.isoformat(timespec="microseconds")[:26] + "Z"


def _parse_time(text: str) -> datetime:
    # PEP 700: yyyy-mm-ddThh:mm:ss[.ffffff]Z; `fromisoformat` only reads "Z" from Python 3.11 on.
    t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def api_version(files: Iterable[IndexFile]) -> str:
    """The api-version a project page listing `files` declares: the version of the newest key it serves."""
    return PROVENANCE_VERSION if any(f.provenance_url for f in files) else REPOSITORY_VERSION


def _head(version: str) -> str:
    return ('<!DOCTYPE html>\n<html>\n  <head>\n'
            f'    <meta name="pypi:repository-version" content="{version}">\n')


def render_project_html(project: str, files: Sequence[IndexFile]) -> bytes:
    """The PEP 503 page of `project` listing `files` in the given order."""
    esc = html.escape
    title = esc(project)
    out = [_head(api_version(files)), f"    <title>Links for {title}</title>\n  </head>\n  <body>\n    <h1>Links for {title}</h1>\n"]
    out.extend(_pieces(project, f)[0] for f in files)
    out.append("  </body>\n</html>\n")
    return "".join(out).encode()


def project_json(project: str, files: Sequence[IndexFile]) -> dict[str, Any]:
    """The PEP 691 (with PEP 700 and 714) JSON data of `project` listing `files` in the given order."""
    entries = []
    versions: dict[Version, None] = {}
    for f in files:
        entries.append(_json_entry(project, f))
        v = _version_of(f.filename)
        if v is not None:
            versions[v] = None
    return {
        "meta": {"api-version": api_version(files)},
        "name": project,
        "files": entries,
        "versions": [_version_str(v) for v in sorted(versions)],
    }


def render_project_json(project: str, files: Sequence[IndexFile]) -> bytes:
    """`project_json` serialized compactly, from per-file pieces kept between calls (a big page is
    rewritten for every file published, so only the new file's piece is serialized)."""
    versions: dict[Version, None] = {}
    for f in files:
        v = _version_of(f.filename)
        if v is not None:
            versions[v] = None
    head = json.dumps({"meta": {"api-version": api_version(files)}, "name": project}, separators=(",", ":"))
    tail = json.dumps([_version_str(v) for v in sorted(versions)], separators=(",", ":"))
    body = ",".join(_pieces(project, f)[1] for f in files)
    return f'{head[:-1]},"files":[{body}],"versions":{tail}}}'.encode()


# id(entry) -> (entry, project, HTML line, JSON text). Keyed by identity, not by value: hashing every
# entry of a big page costs more than rendering the one new entry (read_project hands out the same
# entry objects while a page is unchanged). Holding the entry keeps its id from being reused.
_PIECES: dict[int, tuple[IndexFile, str, str, str]] = {}


def _pieces(project: str, f: IndexFile) -> tuple[str, str]:
    hit = _PIECES.get(id(f))
    if hit is not None and hit[0] is f and hit[1] == project:
        return hit[2], hit[3]
    if len(_PIECES) > 1 << 18:
        _PIECES.clear()
    html_line = _html_line(project, f)
    json_text = json.dumps(_json_entry(project, f), separators=(",", ":"))
    _PIECES[id(f)] = (f, project, html_line, json_text)
    return html_line, json_text


def _json_entry(project: str, f: IndexFile) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": f.filename,
        "url": _file_url(project, f.filename),
        "hashes": {"sha256": f.sha256},
    }
    if f.requires_python:
        entry["requires-python"] = f.requires_python
    # PEP 714, as PyPI serves it: `core-metadata`, and the PEP 658 digest again under `data-dist-info-metadata`
    # (the key PyPI first served). Never `dist-info-metadata`: pip 22.3 to 23.1 (Debian 12's pip, the pip
    # bundled with Python 3.9) fail on that key holding a dict, with "unhashable type: 'dict'".
    meta: dict[str, str] | bool = {"sha256": f.metadata_sha256} if f.metadata_sha256 else False
    entry["data-dist-info-metadata"] = meta
    entry["core-metadata"] = meta
    entry["yanked"] = f.yanked if f.yanked else False
    entry["size"] = f.size
    if f.upload_time is not None:
        entry["upload-time"] = _time(f.upload_time)
    if f.provenance_url:
        entry["provenance"] = f.provenance_url
    return entry


def _html_line(project: str, f: IndexFile) -> str:
    esc = html.escape
    attrs = [f'<a href="{esc(_file_url(project, f.filename))}#sha256={f.sha256}"']
    if f.requires_python:
        attrs.append(f' data-requires-python="{esc(f.requires_python)}"')
    if f.metadata_sha256:
        attrs.append(
            f' data-dist-info-metadata="sha256={f.metadata_sha256}"'
            f' data-core-metadata="sha256={f.metadata_sha256}"'
        )
    if f.yanked:
        reason = f.yanked if isinstance(f.yanked, str) else ""
        attrs.append(f' data-yanked="{esc(reason)}"')
    if f.provenance_url:
        attrs.append(f' data-provenance="{esc(f.provenance_url)}"')
    attrs.append(f">{esc(f.filename)}</a><br>\n")
    return "".join(attrs)


def render_root_html(projects: Sequence[str]) -> bytes:
    esc = html.escape
    out = [_head(REPOSITORY_VERSION), "    <title>Simple index</title>\n  </head>\n  <body>\n"]
    out.extend(f'    <a href="{esc(quote(p))}/">{esc(p)}</a><br>\n' for p in projects)
    out.append("  </body>\n</html>\n")
    return "".join(out).encode()


def render_root_json(projects: Sequence[str]) -> bytes:
    data = {"meta": {"api-version": REPOSITORY_VERSION}, "projects": [{"name": p} for p in projects]}
    return json.dumps(data, separators=(",", ":")).encode()


def _from_json(entry: dict[str, Any]) -> IndexFile:
    meta = entry.get("core-metadata", entry.get("data-dist-info-metadata", entry.get("dist-info-metadata")))
    t = entry.get("upload-time")
    return IndexFile(
        filename=entry["filename"],
        sha256=entry["hashes"]["sha256"],
        size=int(entry["size"]),
        requires_python=entry.get("requires-python") or None,
        metadata_sha256=meta.get("sha256") if isinstance(meta, dict) else None,
        yanked=entry.get("yanked", False),
        upload_time=_parse_time(t) if t else None,
        provenance_url=entry.get("provenance") or None,
    )


# Atomic writes ---------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> os.stat_result:
    """Write `data` to `path` through a temporary file and a rename; the stat of the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), 0o644)
            fh.flush()
            st = os.fstat(fh.fileno())
        os.replace(tmp, path)
        return st
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
