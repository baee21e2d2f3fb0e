"""Checks of a wheel the farm did not build (an upload): everything is read, nothing is unpacked.

- the archive, with the limits an sdist gets (farm/util/archive.py: size, members, unpacked bytes):
  a zip, no encrypted, linked, device or duplicate members, no absolute or `..` paths;
- the file name: a valid wheel name (PEP 427) whose tags are wheel tags (interpreter, ABI and
  platform of known forms; `linux_*` is refused as on PyPI: it says nothing about the libraries);
- `.dist-info/WHEEL`: Wheel-Version 1.x and the same tags as the file name;
- `.dist-info/METADATA`: the project name and version of the file name;
- `.dist-info/RECORD`: every member listed once with its sha256 (urlsafe base64, PEP 376/427) and
  size, and every listed file present, except RECORD itself and its signatures.

`WheelError` (farm/errors.py; a `SdistError`, exit 4) says what is wrong and where.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from farm.errors import WheelError
from farm.util.archive import Limits


@dataclass(frozen=True, kw_only=True)
class WheelInfo:
    name: str  # canonicalized
    version: str
    tags: list[str]
    metadata: bytes
    pure: bool  # every tag is for any platform


_INTERPRETER = re.compile(r"^(py|cp|pp|ip|jy|graalpy)\d+[a-z0-9_]*$")
_ABI = re.compile(r"^(none|abi3|cp\d+[dmut]*|pypy\d+_pp\d+|graalpy\d+_\d+_native|[a-z0-9_]+)$")
_PLATFORM = re.compile(
    r"^(any|manylinux1_(x86_64|i686)|manylinux2010_(x86_64|i686)|manylinux2014_[a-z0-9_]+|"
    r"manylinux_\d+_\d+_[a-z0-9_]+|musllinux_\d+_\d+_[a-z0-9_]+|macosx_\d+_\d+_[a-z0-9_]+|"
    r"win32|win_amd64|win_arm64|ios_\d+_\d+_[a-z0-9_]+|android_\d+_[a-z0-9_]+)$")
_SIGNATURES = ("RECORD.jws", "RECORD.p7s")


def check_wheel(path: Path, limits: Limits) -> WheelInfo:
    path = Path(path)
    fn = path.name
    try:
        name, version, _build, tags = parse_wheel_filename(fn)
    except InvalidWheelFilename as exc:
        raise WheelError(f"{fn}: not a valid wheel file name: {exc}") from None
    tag_problem = _tag_problem(tags)
    if tag_problem:
        raise WheelError(f"{fn}: invalid wheel tag: {tag_problem}")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise WheelError(f"{fn}: {size} bytes, more than the limit of {limits.max_bytes}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise WheelError(f"{fn}: not a zip archive")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            raise WheelError(f"{fn}: corrupt zip archive: {exc}") from None
        with zf:
            files = _members(fn, zf, limits)
            dist_info = f"{fn.split('-')[0]}-{fn.split('-')[1]}.dist-info"
            dist_infos = {PurePosixPath(n).parts[0] for n in files if PurePosixPath(n).parts[0].endswith(".dist-info")}
            if dist_infos != {dist_info}:
                found = ", ".join(sorted(dist_infos)) or "none"
                raise WheelError(f"{fn}: expected one {dist_info} folder, found {found}")
            wheel_file = _read(fn, zf, files, f"{dist_info}/WHEEL")
            metadata = _read(fn, zf, files, f"{dist_info}/METADATA")
            record = _read(fn, zf, files, f"{dist_info}/RECORD")
            _check_wheel_file(fn, wheel_file, tags)
            _check_record(fn, zf, files, record, dist_info)
    from farm.index.simple import identity_problem

    problem = identity_problem(fn, str(name), str(version), metadata)
    if problem is not None:
        raise WheelError(problem.replace("it was built from the sdist of", "its file name says")
                         .replace("a build publishes only its own project and version",
                                  "the METADATA must name the wheel's own project and version"))
    pure = all(t.platform == "any" for t in tags)
    return WheelInfo(name=canonicalize_name(name), version=str(version), tags=sorted(str(t) for t in tags),
                     metadata=metadata, pure=pure)


def _tag_problem(tags: frozenset[Tag]) -> str | None:
    for t in sorted(tags, key=str):
        if not _INTERPRETER.match(t.interpreter):
            return f"{t}: {t.interpreter!r} is not an interpreter tag (py3, cp312, pp310, ...)"
        if not _ABI.match(t.abi):
            return f"{t}: {t.abi!r} is not an ABI tag"
        if t.platform.startswith("linux_"):
            return (f"{t}: the platform tag {t.platform!r} is not accepted (as on PyPI): repair the wheel to "
                    "a manylinux or musllinux tag")
        if not _PLATFORM.match(t.platform):
            return f"{t}: {t.platform!r} is not a platform tag (any, manylinux_2_28_x86_64, macosx_11_0_arm64, ...)"
        if t.platform == "any" and t.abi != "none":
            return f"{t}: a wheel for any platform has ABI 'none'"
    return None


def _members(fn: str, zf: zipfile.ZipFile, limits: Limits) -> dict[str, zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise WheelError(f"{fn}: {len(infos)} members, more than the limit of {limits.max_members}")
    files: dict[str, zipfile.ZipInfo] = {}
    unpacked = 0
    for info in infos:
        name = info.filename
        p = PurePosixPath(name)
        if name.startswith("/") or "\\" in name or ".." in p.parts or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
            raise WheelError(f"{fn}: member {name!r} has an unsafe path")
        if info.flag_bits & 0x1:
            raise WheelError(f"{fn}: member {name!r} is encrypted")
        mode = (info.external_attr >> 16) if info.create_system == 3 else 0
        ftype = stat.S_IFMT(mode)
        if info.is_dir() or ftype == stat.S_IFDIR:
            continue
        if ftype not in (0, stat.S_IFREG):
            raise WheelError(f"{fn}: member {name!r} is not a regular file (a link or a device)")
        if name in files:
            raise WheelError(f"{fn}: member {name!r} appears twice")
        unpacked += info.file_size
        if unpacked > limits.max_unpacked_bytes:
            raise WheelError(f"{fn}: unpacks to more than the limit of {limits.max_unpacked_bytes} bytes")
        files[name] = info
    return files


def _read(fn: str, zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], member: str) -> bytes:
    info = files.get(member)
    if info is None:
        raise WheelError(f"{fn}: {member} is missing")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, ValueError) as exc:
        raise WheelError(f"{fn}: cannot read {member}: {exc}") from None


def _check_wheel_file(fn: str, data: bytes, tags: frozenset[Tag]) -> None:
    import email.parser

    msg = email.parser.BytesHeaderParser().parsebytes(data)
    version = str(msg.get("Wheel-Version") or "").strip()
    if not re.fullmatch(r"1\.\d+", version):
        raise WheelError(f"{fn}: WHEEL says Wheel-Version {version!r}; this index takes 1.x")
    declared = {str(t).strip() for t in msg.get_all("Tag") or []}
    named = {str(t) for t in tags}
    if declared != named:
        raise WheelError(f"{fn}: WHEEL declares the tags {', '.join(sorted(declared)) or 'none'}, the file name "
                         f"{', '.join(sorted(named))}")


def _check_record(fn: str, zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo], record: bytes,
                  dist_info: str) -> None:
    listed: dict[str, tuple[str, str]] = {}
    try:
        rows = list(csv.reader(io.StringIO(record.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise WheelError(f"{fn}: RECORD is not readable: {exc}") from None
    for row in rows:
        if not row:
            continue
        if len(row) != 3:
            raise WheelError(f"{fn}: RECORD row {row!r} does not have 3 fields")
        path, digest, size = row
        if path in listed:
            raise WheelError(f"{fn}: RECORD lists {path!r} twice")
        listed[path] = (digest, size)
    exempt = {f"{dist_info}/RECORD", *(f"{dist_info}/{s}" for s in _SIGNATURES)}
    for name, info in files.items():
        if name in exempt:
            continue
        if name not in listed:
            raise WheelError(f"{fn}: {name} is not in RECORD")
        digest, size = listed[name]
        algo, _, expected = digest.partition("=")
        if algo != "sha256":
            raise WheelError(f"{fn}: RECORD gives {name} a {algo or 'missing'} hash; sha256 is required")
        h = hashlib.sha256()
        with zf.open(info) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
        got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
        if got != expected.rstrip("="):
            raise WheelError(f"{fn}: RECORD hash mismatch for {name}: RECORD says sha256={expected}, the file is "
                             f"sha256={got}")
        if size and size != str(info.file_size):
            raise WheelError(f"{fn}: RECORD gives {name} {size} bytes, the file has {info.file_size}")
    for name in listed:
        if name not in files and name not in exempt:
            raise WheelError(f"{fn}: RECORD lists {name}, which the wheel does not hold")
