"""The upstream index client against a static PEP 503 tree served from tmp_path on 127.0.0.1.

The local project `foo` has: 1.0 (.tar.gz and a wheel), 1.1 (.zip only), 1.5 (Requires-Python
>=3.12), 2.0 (yanked), 2.1b1 (prerelease), 3.0 (wheel only) and 0.9 (listed with a wrong sha256);
`bar` is served as PEP 691 JSON; `baz` lists a file the server does not have. Covered:
  * find_sdist: exact version (and 1.0.0 for 1.0), a yanked version asked for exactly, unknown
    project (404), unknown version (message lists the newest versions), a version with only
    wheels, an invalid version, an invalid project name
  * best_sdist: newest fitting version; requires-python excluding the newest; prereleases only
    when the specifier names one; yanked skipped unless pinned with ==; nothing fits -> None;
    invalid requirement / direct URL refused
  * project_files: sdists only, pages cached for the client's lifetime, JSON preferred in Accept
  * download: sha256 checked, file renamed into place, no temporary left; a digest mismatch raises
    with both digests and leaves nothing behind; HTTP 404 on the file
One network test (marked `network`) finds and downloads pyyaml 6.0.2's sdist from pypi.org.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.errors import UpstreamError
from farm.index.upstream import Upstream, UpstreamFile
from tests.helpers.indexes import JSON_TYPE, _Handler


# A static index ----------------------------------------------------------------------------------


def _content(filename: str) -> bytes:
    return f"contents of {filename}\n".encode() * 100


FOO_FILES = [
    # filename, requires-python, yanked reason, lie about the digest
    ("foo-0.9.tar.gz", None, None, True),
    ("foo-1.0.tar.gz", ">=3.8", None, False),
    ("foo-1.0-py3-none-any.whl", ">=3.8", None, False),
    ("foo-1.1.zip", ">=3.8", None, False),
    ("foo-1.5.tar.gz", ">=3.12", None, False),
    ("foo-2.0.tar.gz", ">=3.8", "broken build", False),
    ("foo-2.1b1.tar.gz", ">=3.8", None, False),
    ("foo-3.0-py3-none-any.whl", ">=3.8", None, False),
    ("foo-1.0.linux-x86_64.tar.gz", None, None, False),  # a bdist_dumb: not an sdist
    ("foo-missing-4.0.tar.gz", None, None, False),  # another project's name: ignored
]


def _write_repo(root: Path) -> None:
    (root / "files").mkdir(parents=True)
    links = []
    for fn, rp, yanked, lie in FOO_FILES:
        data = _content(fn)
        (root / "files" / fn).write_bytes(data)
        digest = hashlib.sha256(b"something else" if lie else data).hexdigest()
        attrs = ""
        if rp:
            attrs += f' data-requires-python="{html.escape(rp)}"'
        if yanked:
            attrs += f' data-yanked="{html.escape(yanked)}"'
        links.append(f'<a href="../../files/{fn}#sha256={digest}"{attrs}>{fn}</a><br/>')
    page = "<!DOCTYPE html>\n<html><body><h1>Links for foo</h1>\n" + "\n".join(links) + "\n</body></html>\n"
    (root / "simple" / "foo").mkdir(parents=True)
    (root / "simple" / "foo" / "index.html").write_text(page)
    (root / "simple" / "index.html").write_text('<a href="foo/">foo</a>\n<a href="bar/">bar</a>\n<a href="baz/">baz</a>\n')
    (root / "simple" / "baz").mkdir()  # lists a file the server does not have, without a digest
    (root / "simple" / "baz" / "index.html").write_text('<a href="../../files/baz-4.0.tar.gz">baz-4.0.tar.gz</a>\n')

    bar = _content("bar-0.5.tar.gz")
    (root / "files" / "bar-0.5.tar.gz").write_bytes(bar)
    (root / "simple" / "bar").mkdir()
    (root / "simple" / "bar" / "index.json").write_text(json.dumps({
        "meta": {"api-version": "1.1"},
        "name": "bar",
        "versions": ["0.5", "0.6"],
        "files": [
            {"filename": "bar-0.5.tar.gz", "url": "../../files/bar-0.5.tar.gz",
             "hashes": {"sha256": hashlib.sha256(bar).hexdigest()}, "requires-python": ">=3.10"},
            {"filename": "bar-0.6-py3-none-any.whl", "url": "../../files/bar-0.6-py3-none-any.whl",
             "hashes": {}, "yanked": False},
        ],
    }))


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(simple index URL, the requests the server saw since the test started)."""
    root = tmp_path_factory.mktemp("repo")
    _write_repo(root)
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_Handler,), {"requests": seen})

    def make(*args: object, **kwargs: object) -> _Handler:
        return handler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    server = ThreadingHTTPServer(("127.0.0.1", 0), make)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture()
def up(index: tuple[str, list]) -> Iterator[Upstream]:
    index[1].clear()
    with Upstream(index[0], timeout=10) as client:
        yield client


# find_sdist ---------------------------------------------------------------------------------------


def test_find_sdist(up: Upstream, index: tuple[str, list]) -> None:
    f = up.find_sdist("Foo", "1.0")
    base = index[0].removesuffix("simple/")
    assert f == UpstreamFile(project="foo", version="1.0", filename="foo-1.0.tar.gz", url=f"{base}files/foo-1.0.tar.gz",
                             sha256=hashlib.sha256(_content("foo-1.0.tar.gz")).hexdigest(),
                             requires_python=">=3.8", yanked=False)
    assert up.find_sdist("foo", "1.0.0") == f
    assert up.find_sdist("foo", "1.1").filename == "foo-1.1.zip"


def test_find_sdist_yanked_when_asked_exactly(up: Upstream) -> None:
    f = up.find_sdist("foo", "2.0")
    assert (f.filename, f.yanked) == ("foo-2.0.tar.gz", True)


def test_unknown_project(up: Upstream, index: tuple[str, list]) -> None:
    with pytest.raises(UpstreamError, match=f"project 'nope' is not on {index[0]}"):
        up.find_sdist("nope", "1.0")


def test_unknown_version_lists_newest(up: Upstream) -> None:
    with pytest.raises(UpstreamError, match=r"foo has no version 9\.9 on .*; newest available: "
                                            r"3\.0, 2\.1b1, 2\.0, 1\.5, 1\.1, \.\.\.$"):
        up.find_sdist("foo", "9.9")


def test_version_with_only_wheels(up: Upstream) -> None:
    with pytest.raises(UpstreamError, match=r"foo 3\.0 has no sdist on"):
        up.find_sdist("foo", "3.0")


def test_invalid_inputs(up: Upstream) -> None:
    with pytest.raises(UpstreamError, match="not a valid version"):
        up.find_sdist("foo", "one")
    with pytest.raises(UpstreamError, match="not a valid project name"):
        up.find_sdist("../etc", "1.0")
    with pytest.raises(UpstreamError, match="invalid requirement"):
        up.best_sdist("foo >= >= 1", "3.11")
    with pytest.raises(UpstreamError, match="direct URL"):
        up.best_sdist("foo @ https://example.invalid/foo-1.0.tar.gz", "3.11")


# best_sdist --------------------------------------------------------------------------------------


@pytest.mark.parametrize("requirement, python, expected", [
    ("foo", "3.11", "1.1"),  # 1.5 needs 3.12, 2.0 is yanked, 2.1b1 is a prerelease, 3.0 has no sdist
    ("foo", "3.12", "1.5"),
    ("foo", "3.13.1", "1.5"),
    ("foo<1.1", "3.11", "1.0"),
    ("foo>=1.0,!=1.1", "3.11", "1.0"),
    ("foo>=2.1b1", "3.11", "2.1b1"),  # the specifier names a prerelease
    ("foo>=2.0", "3.11", None),  # 2.0 yanked, 2.1b1 not allowed, 3.0 wheel only
    ("foo==2.0", "3.11", "2.0"),  # PEP 592: an exact pin still selects a yanked release
    ("foo>=1.0", "3.7", None),  # every sdist >=1.0 needs 3.8
    ("foo<1.0", "3.7", "0.9"),  # no Requires-Python: admitted
    ("Foo[extra]>=1.0; python_version > '3'", "3.11", "1.1"),
    ("foo>=5", "3.11", None),
])
def test_best_sdist(up: Upstream, requirement: str, python: str, expected: str | None) -> None:
    f = up.best_sdist(requirement, python)
    assert (f.version if f else None) == expected


def test_best_sdist_unknown_project(up: Upstream) -> None:
    with pytest.raises(UpstreamError, match="project 'nope' is not on"):
        up.best_sdist("nope>=1", "3.11")


# project_files, caching, JSON --------------------------------------------------------------------


def test_project_files_sdists_only_and_cached(up: Upstream, index: tuple[str, list]) -> None:
    files = up.project_files("foo")
    assert [f.filename for f in files] == ["foo-0.9.tar.gz", "foo-1.0.tar.gz", "foo-1.1.zip", "foo-1.5.tar.gz",
                                           "foo-2.0.tar.gz", "foo-2.1b1.tar.gz"]
    assert files[3].requires_python == ">=3.12"  # HTML entities decoded
    up.find_sdist("FOO", "1.0")
    up.best_sdist("foo", "3.11")
    pages = [(path, accept) for path, accept in index[1] if path.startswith("/simple/")]
    assert len(pages) == 1
    assert pages[0][1].startswith(JSON_TYPE)  # JSON asked for first, HTML accepted


def test_json_page(up: Upstream, tmp_path: Path) -> None:
    f = up.find_sdist("bar", "0.5")
    assert (f.sha256, f.requires_python) == (hashlib.sha256(_content("bar-0.5.tar.gz")).hexdigest(), ">=3.10")
    assert up.download(f, tmp_path / "dl").read_bytes() == _content("bar-0.5.tar.gz")
    with pytest.raises(UpstreamError, match=r"bar 0\.6 has no sdist"):
        up.find_sdist("bar", "0.6")
    assert up.best_sdist("bar", "3.9") is None


# download -----------------------------------------------------------------------------------------


def test_download(up: Upstream, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    path = up.download(up.find_sdist("foo", "1.0"), dest)
    assert path == dest / "foo-1.0.tar.gz"
    assert path.read_bytes() == _content("foo-1.0.tar.gz")
    assert [p.name for p in dest.iterdir()] == ["foo-1.0.tar.gz"]


def test_download_digest_mismatch(up: Upstream, tmp_path: Path) -> None:
    f = up.find_sdist("foo", "0.9")
    actual = hashlib.sha256(_content("foo-0.9.tar.gz")).hexdigest()
    dest = tmp_path / "dl"
    with pytest.raises(UpstreamError, match=f"foo-0.9.tar.gz: sha256 mismatch: the index says {f.sha256}, "
                                            f"the downloaded file has {actual}"):
        up.download(f, dest)
    assert list(dest.iterdir()) == []


def test_download_missing_file(up: Upstream, tmp_path: Path) -> None:
    f = up.find_sdist("baz", "4.0")
    assert f.sha256 is None
    with pytest.raises(UpstreamError, match="cannot download .*baz-4.0.tar.gz: HTTP 404"):
        up.download(f, tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_download_refuses_path_in_filename(up: Upstream, tmp_path: Path) -> None:
    f = up.find_sdist("foo", "1.0")
    bad = UpstreamFile(**{**f.__dict__, "filename": "../foo-1.0.tar.gz"})
    with pytest.raises(UpstreamError, match="refusing to download"):
        up.download(bad, tmp_path / "dl")


# The real upstream --------------------------------------------------------------------------------


@pytest.mark.network
def test_pypi_pyyaml(tmp_path: Path) -> None:
    from farm.util.archive import Limits, inspect_sdist
    from farm.util.hashing import sha256_file

    with Upstream("https://pypi.org/simple/") as up:
        f = up.find_sdist("PyYAML", "6.0.2")
        assert (f.project, f.version, f.filename) == ("pyyaml", "6.0.2", "pyyaml-6.0.2.tar.gz")
        assert f.sha256 == "d584d9ec91ad65861cc08d42e834324ef890a082e591037abe114850ff7bbc3e"
        path = up.download(f, tmp_path)
    assert sha256_file(path) == f.sha256
    info = inspect_sdist(path, Limits(200 << 20, 2 << 30, 100_000), expect_name="pyyaml", expect_version="6.0.2")
    assert (info.name, info.version, info.top_dir) == ("pyyaml", "6.0.2", "pyyaml-6.0.2")
