"""The intake tests' farm and inputs: an in-process farm (the env fixture) with a static upstream index
(the index fixture), the list of bad inputs every front end must refuse, and views of the database and
FARM_HOME to check that a refusal left nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

import farm.cli
from farm.config import get_settings, reset_settings
from farm.coordinator import dispatch
from farm.coordinator.submit import submit
from farm.db.models import Job, Source, Submission
from farm.db.session import session_scope
from farm.errors import FarmError, SdistError, UpstreamError
from farm.messages import JobSpec
from tests.helpers.indexes import StaticIndex, index
from tests.helpers.sdists import F, L, Z, make_good, pkg_info, sdist_members, write_tar, write_zip


PLATFORMS = ["linux-x86_64", "linux-aarch64"]


DB_FILES = {"farm.db", "farm.db-wal", "farm.db-shm", "farm.db-journal"}


def rows() -> dict[str, list[tuple]]:
    """Every Source, Submission and Job row (the columns a submission writes)."""
    with session_scope() as s:
        return {
            "source": [(r.id, r.sha256, r.name, r.version, r.filename, r.size, r.storage_key, r.upstream_url,
                        r.requires_python) for r in s.scalars(select(Source).order_by(Source.id))],
            "submission": [(r.id, r.kind, r.request, r.parent_job_id)
                           for r in s.scalars(select(Submission).order_by(Submission.id))],
            "job": [(r.id, r.submission_id, r.source_id, r.platform, r.python, r.build_id, r.engine, r.cache_key,
                     r.state, r.attempt, r.cached_from_id, r.error)
                    for r in s.scalars(select(Job).order_by(Job.id))],
        }


def tree(root: Path, *, skip: Path | None = None) -> dict[str, str]:
    """Every path below `root` (not below `skip`): files by sha256, directories and links marked."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in root.rglob("*"):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def home_tree(home: Path) -> dict[str, str]:
    """FARM_HOME without the database files and the (empty) tmp folder itself."""
    return {k: v for k, v in tree(home).items() if k not in DB_FILES and k != "tmp"}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Bad:
    id: str
    make: Callable[[Path, StaticIndex], str]  # (scratch root, upstream) -> the request
    error: type[FarmError]
    exit_code: int
    words: tuple[str, ...]  # regular expressions the message must contain
    env: dict[str, str] = field(default_factory=dict)


def _inputs(root: Path, case: str) -> Path:
    folder = root / "inputs" / case
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _file(case: str, filename: str, write: Callable[[Path, Path], None]) -> Callable[[Path, StaticIndex], str]:
    def make(root: Path, _index: StaticIndex) -> str:
        path = _inputs(root, case) / filename
        write(path, root)
        return str(path)
    return make


def _tar(members: Callable[[Path], list]) -> Callable[[Path, Path], None]:
    return lambda path, root: write_tar(path, members(root)) and None


def _zip(members: Callable[[Path], list]) -> Callable[[Path, Path], None]:
    return lambda path, root: write_zip(path, members(root)) and None


def _random(path: Path, _root: Path) -> None:
    path.write_bytes(os.urandom(4000).replace(b"\x1f", b"x").replace(b"PK", b"pk"))


def _wheel(path: Path, _root: Path) -> None:
    write_zip(path, [Z("whl/__init__.py"), Z("whl-1.0.dist-info/METADATA", b"Name: whl\nVersion: 1.0\n"),
                     Z("whl-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")])


def _bomb_pax(_root: Path) -> list:
    ti, data = F("bomb-1.0/setup.py")
    ti.pax_headers = {"comment": "x" * (4 << 20)}  # tiny declared sizes, a huge decompressed stream
    return [*sdist_members("bomb-1.0", "bomb", "1.0"), (ti, data)]


def _req(request: str) -> Callable[[Path, StaticIndex], str]:
    return lambda _root, _index: request


BAD: list[Bad] = [
    # not an sdist
    Bad("random-bytes-tar-gz", _file("random-bytes-tar-gz", "junk-1.0.tar.gz", _random), SdistError, 4,
        ("junk-1.0.tar.gz", "not gzip-compressed", "not a .tar.gz sdist")),
    Bad("random-bytes-zip", _file("random-bytes-zip", "junk-1.0.zip", _random), SdistError, 4,
        ("junk-1.0.zip", "not a zip archive")),
    Bad("wheel-renamed-tar-gz", _file("wheel-renamed-tar-gz", "whl-1.0.tar.gz", _wheel), SdistError, 4,
        ("whl-1.0.tar.gz", "is a wheel, not a gzip-compressed tar archive")),
    Bad("wheel-renamed-zip", _file("wheel-renamed-zip", "whl-1.0.zip", _wheel), SdistError, 4,
        ("whl-1.0.zip", r"is a wheel \(it has 'whl-1.0.dist-info/WHEEL'\), not an sdist")),
    Bad("wheel", _file("wheel", "whl-1.0-py3-none-any.whl", _wheel), SdistError, 4,
        ("whl-1.0-py3-none-any.whl", "not an sdist", r"must end in \.tar\.gz or \.zip")),
    Bad("txt", _file("txt", "notes.txt", lambda p, _r: p.write_text("just some notes\n") and None), SdistError, 4,
        ("notes.txt", "not an sdist", r"must end in \.tar\.gz or \.zip")),
    # PEP 625: the file name and the archive disagree
    Bad("name-mismatch", _file("name-mismatch", "foo-1.0.tar.gz",
                               _tar(lambda _r: sdist_members("bar-2.0", "bar", "2.0"))),
        SdistError, 4, ("foo-1.0.tar.gz", "PKG-INFO says the project is 'bar', but the file name says 'foo'")),
    Bad("version-mismatch", _file("version-mismatch", "foo-1.0.tar.gz",
                                  _tar(lambda _r: sdist_members("foo-1.0", "foo", "1.0", meta=pkg_info("foo", "2.0")))),
        SdistError, 4, ("foo-1.0.tar.gz", "PKG-INFO says version '2.0', but the file name says '1.0'")),
    # hostile members
    Bad("absolute-member", _file("absolute-member", "abs-1.0.tar.gz",
                                 _tar(lambda r: [*sdist_members("abs-1.0", "abs", "1.0"),
                                                 F(str(r / "abs-evil"), b"pwned")])),
        SdistError, 4, ("abs-1.0.tar.gz", "member '/.*/abs-evil' has an absolute path")),
    Bad("dotdot-member", _file("dotdot-member", "dots-1.0.tar.gz",
                               _tar(lambda _r: [*sdist_members("dots-1.0", "dots", "1.0"),
                                                F("dots-1.0/../../evil", b"pwned")])),
        SdistError, 4, ("dots-1.0.tar.gz", r"member 'dots-1.0/../../evil' has a '\.\.' component", "outside the tree")),
    Bad("dotdot-first", _file("dotdot-first", "dots-1.0.tar.gz",
                              _tar(lambda _r: [F("../evil", b"pwned"), *sdist_members("dots-1.0", "dots", "1.0")])),
        SdistError, 4, ("dots-1.0.tar.gz", r"member '\.\./evil' has a '\.\.' component")),
    Bad("dotdot-zip", _file("dotdot-zip", "dots-1.0.zip",
                            _zip(lambda _r: [Z("dots-1.0/"), Z("dots-1.0/PKG-INFO", pkg_info("dots", "1.0")),
                                             Z("dots-1.0/../../evil", b"pwned")])),
        SdistError, 4, ("dots-1.0.zip", r"member 'dots-1.0/../../evil' has a '\.\.' component")),
    Bad("symlink-out", _file("symlink-out", "link-1.0.tar.gz",
                             _tar(lambda _r: [*sdist_members("link-1.0", "link", "1.0"),
                                              L("link-1.0/src/outside", "../../../outside")])),
        SdistError, 4, ("link-1.0.tar.gz", "member 'link-1.0/src/outside' is a symlink to '../../../outside'",
                        "points outside the tree")),
    Bad("symlink-absolute", _file("symlink-absolute", "link-1.0.tar.gz",
                                  _tar(lambda r: [*sdist_members("link-1.0", "link", "1.0"),
                                                  L("link-1.0/outside", str(r / "outside"))])),
        SdistError, 4, ("link-1.0.tar.gz", "member 'link-1.0/outside' is a symlink to the absolute path")),
    Bad("symlink-out-zip", _file("symlink-out-zip", "link-1.0.zip",
                                 _zip(lambda _r: [Z("link-1.0/"), Z("link-1.0/PKG-INFO", pkg_info("link", "1.0")),
                                                  Z("link-1.0/outside", b"../../outside", mode=stat.S_IFLNK | 0o777)])),
        SdistError, 4, ("link-1.0.zip", "is a symlink to '../../outside', which points outside the tree")),
    # size limits
    Bad("too-big", _file("too-big", "big-1.0.tar.gz",
                         _tar(lambda _r: [*sdist_members("big-1.0", "big", "1.0"),
                                          F("big-1.0/noise.bin", os.urandom(5000))])),
        SdistError, 4, ("big-1.0.tar.gz", r"file is \d+ bytes, over the limit of 2000 bytes"),
        env={"FARM_MAX_SDIST_BYTES": "2000"}),
    Bad("bomb-declared", _file("bomb-declared", "bomb-1.0.tar.gz",
                               _tar(lambda _r: [*sdist_members("bomb-1.0", "bomb", "1.0"),
                                                F("bomb-1.0/zeros.bin", b"\0" * 1_000_000)])),
        SdistError, 4, ("bomb-1.0.tar.gz", "members unpack to more than 100000 bytes", "archive bomb"),
        env={"FARM_MAX_UNPACKED_BYTES": "100000"}),
    Bad("bomb-gzip-stream", _file("bomb-gzip-stream", "bomb-1.0.tar.gz", _tar(_bomb_pax)),
        SdistError, 4, ("bomb-1.0.tar.gz", "decompressed data exceeds", "archive bomb"),
        env={"FARM_MAX_UNPACKED_BYTES": "100000", "FARM_MAX_MEMBERS": "50"}),
    Bad("bomb-zip", _file("bomb-zip", "bomb-1.0.zip",
                          _zip(lambda _r: [Z("bomb-1.0/"), Z("bomb-1.0/PKG-INFO", pkg_info("bomb", "1.0")),
                                           Z("bomb-1.0/zeros.bin", b"\0" * 2_000_000)])),
        SdistError, 4, ("bomb-1.0.zip", "members unpack to more than 1000000 bytes", "archive bomb"),
        env={"FARM_MAX_UNPACKED_BYTES": "1000000"}),
    # paths that do not exist
    Bad("missing-sdist-path", lambda root, _i: str(root / "inputs" / "nowhere" / "ghost-1.0.tar.gz"), FarmError, 1,
        ("ghost-1.0.tar.gz", "no such file")),
    Bad("missing-path", lambda root, _i: str(root / "inputs" / "nowhere" / "ghost"), FarmError, 1,
        ("nowhere/ghost", "neither an sdist file nor a requirement")),
    # not a requirement
    Bad("not-a-requirement", _req("foo bar baz"), FarmError, 1,
        ("'foo bar baz'", "neither an sdist file nor a requirement like NAME==VERSION")),
    Bad("pin-not-a-version", _req("remote===one"), FarmError, 1, ("'remote===one'", "[Ii]nvalid version")),
    # upstream
    Bad("unknown-project", _req("nope==1.0"), UpstreamError, 5, ("project 'nope' is not on http://127.0.0.1:",)),
    Bad("unknown-version", _req("remote==9.9"), UpstreamError, 5,
        (r"remote has no version 9\.9 on http://127\.0\.0\.1:\d+/simple/", r"newest available: 3\.0, 2\.0, 1\.0")),
    Bad("wheel-only-version", _req("remote==3.0"), UpstreamError, 5,
        (r"remote 3\.0 has no sdist", "only built distributions")),
    Bad("nothing-satisfies", _req("remote>=50"), UpstreamError, 5,
        ("no sdist on http://127.0.0.1:", "satisfies 'remote>=50'")),
    Bad("sha256-mismatch", _req("remote==2.0"), UpstreamError, 5,
        ("remote-2.0.tar.gz: sha256 mismatch", "the index says " + hashlib.sha256(b"what the index claims").hexdigest(),
         "the downloaded file has [0-9a-f]{64}")),
    Bad("no-sha256-upstream", _req("nohash==1.0"), UpstreamError, 5,
        ("nohash-1.0.tar.gz", "gives no sha256", "cannot be checked")),
    Bad("upstream-pkg-info-mismatch", _req("liar==1.0"), SdistError, 4,
        ("liar-1.0.tar.gz", "PKG-INFO says the project is 'other', but the file name says 'liar'")),
]


EVIL_NAMES = ("evil", "abs-evil", "outside")


def assert_message(message: str, case: Bad) -> None:
    for word in case.words:
        assert re.search(word, message), f"{word!r} not in {message!r}"


@dataclass
class Env:
    home: Path
    root: Path
    cwd: Path
    index: StaticIndex
    sent: list[JobSpec]


@pytest.fixture
def env(farm_home: Path, tmp_path: Path, index: StaticIndex, monkeypatch: pytest.MonkeyPatch) -> Env:
    for var in list(os.environ):
        if var.startswith("FARM_") and var not in ("FARM_HOME", "FARM_PYTHONS"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("FARM_UPSTREAM_INDEX", index.url)
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(PLATFORMS))
    # Submission itself, one job per platform: how many jobs a pure or abi3 sdist makes is tests/test_matrix.py's.
    monkeypatch.setattr("farm.coordinator.submit.sdist_kind", lambda path: "platform")
    reset_settings()
    farm.cli.ensure_db()
    sent: list[JobSpec] = []
    monkeypatch.setattr(dispatch, "send", lambda specs: sent.extend(specs))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return Env(home=farm_home, root=tmp_path, cwd=cwd, index=index, sent=sent)


def submit_good(env: Env) -> tuple[Path, int]:
    """Submit good-1.0.tar.gz; return its path and Source id."""
    path = make_good(env.root / "good")
    result = submit(str(path), settings=get_settings())
    with session_scope() as s:
        source = s.scalar(select(Source).where(Source.sha256 == sha256_of(path)))
        assert source is not None and (result.name, result.version) == ("good", "1.0")
        return path, source.id


def check_refused(env: Env, monkeypatch: pytest.MonkeyPatch, case: Bad) -> str:
    """Submit the good sdist, then `case`: refused with a clear message, nothing recorded or left."""
    good, _ = submit_good(env)
    good_digest = sha256_of(good)
    request = case.make(env.root, env.index)
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    reset_settings()

    rows_before, home_before = rows(), home_tree(env.home)
    outside_before = tree(env.root, skip=env.home)
    sent_before = list(env.sent)
    with pytest.raises(FarmError) as info:
        submit(request, settings=get_settings())
    assert type(info.value) is case.error, repr(info.value)
    assert info.value.exit_code == case.exit_code
    message = str(info.value)
    assert_message(message, case)

    assert rows() == rows_before  # no Source, Submission or Job added; the good ones untouched
    assert env.sent == sent_before
    assert home_tree(env.home) == home_before  # nothing new in storage/sdists or elsewhere
    assert not (env.home / "tmp").exists() or list((env.home / "tmp").iterdir()) == []
    assert tree(env.root, skip=env.home) == outside_before  # nothing written outside FARM_HOME
    for name in EVIL_NAMES:
        assert not list(env.root.rglob(name)), name
        assert not (env.home.parent.parent / name).exists()
    assert Path.cwd() == env.cwd and list(env.cwd.iterdir()) == []
    with session_scope() as s:
        (source,) = s.scalars(select(Source).where(Source.name == "good")).all()
        assert source.sha256 == good_digest
        assert sha256_of(env.home / "storage" / source.storage_key) == good_digest
    return message
