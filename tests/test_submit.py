"""Submit (`farm.coordinator.submit.submit`) in-process, without a worker and without the network.

The upstream is a static PEP 503 index served from tmp_path on 127.0.0.1 (FARM_UPSTREAM_INDEX);
build messages are caught by replacing `dispatch.send`. A good sdist (`good-1.0.tar.gz`, made by
hand with tarfile) is submitted before every bad input.

Happy path:
  * a valid sdist: one Source with the file's sha256 (the stored copy has it too), one queued Job
    per planned target, one build message per job carrying the JobSpec fields
  * the same sdist again: new Jobs pointing at the first ones (cached_from_id), no message sent
  * a requirement NAME==VERSION resolved on the local upstream (sha256 from the #sha256 fragment):
    Source with upstream_url; resubmitting it works with the upstream stopped

Bad inputs; each is refused with a message naming the problem (asserted on key words), and
afterwards no Source/Submission/Job row was added, the good sdist's rows and stored file are
unchanged, no message was sent, nothing new is in FARM_HOME (storage/sdists, tmp) and nothing
was written outside FARM_HOME (no `evil`/`abs-evil`/`outside` file, the cwd unchanged and empty):
  * not an sdist: random bytes named .tar.gz, a wheel renamed .tar.gz, a wheel renamed .zip,
    a wheel under its own .whl name, a .txt file, random bytes named .zip
  * name/version not matching the archive (PEP 625): foo-1.0.tar.gz holding bar-2.0 PKG-INFO,
    foo-1.0.tar.gz holding foo 2.0
  * hostile members: an absolute path, `..` components (tar: after the top directory and as the
    first member; zip), symlinks out of the tree (relative, absolute; tar and zip)
  * over FARM_MAX_SDIST_BYTES; archive bombs over FARM_MAX_UNPACKED_BYTES (declared tar sizes,
    a gzip stream inflated by a huge pax header, a zip of zeros)
  * a path that does not exist (with an sdist suffix, and without one)
  * not a requirement ("foo bar baz"), an `===` pin that is not a version
  * upstream: unknown project, unknown version, a version with only wheels, nothing satisfying
    a range, a sha256 mismatch between the index record and the downloaded file, an index record
    without sha256, a download whose PKG-INFO names another project

Also (each once a bug): a directory is reported as a directory; a request longer than a file name
is not taken for a path; an sdist no target can build is not left in storage; the stored sdist
is a copy, not a link to the submitted file; an index record carrying the sha256 of another
project's stored sdist is refused; a pin spelled 1.0.0 for a known 1.0 does not ask upstream.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

import farm.cli
from farm.config import get_settings, reset_settings
from farm.coordinator import dispatch
from farm.coordinator.plan import plan
from farm.coordinator.submit import submit
from farm.db.models import Job, Source, Submission
from farm.db.session import session_scope
from farm.errors import FarmError, SdistError, UpstreamError
from farm.messages import JobSpec
from farm.storage import sdist_key
from tests.test_archive import F, L, Z, pkg_info, sdist_members, write_tar, write_zip
from tests.test_upstream import _Handler

# Two platforms, so that "one job per target" means more than one.
PLATFORMS = ["linux-x86_64", "linux-aarch64"]
DB_FILES = {"farm.db", "farm.db-wal", "farm.db-shm", "farm.db-journal"}


# A static upstream index -------------------------------------------------------------------------


class StaticIndex:
    """A PEP 503 index in a folder (simple/<project>/index.html, files/), served until stop()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "simple").mkdir(parents=True)
        (root / "files").mkdir()
        self.requests: list[tuple[str, str]] = []
        self._links: dict[str, list[str]] = {}
        handler = type("Handler", (_Handler,), {"requests": self.requests})

        def make(*args: object, **kwargs: object) -> _Handler:
            return handler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), make)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._running = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple/"
        self.files_url = self.url.removesuffix("simple/") + "files/"

    def add(self, project: str, filename: str, data: bytes, *, digest: str | None = "auto") -> str | None:
        """Serve `data` as `filename` of `project`; the link carries `digest` (default: the true sha256)."""
        (self.root / "files" / filename).write_bytes(data)
        if digest == "auto":
            digest = hashlib.sha256(data).hexdigest()
        fragment = f"#sha256={digest}" if digest else ""
        self._links.setdefault(project, []).append(f'<a href="../../files/{filename}{fragment}">{filename}</a><br/>')
        folder = self.root / "simple" / project
        folder.mkdir(exist_ok=True)
        (folder / "index.html").write_text("<!DOCTYPE html>\n<html><body>\n" + "\n".join(self._links[project])
                                           + "\n</body></html>\n")
        return digest

    def stop(self) -> None:
        if self._running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._running = False


def tar_bytes(folder: Path, filename: str, members: list) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar(folder / filename, members).read_bytes()


def populate(index: StaticIndex, scratch: Path) -> None:
    """remote 1.0 (good), remote 2.0 (listed with a wrong sha256), remote 3.0 (a wheel only),
    liar 1.0 (its PKG-INFO says `other`), nohash 1.0 (listed without a sha256)."""
    index.add("remote", "remote-1.0.tar.gz", tar_bytes(scratch, "remote-1.0.tar.gz",
                                                       sdist_members("remote-1.0", "remote", "1.0")))
    index.add("remote", "remote-2.0.tar.gz", tar_bytes(scratch, "remote-2.0.tar.gz",
                                                       sdist_members("remote-2.0", "remote", "2.0")),
              digest=hashlib.sha256(b"what the index claims").hexdigest())
    index.add("remote", "remote-3.0-py3-none-any.whl", b"not really a wheel")
    index.add("liar", "liar-1.0.tar.gz", tar_bytes(scratch, "liar-1.0.tar.gz",
                                                   sdist_members("liar-1.0", "liar", "1.0",
                                                                 meta=pkg_info("other", "1.0"))))
    index.add("nohash", "nohash-1.0.tar.gz", tar_bytes(scratch, "nohash-1.0.tar.gz",
                                                       sdist_members("nohash-1.0", "nohash", "1.0")), digest=None)


# Snapshots: rows and files -----------------------------------------------------------------------


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


# Bad inputs, shared with tests/test_cli_errors.py ------------------------------------------------


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

# Names a hostile archive might have created if anything had unpacked it.
EVIL_NAMES = ("evil", "abs-evil", "outside")


def assert_message(message: str, case: Bad) -> None:
    for word in case.words:
        assert re.search(word, message), f"{word!r} not in {message!r}"


def make_good(folder: Path, name: str = "good", version: str = "1.0", *, requires_python: str | None = ">=3.9") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    top = f"{name}-{version}"
    return write_tar(folder / f"{top}.tar.gz",
                     sdist_members(top, name, version, meta=pkg_info(name, version, requires_python)))


# Fixtures ----------------------------------------------------------------------------------------


@dataclass
class Env:
    home: Path
    root: Path
    cwd: Path
    index: StaticIndex
    sent: list[JobSpec]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[StaticIndex]:
    idx = StaticIndex(tmp_path / "upstream")
    populate(idx, tmp_path / "upstream-build")
    yield idx
    idx.stop()


@pytest.fixture
def env(farm_home: Path, tmp_path: Path, index: StaticIndex, monkeypatch: pytest.MonkeyPatch) -> Env:
    for var in list(os.environ):
        if var.startswith("FARM_") and var != "FARM_HOME":
            monkeypatch.delenv(var)
    monkeypatch.setenv("FARM_UPSTREAM_INDEX", index.url)
    monkeypatch.setenv("FARM_PLATFORMS", json.dumps(PLATFORMS))
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


# Happy path ------------------------------------------------------------------------------------------


def test_submit_valid_sdist(env: Env) -> None:
    path = make_good(env.root / "good")
    digest = sha256_of(path)
    settings = get_settings()
    result = submit(str(path), settings=settings)

    targets = plan(name="good", version="1.0", sdist_sha256=digest, requires_python=">=3.9", settings=settings)
    assert len(targets) == len(PLATFORMS)
    with session_scope() as s:
        (source,) = s.scalars(select(Source)).all()
        assert (source.sha256, source.name, source.version, source.filename, source.size, source.upstream_url,
                source.requires_python) == \
            (digest, "good", "1.0", "good-1.0.tar.gz", path.stat().st_size, None, ">=3.9")
        assert source.storage_key == sdist_key(digest, "good-1.0.tar.gz")
        assert sha256_of(env.home / "storage" / source.storage_key) == digest
        (submission,) = s.scalars(select(Submission)).all()
        assert (submission.kind, submission.request, submission.parent_job_id) == ("file", str(path), None)
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [(j.platform, j.python, j.build_id, j.cache_key) for j in jobs] == \
            [(t.platform, t.python, t.build_id, t.cache_key) for t in targets]
        assert all(j.state == "queued" and j.attempt == 1 and j.cached_from_id is None and j.source_id == source.id
                   and j.submission_id == submission.id for j in jobs)
        assert result.submission_id == submission.id
        assert result.jobs == [(j.id, j.build_id, "queued") for j in jobs]
        job_rows = [(j.id, j.platform, j.python, j.build_id, j.engine, j.recipe_name, j.recipe_digest, j.recipe)
                    for j in jobs]

    assert len(env.sent) == len(job_rows)
    for spec, row in zip(env.sent, job_rows, strict=True):
        job_id, platform, python, build_id, engine, recipe_name, recipe_digest, options = row
        assert isinstance(spec, JobSpec)
        assert (spec.job_id, spec.attempt, spec.name, spec.version) == (job_id, 1, "good", "1.0")
        assert (spec.sdist.filename, spec.sdist.sha256, spec.sdist.size, spec.sdist.storage_key) == \
            ("good-1.0.tar.gz", digest, path.stat().st_size, sdist_key(digest, "good-1.0.tar.gz"))
        assert (spec.platform, spec.python, spec.build_id, spec.engine) == (platform, python, build_id, engine)
        assert (spec.recipe_name, spec.recipe_digest, spec.options) == (recipe_name, recipe_digest, options)
        assert (spec.upstream_index, spec.resume, spec.build) == (env.index.url, "build", None)
    assert env.index.requests == []  # a file submission never asks the upstream


def test_submit_same_sdist_twice_reuses_jobs(env: Env) -> None:
    path = make_good(env.root / "good")
    first = submit(str(path), settings=get_settings())
    sent_first = list(env.sent)
    second = submit(str(path), settings=get_settings())
    assert env.sent == sent_first  # nothing new to build
    assert second.submission_id != first.submission_id
    with session_scope() as s:
        assert len(s.scalars(select(Source)).all()) == 1
        new_jobs = s.scalars(select(Job).where(Job.submission_id == second.submission_id).order_by(Job.id)).all()
        old_jobs = s.scalars(select(Job).where(Job.submission_id == first.submission_id).order_by(Job.id)).all()
        assert len(new_jobs) == len(old_jobs) == len(PLATFORMS)
        assert [j.cached_from_id for j in new_jobs] == [j.id for j in old_jobs]
        assert [j.cache_key for j in new_jobs] == [j.cache_key for j in old_jobs]
        assert all(j.state == "queued" and j.source_id == old_jobs[0].source_id for j in new_jobs)
        assert all(j.cached_from_id is None and j.state == "queued" for j in old_jobs)


def test_submit_requirement_from_upstream_then_offline(env: Env) -> None:
    served = env.index.root / "files" / "remote-1.0.tar.gz"
    digest = sha256_of(served)
    first = submit("remote==1.0", settings=get_settings())
    assert (first.name, first.version) == ("remote", "1.0")
    assert any(path.endswith("/simple/remote/") for path, _ in env.index.requests)
    assert any(path.endswith("/files/remote-1.0.tar.gz") for path, _ in env.index.requests)
    with session_scope() as s:
        (source,) = s.scalars(select(Source)).all()
        assert (source.sha256, source.name, source.version, source.filename, source.size, source.upstream_url) == \
            (digest, "remote", "1.0", "remote-1.0.tar.gz", served.stat().st_size,
             env.index.files_url + "remote-1.0.tar.gz")
        assert sha256_of(env.home / "storage" / source.storage_key) == digest
        (submission,) = s.scalars(select(Submission)).all()
        assert (submission.kind, submission.request) == ("requirement", "remote==1.0")
        source_id = source.id
    assert [spec.sdist.sha256 for spec in env.sent] == [digest] * len(PLATFORMS)
    assert list((env.home / "tmp").iterdir()) == []  # the download folder is gone

    env.index.stop()  # the upstream is gone: a resubmission must not need it
    env.index.requests.clear()
    sent = list(env.sent)
    second = submit("Remote==1.0", settings=get_settings())
    assert (second.name, second.version) == ("remote", "1.0")
    assert env.index.requests == [] and env.sent == sent
    with session_scope() as s:
        assert [src.id for src in s.scalars(select(Source))] == [source_id]
        jobs = s.scalars(select(Job).where(Job.submission_id == second.submission_id)).all()
        assert len(jobs) == len(PLATFORMS) and all(j.cached_from_id is not None for j in jobs)


def test_resubmit_requirement_equal_version_offline(env: Env) -> None:
    submit("remote==1.0", settings=get_settings())
    env.index.stop()
    result = submit("remote==1.0.0", settings=get_settings())  # PEP 440: the same version
    assert (result.name, result.version) == ("remote", "1.0")


# Bad inputs -------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_input_refused(env: Env, monkeypatch: pytest.MonkeyPatch, case: Bad) -> None:
    check_refused(env, monkeypatch, case)


def test_directory_is_not_reported_missing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = env.root / "inputs" / "a-folder"
    folder.mkdir(parents=True)
    message = check_refused(env, monkeypatch, Bad("directory", lambda _r, _i: str(folder), FarmError, 1, ("a-folder",)))
    assert "no such file" not in message and "directory" in message


def test_overlong_request_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    check_refused(env, monkeypatch, Bad("overlong", _req("x" * 300 + " y"), FarmError, 1,
                                        ("neither an sdist file nor a requirement",)))


def test_no_build_target_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(root: Path, _index: StaticIndex) -> str:
        return str(make_good(_inputs(root, "ancient"), "ancient", "1.0", requires_python="<3"))

    check_refused(env, monkeypatch, Bad("no-target", make, FarmError, 1,
                                        ("ancient 1.0", "no build target", "Requires-Python <3")))


def test_index_record_with_sha256_of_another_project(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(root: Path, index: StaticIndex) -> str:
        good = root / "good" / "good-1.0.tar.gz"
        index.add("alias", "alias-2.0.tar.gz", b"whatever is served", digest=sha256_of(good))
        return "alias==2.0"

    check_refused(env, monkeypatch, Bad("alias", make, UpstreamError, 5, ("alias", "sha256 of good-1.0.tar.gz")))


def test_stored_sdist_survives_rewritten_input(env: Env) -> None:
    good, _ = submit_good(env)
    digest = sha256_of(good)
    good.write_bytes(b"oops, not an sdist any more")  # the same file, rewritten in place
    with pytest.raises(SdistError, match="not gzip-compressed"):
        submit(str(good), settings=get_settings())
    with session_scope() as s:
        source = s.scalar(select(Source).where(Source.name == "good"))
        assert source is not None and source.sha256 == digest
        assert sha256_of(env.home / "storage" / source.storage_key) == digest


def test_upstream_sdist_error_names_the_file_not_the_download_folder(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream case's message names the file, not the farm's temporary download folder."""
    message = check_refused(env, monkeypatch, next(c for c in BAD if c.id == "upstream-pkg-info-mismatch"))
    assert str(env.home / "tmp") not in message


def test_gzip_helper_is_really_a_bomb(tmp_path: Path) -> None:
    """The stream-bomb input is small on disk and large once decompressed (the case is meaningful)."""
    path = write_tar(tmp_path / "bomb-1.0.tar.gz", _bomb_pax(tmp_path))
    assert path.stat().st_size < 100_000
    assert len(gzip.decompress(path.read_bytes())) > 4 << 20
    with tarfile.open(path) as tf:
        assert all(m.size < 1000 for m in tf.getmembers())


def test_resubmission_after_gc_removed_the_wheels_builds_again(env: Env) -> None:
    """A succeeded build whose wheels `farm gc` removed (removed_at set) answers no resubmission: the
    same sdist is built again; while one wheel of it is live, the cache still answers."""
    import datetime as dt

    from farm.db.models import Artifact

    path = make_good(env.root / "good")
    first = submit(str(path), settings=get_settings())
    with session_scope() as s:
        old = s.scalars(select(Job).where(Job.submission_id == first.submission_id).order_by(Job.id)).all()
        for i, job in enumerate(old):
            job.state = "succeeded"
            s.add(Artifact(job=job, filename=f"good-1.0-{i}-py3-none-any.whl", sha256=f"{i:064x}", size=1, name="good",
                           version="1.0", tags=["py3-none-any"], requires_dist=[], storage_key=f"k{i}", verified=True,
                           removed_at=dt.datetime(2026, 1, 1) if i > 0 else None))
        old_ids = [j.id for j in old]
    sent = list(env.sent)
    second = submit(str(path), settings=get_settings())
    with session_scope() as s:
        new = s.scalars(select(Job).where(Job.submission_id == second.submission_id).order_by(Job.id)).all()
        assert new[0].cached_from_id == old_ids[0] and new[0].state == "succeeded"  # its wheel is live
        assert all(j.cached_from_id is None and j.state == "queued" for j in new[1:])  # removed: built again
    assert len(env.sent) == len(sent) + len(PLATFORMS) - 1
