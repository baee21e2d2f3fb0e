"""Sdist intake: check that a file is an acceptable sdist without unpacking it, then unpack it safely.

`inspect_sdist` reads the archive once, in memory only, and refuses anything a build farm should
not unpack: the wrong format (by name and by content), a file name that is not
`NAME-VERSION.tar.gz`/`.zip`, members that would land outside one top-level directory (absolute
paths, `..`, links leading out), device or fifo members, too many members, too many unpacked
bytes (declared sizes, and for gzip the decompressed stream itself), a `PKG-INFO` whose name
or version disagree with the file name (PEP 625) or with what was asked for, and a top-level
directory that is not `NAME-VERSION` of the same project and version.

Project names are ASCII (PEP 508: letters, digits, `.`, `_`, `-`; `is_project_name`). A pattern
with `re.IGNORECASE` alone also matches the long s `ſ` and the Kelvin sign `K`, which lowercase or
casefold to `s` and `k`: `Kiwi` would normalize to `kiwi` and publish as another project.

`extract_sdist` runs the same checks and then unpacks into a staging folder inside `dest`, moving
the source tree into place only once everything is written: `dest` never holds a half-unpacked
tree and nothing is ever written outside it. For a `.tar.gz` the decompressed tar is kept (in
memory, spilling to an unnamed file inside `dest` past 64 MiB), so the archive is read once.
"""

from __future__ import annotations

import calendar
import email.parser
import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from packaging.utils import InvalidSdistFilename, NormalizedName, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version

from farm.errors import SdistError

__all__ = ["PROJECT_NAME", "SDIST_SUFFIXES", "Limits", "SdistInfo", "check_project_name", "extract_sdist",
           "inspect_sdist", "is_file_request", "is_project_name", "read_top_level"]

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")


def is_file_request(request: str) -> bool:
    """Whether a submission's request names a file (an sdist suffix, or a path that exists), not a requirement."""
    if request.endswith(SDIST_SUFFIXES):
        return True
    try:
        return Path(request).exists()
    except OSError:  # e.g. a long requirement line is no file name
        return False


_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# PEP 508 names; re.ASCII: without it IGNORECASE lets "ſ" (long s) match s and "K" (Kelvin) match k.
PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE | re.ASCII)
_WHEEL_MARKER = re.compile(r"^[^/]+\.dist-info/WHEEL$")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 20
_SPOOL_IN_MEMORY = 64 << 20
_MAX_PKG_INFO = 16 << 20
_MAX_ZIP_LINK = 4096
# What a tar stream legitimately holds besides member data: a header block, padding and maybe a
# long-name/pax header per member, plus the end-of-archive blocks and record padding.
_TAR_OVERHEAD_PER_MEMBER = 3 * 1024
_TAR_OVERHEAD = 1 << 20


@dataclass(frozen=True, kw_only=True)
class SdistInfo:
    name: str  # canonicalized (PEP 503)
    display_name: str  # as written in PKG-INFO
    version: str  # normalized (PEP 440)
    filename: str
    top_dir: str
    requires_python: str | None
    members: int
    unpacked_bytes: int
    requires_dist: tuple[str, ...] = ()  # PKG-INFO's Requires-Dist, as written
    static_requires_dist: bool = False  # Metadata-Version >= 2.2 and Requires-Dist not Dynamic (PEP 643): final


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_unpacked_bytes: int
    max_members: int

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(settings.max_sdist_bytes, settings.max_unpacked_bytes, settings.max_members)


# Public API ------------------------------------------------------------------------------------


def is_project_name(name: str) -> bool:
    """Whether `name` is a valid project name (PEP 508), ASCII only: `ſix` and `Kiwi` (Kelvin sign) are not."""
    return isinstance(name, str) and PROJECT_NAME.fullmatch(name) is not None


def check_project_name(name: str, what: str) -> str:
    """`name` if it is a valid ASCII project name, else `SdistError` saying which input (`what`) carried it."""
    if not is_project_name(name):
        odd = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._-"))})
        detail = f" (it contains {', '.join(f'{c!r} U+{ord(c):04X}' for c in odd)})" if odd else ""
        raise SdistError(f"{what}: {name!r} is not a valid project name{detail}: a name is ASCII letters, digits, "
                         "'.', '_' and '-', starting and ending with a letter or digit (PEP 508)")
    return name


def inspect_sdist(
    path: Path, limits: Limits, *, expect_name: str | None = None, expect_version: str | None = None
) -> SdistInfo:
    """Check `path` is an acceptable sdist and describe it; nothing is written anywhere.

    Raises `SdistError` naming the file (and the offending member) for anything unacceptable.
    """
    path = Path(path)
    kind, fname_name, fname_version = _check_file(path, limits)
    with open(path, "rb") as f:
        _check_magic(path.name, kind, f)
        if kind == "zip":
            with _open_zip(path.name, f) as zf:
                scan = _scan_zip(path.name, zf, limits)
        else:
            stream = _CappedReader(path.name, gzip.GzipFile(fileobj=f, mode="rb"), _tar_budget(limits))
            with _open_tar(path.name, stream, "r|") as tf:
                scan = _scan_tar(path.name, tf, limits, keep_open=False)
            stream.drain()
    return _finish(path.name, scan, fname_name, fname_version, expect_name, expect_version)


def extract_sdist(
    path: Path, dest: Path, limits: Limits, *, expect_name: str | None = None, expect_version: str | None = None
) -> Path:
    """Check `path` like `inspect_sdist`, then unpack it into `dest`; return `dest/top_dir`.

    The checks and the unpacking share one read of the archive (a .tar.gz is decompressed once).

    `dest` is created if needed. The tree is unpacked into a staging folder inside `dest` and
    renamed into place at the end; on any error the staging folder is removed, so `dest` is left
    as it was. It is an error for `dest/top_dir` to exist already.
    """
    path = Path(path)
    dest = Path(dest)
    kind, fname_name, fname_version = _check_file(path, limits)
    dest.mkdir(parents=True, exist_ok=True)
    with open(path, "rb") as f:
        _check_magic(path.name, kind, f)
        if kind == "zip":
            with _open_zip(path.name, f) as zf:
                scan = _scan_zip(path.name, zf, limits)
                info = _finish(path.name, scan, fname_name, fname_version, expect_name, expect_version)
                return _install(path.name, dest, info, lambda staging: _extract_zip(path.name, zf, scan, staging))
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, dir=dest) as spool:
            _decompress(path.name, f, spool, _tar_budget(limits))
            spool.seek(0)
            with _open_tar(path.name, spool, "r:") as tf:
                scan = _scan_tar(path.name, tf, limits, keep_open=True)
                info = _finish(path.name, scan, fname_name, fname_version, expect_name, expect_version)
                return _install(path.name, dest, info, lambda staging: _extract_tar(path.name, tf, staging))


# The file itself ---------------------------------------------------------------------------------


def _check_file(path: Path, limits: Limits) -> tuple[str, NormalizedName, Version]:
    """Size, extension and file name; nothing is opened yet."""
    fn = path.name
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SdistError(f"{fn}: no such file ({path})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SdistError(f"{fn}: not a regular file ({path})")
    if st.st_size > limits.max_bytes:
        raise SdistError(f"{fn}: file is {st.st_size} bytes, over the limit of {limits.max_bytes} bytes for an sdist")
    if fn.endswith(".tar.gz"):
        kind = "tar"
    elif fn.endswith(".zip"):
        kind = "zip"
    else:
        raise SdistError(f"{fn}: not an sdist: the file name must end in .tar.gz or .zip")
    try:
        name, version = parse_sdist_filename(fn)
    except InvalidSdistFilename as exc:
        raise SdistError(f"{fn}: not a valid sdist file name (expected NAME-VERSION{'.tar.gz' if kind == 'tar' else '.zip'}"
                         f" with a PEP 440 version): {exc}") from None
    raw_name = fn[: -len(".tar.gz" if kind == "tar" else ".zip")].rpartition("-")[0]
    if not is_project_name(raw_name):
        raise SdistError(f"{fn}: not a valid sdist file name: {raw_name!r} is not a valid project name")
    return kind, name, version


def _check_magic(fn: str, kind: str, f: IO[bytes]) -> None:
    head = f.read(4)
    f.seek(0)
    if kind == "tar":
        if head[:2] == _GZIP_MAGIC:
            return
        if head in _ZIP_MAGICS:
            what = "a wheel" if _is_wheel(f) else "a zip archive"
            raise SdistError(f"{fn}: the file is {what}, not a gzip-compressed tar archive as its name says")
        raise SdistError(f"{fn}: not gzip-compressed (the file does not start with the gzip signature), "
                         "so it is not a .tar.gz sdist")
    if head in _ZIP_MAGICS:
        return
    if head[:2] == _GZIP_MAGIC:
        raise SdistError(f"{fn}: the file is gzip-compressed data, not a zip archive as its name says")
    raise SdistError(f"{fn}: not a zip archive (the file does not start with a zip signature)")


def _is_wheel(f: IO[bytes]) -> bool:
    try:
        with zipfile.ZipFile(f) as zf:
            return any(_WHEEL_MARKER.match(n) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    finally:
        f.seek(0)


def _tar_budget(limits: Limits) -> int:
    return limits.max_unpacked_bytes + _TAR_OVERHEAD_PER_MEMBER * limits.max_members + _TAR_OVERHEAD


class _CappedReader(io.RawIOBase):
    """Reads a decompressing stream and stops once more than `budget` bytes came out of it."""

    def __init__(self, fn: str, raw: IO[bytes], budget: int) -> None:
        self._fn, self._raw, self._budget, self.total = fn, raw, budget, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        try:
            data = self._raw.read(n)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise SdistError(f"{self._fn}: corrupt gzip data: {exc}") from None
        self.total += len(data)
        if self.total > self._budget:
            raise SdistError(f"{self._fn}: decompressed data exceeds {self._budget} bytes "
                             "(the unpacked-size limit plus room for tar headers); refusing a possible archive bomb")
        return data

    def drain(self) -> None:
        """Read to the end, so that a truncated or corrupt gzip stream is noticed (and counted)."""
        while self.read(_CHUNK):
            pass

    def readinto(self, b: Any) -> int:  # pragma: no cover - tarfile and shutil use read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _decompress(fn: str, f: IO[bytes], out: IO[bytes], budget: int) -> None:
    reader = _CappedReader(fn, gzip.GzipFile(fileobj=f, mode="rb"), budget)
    while data := reader.read(_CHUNK):
        out.write(data)


def _open_tar(fn: str, fileobj: IO[bytes], mode: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=fileobj, mode=mode)  # type: ignore[call-overload]
    except tarfile.ReadError as exc:
        raise SdistError(f"{fn}: gzip-compressed but not a tar archive ({exc})") from None


def _open_zip(fn: str, f: IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise SdistError(f"{fn}: corrupt zip archive: {exc}") from None


# Members ----------------------------------------------------------------------------------------


@dataclass
class _Scan:
    top: str
    members: int
    unpacked: int
    pkg_info: bytes | None
    # zip only: member -> (normalized parts, kind, unix mode); tar members stay in the TarFile
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], str, int]] | None = None
    links: dict[str, str] | None = None


class _Tree:
    """The member checks shared by tar and zip: names, one top directory, links, counts, sizes."""

    def __init__(self, fn: str, limits: Limits) -> None:
        self.fn, self.limits = fn, limits
        self.top: str | None = None
        self.count = 0
        self.unpacked = 0
        self.kinds: dict[str, str] = {}  # normalized member path -> dir/file/symlink/hardlink
        self.implied_dirs: set[str] = set()

    def fail(self, member: str, why: str) -> SdistError:
        return SdistError(f"{self.fn}: member {member!r} {why}")

    def parts(self, name: str) -> tuple[str, ...]:
        if not name:
            raise self.fail(name, "has an empty name")
        if "\x00" in name:
            raise self.fail(name, "has a NUL byte in its name")
        if name.startswith(("/", "\\")) or _WINDOWS_ABS.match(name):
            raise self.fail(name, "has an absolute path")
        parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
        if ".." in parts:
            raise self.fail(name, "has a '..' component (it would be written outside the tree)")
        if not parts:
            raise self.fail(name, "names the archive root")
        return parts

    def add(self, name: str, parts: tuple[str, ...], kind: str, size: int) -> str:
        """Record one member; return its normalized path."""
        self.count += 1
        if self.count > self.limits.max_members:
            raise SdistError(f"{self.fn}: more than {self.limits.max_members} members (the limit)")
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise self.fail(name, f"is not under the top-level directory {self.top!r} "
                                  "(an sdist has all its files in one top-level directory)")
        if len(parts) == 1 and kind != "dir":
            raise self.fail(name, f"is a {kind} at the top level, not a directory "
                                  "(an sdist has all its files in one top-level directory)")
        self.unpacked += size
        if self.unpacked > self.limits.max_unpacked_bytes:
            raise SdistError(f"{self.fn}: members unpack to more than {self.limits.max_unpacked_bytes} bytes "
                             f"(the limit; reached at member {name!r}); refusing a possible archive bomb")
        norm = "/".join(parts)
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            pkind = self.kinds.get(prefix)
            if pkind is not None and pkind != "dir":
                raise self.fail(name, f"is inside {prefix!r}, which is a {pkind}, not a directory")
            self.implied_dirs.add(prefix)
        previous = self.kinds.get(norm)
        if kind != "dir" and norm in self.implied_dirs:
            raise self.fail(name, f"is a {kind}, but earlier members are inside it")
        if previous is not None and previous != kind and "symlink" in (previous, kind):
            raise self.fail(name, f"is a {kind} with the same name as an earlier {previous}")
        self.kinds[norm] = kind
        return norm

    def symlink(self, name: str, parts: tuple[str, ...], target: str) -> None:
        """A symlink may point anywhere inside the tree, but not through `..` after a real name."""
        if not target:
            raise self.fail(name, "is a symlink with an empty target")
        if "\x00" in target:
            raise self.fail(name, "is a symlink whose target has a NUL byte")
        if target.startswith(("/", "\\")) or _WINDOWS_ABS.match(target):
            raise self.fail(name, f"is a symlink to the absolute path {target!r}")
        tparts = [p for p in re.split(r"[/\\]", target) if p not in ("", ".")]
        ups = 0
        while ups < len(tparts) and tparts[ups] == "..":
            ups += 1
        if ".." in tparts[ups:]:
            raise self.fail(name, f"is a symlink to {target!r}, which has '..' after a name "
                                  "(it cannot be checked without following other links)")
        base = list(parts[:-1])
        if ups > len(base) - 1:  # base[0] is the top directory; climbing above it leaves the tree
            raise self.fail(name, f"is a symlink to {target!r}, which points outside the tree")

    def hardlink(self, name: str, target: str) -> None:
        """A hard link names an earlier regular file of the archive (by its archive path)."""
        tparts = [p for p in re.split(r"[/\\]", target) if p not in ("", ".")]
        if (not tparts or target.startswith(("/", "\\")) or _WINDOWS_ABS.match(target) or ".." in tparts
                or tparts[0] != self.top):
            raise self.fail(name, f"is a hard link to {target!r}, which is outside the tree")
        if self.kinds.get("/".join(tparts)) not in ("file", "hardlink"):
            raise self.fail(name, f"is a hard link to {target!r}, which is not an earlier regular file")


def _scan_tar(fn: str, tf: tarfile.TarFile, limits: Limits, *, keep_open: bool) -> _Scan:
    tree = _Tree(fn, limits)
    pkg_info: bytes | None = None
    try:
        for m in tf:
            parts = tree.parts(m.name)
            if m.isdir():
                kind, size = "dir", 0
            elif m.isreg():
                kind, size = "file", m.size
            elif m.issym():
                kind, size = "symlink", 0
            elif m.islnk():
                kind, size = "hardlink", 0
            elif m.ischr() or m.isblk():
                raise tree.fail(m.name, "is a device file")
            elif m.isfifo():
                raise tree.fail(m.name, "is a fifo")
            else:
                raise tree.fail(m.name, f"has an unsupported tar member type {m.type!r}")
            if m.size < 0:
                raise tree.fail(m.name, "declares a negative size")
            tree.add(m.name, parts, kind, size)
            if kind == "symlink":
                tree.symlink(m.name, parts, m.linkname)
            elif kind == "hardlink":
                tree.hardlink(m.name, m.linkname)
            if len(parts) == 2 and parts[1] == "PKG-INFO":
                pkg_info = _read_pkg_info(fn, m.name, kind, m.size, lambda: tf.extractfile(m))  # noqa: B023
            if not keep_open:
                tf.members.clear()  # streaming: do not keep every header in memory
    except tarfile.TarError as exc:
        raise SdistError(f"{fn}: corrupt tar archive after {tree.count} members: {exc}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise SdistError(f"{fn}: corrupt gzip data: {exc}") from None
    if tree.top is None:
        raise SdistError(f"{fn}: the archive is empty")
    return _Scan(tree.top, tree.count, tree.unpacked, pkg_info)


def _zip_mode(info: zipfile.ZipInfo) -> int:
    return (info.external_attr >> 16) if info.create_system == 3 else 0


def _scan_zip(fn: str, zf: zipfile.ZipFile, limits: Limits) -> _Scan:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise SdistError(f"{fn}: {len(infos)} members, more than the limit of {limits.max_members}")
    wheel = next((i.filename for i in infos if _WHEEL_MARKER.match(i.filename)), None)
    if wheel is not None:
        raise SdistError(f"{fn}: the file is a wheel (it has {wheel!r}), not an sdist")
    tree = _Tree(fn, limits)
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], str, int]] = []
    links: dict[str, str] = {}
    pkg_info: bytes | None = None
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = tree.parts(name)
        if info.flag_bits & 0x1:
            raise tree.fail(name, "is encrypted")
        mode = _zip_mode(info)
        ftype = stat.S_IFMT(mode)
        if info.is_dir() or ftype == stat.S_IFDIR:
            kind = "dir"
        elif ftype == stat.S_IFLNK:
            kind = "symlink"
        elif ftype in (stat.S_IFCHR, stat.S_IFBLK):
            raise tree.fail(name, "is a device file")
        elif ftype == stat.S_IFIFO:
            raise tree.fail(name, "is a fifo")
        elif ftype == stat.S_IFSOCK:
            raise tree.fail(name, "is a socket")
        else:
            kind = "file"
        if info.file_size < 0 or info.compress_size < 0:
            raise tree.fail(name, "declares a negative size")
        norm = tree.add(name, parts, kind, info.file_size if kind == "file" else 0)
        if kind != "dir":
            if norm in seen:
                raise tree.fail(name, "appears twice in the zip archive")
            seen.add(norm)
        if kind == "symlink":
            if info.file_size > _MAX_ZIP_LINK:
                raise tree.fail(name, f"is a symlink with a {info.file_size}-byte target")
            target = _zip_read(fn, zf, info).decode("utf-8", "surrogateescape")
            tree.symlink(name, parts, target)
            links[norm] = target
        if len(parts) == 2 and parts[1] == "PKG-INFO":
            pkg_info = _read_pkg_info(fn, name, kind, info.file_size, lambda: zf.open(info))  # noqa: B023
        plan.append((info, parts, kind, mode))
    if tree.top is None:
        raise SdistError(f"{fn}: the archive is empty")
    return _Scan(tree.top, tree.count, tree.unpacked, pkg_info, plan, links)


def _zip_read(fn: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with zf.open(info) as src:
            return src.read()
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error, ValueError) as exc:
        raise SdistError(f"{fn}: cannot read member {info.filename!r}: {exc}") from None


def _read_pkg_info(fn: str, name: str, kind: str, size: int, opener: Any) -> bytes:
    if kind != "file":
        raise SdistError(f"{fn}: member {name!r} is a {kind}, not a regular file")
    if size > _MAX_PKG_INFO:
        raise SdistError(f"{fn}: member {name!r} is {size} bytes, more than {_MAX_PKG_INFO} for a PKG-INFO")
    try:
        src = opener()
        with src:
            return src.read(size + 1)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error,
            tarfile.TarError, ValueError) as exc:
        raise SdistError(f"{fn}: cannot read member {name!r}: {exc}") from None


# PKG-INFO ----------------------------------------------------------------------------------------


def _finish(fn: str, scan: _Scan, fname_name: NormalizedName, fname_version: Version,
            expect_name: str | None, expect_version: str | None) -> SdistInfo:
    where = f"{scan.top}/PKG-INFO"
    if scan.pkg_info is None:
        raise SdistError(f"{fn}: no {where} (every sdist has its metadata there)")
    msg = email.parser.Parser().parsestr(scan.pkg_info.decode("utf-8", "replace"), headersonly=True)
    display, raw_version = msg.get("Name"), msg.get("Version")
    if not display or not display.strip():
        raise SdistError(f"{fn}: {where} has no Name")
    if not raw_version or not raw_version.strip():
        raise SdistError(f"{fn}: {where} has no Version")
    display, raw_version = display.strip(), raw_version.strip()
    check_project_name(display, f"{fn}: {where} Name")
    try:
        version = Version(raw_version)
    except InvalidVersion:
        raise SdistError(f"{fn}: {where} has Version {raw_version!r}, which is not a PEP 440 version") from None
    name = canonicalize_name(display)
    if name != fname_name:
        raise SdistError(f"{fn}: {where} says the project is {display!r}, but the file name says {fname_name!r}")
    if str(version) != str(fname_version):
        raise SdistError(f"{fn}: {where} says version {raw_version!r}, but the file name says {str(fname_version)!r}")
    if expect_name is not None and canonicalize_name(expect_name) != name:
        raise SdistError(f"{fn}: this is an sdist of {display!r}, but {expect_name!r} was asked for")
    if expect_version is not None:
        try:
            wanted = Version(expect_version)
        except InvalidVersion:
            raise SdistError(f"{fn}: asked-for version {expect_version!r} is not a PEP 440 version") from None
        if wanted != version:
            raise SdistError(f"{fn}: this is {display} {version}, but version {expect_version} was asked for")
    _check_top_dir(fn, scan.top, fname_name, fname_version)
    rp = msg.get("Requires-Python")
    try:
        metadata_version = Version((msg.get("Metadata-Version") or "0").strip())
    except InvalidVersion:
        metadata_version = Version("0")
    dynamic = {d.strip().lower() for d in msg.get_all("Dynamic") or []}
    return SdistInfo(
        requires_dist=tuple(r.strip() for r in msg.get_all("Requires-Dist") or [] if r.strip()),
        static_requires_dist=metadata_version >= Version("2.2") and "requires-dist" not in dynamic,
        name=name,
        display_name=display,
        version=str(version),
        filename=fn,
        top_dir=scan.top,
        requires_python=rp.strip() if rp and rp.strip() else None,
        members=scan.members,
        unpacked_bytes=scan.unpacked,
    )


def _check_top_dir(fn: str, top: str, fname_name: NormalizedName, fname_version: Version) -> None:
    """The top-level directory is `NAME-VERSION` of the file name's project and version (both normalized)."""
    raw_name, sep, raw_version = top.rpartition("-")
    expected = f"{fname_name}-{fname_version}"
    if not sep or not is_project_name(raw_name):
        raise SdistError(f"{fn}: the top-level directory {top!r} is not NAME-VERSION "
                         f"(expected {expected!r}, as the file name says)")
    try:
        version = Version(raw_version)
    except InvalidVersion:
        raise SdistError(f"{fn}: the top-level directory {top!r} has no PEP 440 version "
                         f"(expected {expected!r}, as the file name says)") from None
    if canonicalize_name(raw_name) != fname_name or version != fname_version:
        raise SdistError(f"{fn}: the top-level directory {top!r} is {canonicalize_name(raw_name)} {version}, but the "
                         f"file name says {fname_name} {fname_version} (expected {expected!r})")


# Extraction --------------------------------------------------------------------------------------


def _install(fn: str, dest: Path, info: SdistInfo, write: Any) -> Path:
    final = dest / info.top_dir
    if os.path.lexists(final):
        raise SdistError(f"{fn}: cannot unpack: {final} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{info.top_dir}.", suffix=".partial", dir=dest))
    try:
        write(staging)
        tree = staging / info.top_dir
        if not tree.is_dir() or tree.is_symlink():
            raise SdistError(f"{fn}: unpacking did not produce the directory {info.top_dir!r}")
        os.rename(tree, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _extract_tar(fn: str, tf: tarfile.TarFile, staging: Path) -> None:
    try:
        tf.extractall(staging, filter="data")
    except tarfile.FilterError as exc:
        raise SdistError(f"{fn}: refused while unpacking: {exc}") from None
    except (tarfile.ReadError, tarfile.StreamError, EOFError) as exc:
        raise SdistError(f"{fn}: corrupt tar archive: {exc}") from None


def _extract_zip(fn: str, zf: zipfile.ZipFile, scan: _Scan, staging: Path) -> None:
    assert scan.plan is not None and scan.links is not None
    root = os.fspath(staging)
    links: list[tuple[str, str]] = []
    for info, parts, kind, mode in scan.plan:
        target = os.path.join(root, *parts)
        if kind == "dir":
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if kind == "symlink":
            links.append((scan.links["/".join(parts)], target))
            continue
        # O_EXCL|O_NOFOLLOW: never write through anything already there
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_BINARY", 0), 0o755 if mode & 0o100 else 0o644)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out, _CHUNK)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error, ValueError) as exc:
            raise SdistError(f"{fn}: cannot read member {info.filename!r}: {exc}") from None
    for link_target, where in links:  # last, so that no file is written through a link
        os.symlink(link_target, where)


def read_top_level(path: Path, *names: str, max_bytes: int = _MAX_PKG_INFO) -> dict[str, tuple[bytes, float]]:
    """The bytes and mtime of each `<top dir>/<name>` the sdist (.tar.* or .zip) has, read in one pass
    without unpacking (stopping once all are found). For an archive the farm has already checked."""
    path, wanted, found = Path(path), set(names), {}
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = info.filename.split("/")
                if len(parts) == 2 and parts[1] in wanted and not info.is_dir() and info.file_size <= max_bytes:
                    found[parts[1]] = zf.read(info), float(calendar.timegm((*info.date_time, 0, 0, 0)))  # as UTC
        return found
    with tarfile.open(path, "r:*") as tf:
        for member in tf:
            parts = member.name.removeprefix("./").split("/")
            if len(parts) == 2 and parts[1] in wanted and member.isfile() and member.size <= max_bytes:
                fh = tf.extractfile(member)
                found[parts[1]] = (fh.read() if fh else b""), float(member.mtime)
                if len(found) == len(wanted):
                    break
    return found
