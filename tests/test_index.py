"""The static simple index: its pages (read back with pypi_simple), its atomic one-project writes,
the server's content negotiation, and real pip and uv installs from it."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import sys
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from pypi_simple import IndexPage, ProjectPage

from tests.helpers.indexes import _Server


with warnings.catch_warnings():  # newer Starlette asks for `httpx2` and warns about `httpx`
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from farm.index import simple
from farm.index.serve import index_app, negotiate
from farm.index.simple import (
    IndexFile,
    PublishError,
    add_file,
    list_projects,
    publish,
    read_project,
    write_project,
    write_root,
)
from farm.util.cmd import clean_env, run

JSON = "application/vnd.pypi.simple.v1+json"
V1HTML = "application/vnd.pypi.simple.v1+html"
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
UV = Path(sys.executable).parent / "uv"  # the venv running the tests (worktrees have no .venv of their own)


# Wheels written by hand -------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    folder: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    requires: tuple[str, ...] = (),
    code: str | None = None,
) -> Path:
    """A minimal, valid, pure-Python wheel: one package `<name>` with `__init__.py`."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Summary: index test package"]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    members = {
        f"{dist}/__init__.py": (code if code is not None else f"VERSION = {version!r}\n").encode(),
        f"{info}/METADATA": ("\n".join(meta) + "\n\nA package for the index tests.\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in members.items())
    record += f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zi = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return path


def _metadata_of(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name)


def _publish_all(root: Path, wheels: dict[str, list[Path]], *, yank: dict[str, str | bool] | None = None) -> None:
    yank = yank or {}
    for project, paths in wheels.items():
        entries = []
        for p in paths:
            f = add_file(root, project, p)
            if p.name in yank:
                f = IndexFile(**{**f.__dict__, "yanked": yank[p.name]})
            entries.append(f)
        write_project(root, project, entries)
    write_root(root, wheels)


@pytest.fixture
def built(tmp_path: Path) -> dict[str, list[Path]]:
    src = tmp_path / "src"
    return {
        "farmidx-alpha": [
            make_wheel(src, "farmidx-alpha", "1.10", requires_python=">=3.8, <4"),
            make_wheel(src, "farmidx-alpha", "1.2", requires_python=">=3.8"),
            make_wheel(src, "farmidx-alpha", "1.9"),
        ],
        "farmidx-beta": [make_wheel(src, "farmidx-beta", "2.0", requires=("farmidx-alpha>=1.0",))],
    }


@pytest.fixture
def index(tmp_path: Path, built: dict[str, list[Path]]) -> Path:
    root = tmp_path / "index"
    _publish_all(root, built, yank={"farmidx_alpha-1.9-py3-none-any.whl": "broken <build> & \"quoted\""})
    return root


# Pages -----------------------------------------------------------------------------------------


def test_project_pages_parse_back(index: Path, built: dict[str, list[Path]]) -> None:
    page_dir = index / "simple" / "farmidx-alpha"
    base = "http://farm.test/simple/farmidx-alpha/"
    html_text = (page_dir / "index.html").read_text()
    assert '<meta name="pypi:repository-version" content="1.1">' in html_text
    from_html = ProjectPage.from_html("farmidx-alpha", html_text, base_url=base)
    from_json = ProjectPage.from_json_data(json.loads((page_dir / "index.json").read_bytes()), base_url=base)
    assert from_html.repository_version == from_json.repository_version == "1.1"
    wheels = {w.name: w for w in built["farmidx-alpha"]}
    expected_order = [
        "farmidx_alpha-1.2-py3-none-any.whl",
        "farmidx_alpha-1.9-py3-none-any.whl",
        "farmidx_alpha-1.10-py3-none-any.whl",
    ]
    for parsed in (from_html, from_json):
        assert [p.filename for p in parsed.packages] == expected_order
        for pkg in parsed.packages:
            wheel = wheels[pkg.filename]
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            meta_digest = hashlib.sha256(_metadata_of(wheel)).hexdigest()
            assert pkg.url == f"http://farm.test/files/farmidx-alpha/{pkg.filename}"
            assert pkg.digests == {"sha256": digest}
            assert pkg.has_metadata is True
            assert pkg.metadata_digests == {"sha256": meta_digest}
            assert canonicalize_name(pkg.project or "") == "farmidx-alpha" and pkg.package_type == "wheel"
        by_name = {p.filename: p for p in parsed.packages}
        assert by_name["farmidx_alpha-1.10-py3-none-any.whl"].requires_python == ">=3.8, <4"
        assert by_name["farmidx_alpha-1.2-py3-none-any.whl"].requires_python == ">=3.8"
        assert by_name["farmidx_alpha-1.9-py3-none-any.whl"].requires_python is None
        yanked = by_name["farmidx_alpha-1.9-py3-none-any.whl"]
        assert yanked.is_yanked and yanked.yanked_reason == 'broken <build> & "quoted"'
        assert not by_name["farmidx_alpha-1.2-py3-none-any.whl"].is_yanked
    # HTML-escaped attributes, both metadata attribute spellings (PEP 658 and PEP 714).
    assert 'data-requires-python="&gt;=3.8, &lt;4"' in html_text
    assert 'data-yanked="broken &lt;build&gt; &amp; &quot;quoted&quot;"' in html_text
    assert html_text.count("data-dist-info-metadata=") == html_text.count("data-core-metadata=") == 3
    # PEP 700 extras in JSON.
    assert from_json.versions == ["1.2", "1.9", "1.10"]
    for pkg in from_json.packages:
        assert pkg.size == wheels[pkg.filename].stat().st_size
        assert pkg.upload_time is not None and pkg.upload_time.tzinfo is not None
    data = json.loads((page_dir / "index.json").read_bytes())
    assert data["meta"] == {"api-version": "1.1"} and data["name"] == "farmidx-alpha"
    for entry in data["files"]:
        assert entry["upload-time"].endswith("Z")
        datetime.strptime(entry["upload-time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        # PEP 714 as PyPI serves it: never `dist-info-metadata`, on which pip 22.3 to 23.1 fail.
        assert entry["core-metadata"] == entry["data-dist-info-metadata"] == {"sha256": entry["core-metadata"]["sha256"]}
        assert "dist-info-metadata" not in entry
        assert entry["url"] == f"../../files/farmidx-alpha/{entry['filename']}"


def test_root_pages_parse_back(index: Path) -> None:
    html_text = (index / "simple" / "index.html").read_text()
    assert '<meta name="pypi:repository-version" content="1.1">' in html_text
    assert 'href="farmidx-alpha/"' in html_text
    from_html = IndexPage.from_html(html_text)
    from_json = IndexPage.from_json_data(json.loads((index / "simple" / "index.json").read_bytes()))
    assert from_html.projects == from_json.projects == ["farmidx-alpha", "farmidx-beta"]
    assert from_html.repository_version == from_json.repository_version == "1.1"


def test_write_root_normalizes_and_dedupes(tmp_path: Path) -> None:
    write_root(tmp_path, ["Foo_Bar", "foo.bar", "zeta", "Alpha"])
    data = json.loads((tmp_path / "simple" / "index.json").read_bytes())
    assert data == {"meta": {"api-version": "1.1"}, "projects": [{"name": "alpha"}, {"name": "foo-bar"}, {"name": "zeta"}]}


def test_metadata_files(index: Path, built: dict[str, list[Path]]) -> None:
    for project, wheels in built.items():
        for wheel in wheels:
            placed = index / "files" / project / wheel.name
            assert placed.read_bytes() == wheel.read_bytes()
            meta = (index / "files" / project / f"{wheel.name}.metadata").read_bytes()
            assert meta == _metadata_of(wheel)
    entries = {f.filename: f for f in read_project(index, "farmidx-beta")}
    (beta,) = built["farmidx-beta"]
    meta = (index / "files" / "farmidx-beta" / f"{beta.name}.metadata").read_bytes()
    assert entries[beta.name].metadata_sha256 == hashlib.sha256(meta).hexdigest()
    assert b"Requires-Dist: farmidx-alpha>=1.0" in meta


def test_read_project_round_trip(tmp_path: Path) -> None:
    files = [
        IndexFile(filename="pkg-1.0-py3-none-any.whl", sha256="a" * 64, size=10, requires_python=">=3.9",
                  metadata_sha256="b" * 64, upload_time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)),
        IndexFile(filename="pkg-1.0.tar.gz", sha256="c" * 64, size=20, yanked=True),
        IndexFile(filename="pkg-0.5-py3-none-any.whl", sha256="d" * 64, size=30, yanked="security hole",
                  upload_time=datetime(2024, 1, 1)),  # naive = UTC
    ]
    write_project(tmp_path, "Pkg", files)
    back = read_project(tmp_path, "pkg")
    assert [f.filename for f in back] == ["pkg-0.5-py3-none-any.whl", "pkg-1.0-py3-none-any.whl", "pkg-1.0.tar.gz"]
    assert sorted(back, key=lambda f: f.filename) == sorted(files, key=lambda f: f.filename)
    assert back[0].upload_time == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert read_project(tmp_path, "nothing-here") == []
    data = json.loads((tmp_path / "simple" / "pkg" / "index.json").read_bytes())
    sdist = next(e for e in data["files"] if e["filename"] == "pkg-1.0.tar.gz")
    assert sdist["core-metadata"] is False and sdist["yanked"] is True and "upload-time" not in sdist
    assert data["versions"] == ["0.5", "1.0"]


def test_index_file_validation() -> None:
    with pytest.raises(ValueError):
        IndexFile(filename="../evil.whl", sha256="a" * 64, size=1)
    with pytest.raises(ValueError):
        IndexFile(filename="ok-1.0-py3-none-any.whl", sha256="XYZ", size=1)
    assert IndexFile(filename="ok-1.0.tar.gz", sha256="a" * 64, size=1, yanked="").yanked is False


def test_write_project_rejects_duplicates(tmp_path: Path) -> None:
    f = IndexFile(filename="pkg-1.0.tar.gz", sha256="a" * 64, size=1)
    with pytest.raises(ValueError, match="twice"):
        write_project(tmp_path, "pkg", [f, f])


def test_add_file_checks_the_project(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src", "farmidx-alpha", "1.0")
    with pytest.raises(PublishError, match="not of 'other'"):
        add_file(tmp_path / "index", "other", wheel)
    broken = tmp_path / "src" / "broken-1.0-py3-none-any.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(PublishError, match="not a readable wheel"):
        add_file(tmp_path / "index", "broken", broken)


def test_add_file_hardlinks_on_the_same_file_system(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "src", "farmidx-alpha", "1.0")
    f = add_file(tmp_path / "index", "Farmidx_Alpha", wheel)
    placed = tmp_path / "index" / "files" / "farmidx-alpha" / wheel.name
    assert os.path.samefile(placed, wheel)
    assert f.sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest() and f.size == wheel.stat().st_size
    # Adding it again is harmless.
    assert add_file(tmp_path / "index", "farmidx-alpha", wheel).sha256 == f.sha256


def test_add_file_copies_across_file_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(simple.os, "link", no_link)
    wheel = make_wheel(tmp_path / "src", "farmidx-alpha", "1.0")
    add_file(tmp_path / "index", "farmidx-alpha", wheel)
    folder = tmp_path / "index" / "files" / "farmidx-alpha"
    placed = folder / wheel.name
    assert not os.path.samefile(placed, wheel)
    assert placed.read_bytes() == wheel.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == [wheel.name, f"{wheel.name}.metadata"]


def _mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_regenerating_one_project_touches_no_other(index: Path) -> None:
    old = 1_000_000_000
    for p in index.rglob("*"):
        os.utime(p, ns=(old, old))
    before = _mtimes(index)
    write_project(index, "farmidx-beta", read_project(index, "farmidx-beta"))
    after = _mtimes(index)
    assert set(after) == set(before)  # no new files, no leftovers
    changed = {p.relative_to(index).as_posix() for p in after if after[p] != before[p]}
    assert changed == {"simple/farmidx-beta/index.html", "simple/farmidx-beta/index.json"}


def test_failed_write_keeps_the_old_page(index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = index / "simple" / "farmidx-beta" / "index.json"
    before = page.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(simple.os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_project(index, "farmidx-beta", [])
    monkeypatch.undo()
    assert page.read_bytes() == before
    assert sorted(p.name for p in page.parent.iterdir()) == ["index.html", "index.json"]


def test_readers_never_see_a_partial_page(tmp_path: Path) -> None:
    small = [IndexFile(filename="pkg-1.0.tar.gz", sha256="a" * 64, size=1)]
    large = [IndexFile(filename=f"pkg-1.{i}.tar.gz", sha256="b" * 64, size=i) for i in range(2000)]
    write_project(tmp_path, "pkg", small)
    page = tmp_path / "simple" / "pkg" / "index.json"
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            write_project(tmp_path, "pkg", large)
            write_project(tmp_path, "pkg", small)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen.add(len(json.loads(page.read_bytes())["files"]))
    finally:
        stop.set()
        thread.join()
    assert seen <= {1, 2000} and seen
    assert sorted(p.name for p in page.parent.iterdir()) == ["index.html", "index.json"]


def test_write_project_with_2000_files(tmp_path: Path) -> None:
    """A large project page round-trips (its speed is measured in bench/index.py, not here)."""
    files = [
        IndexFile(
            filename=f"bigproject-{i // 10}.{i % 10}.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            sha256=hashlib.sha256(str(i).encode()).hexdigest(), size=100_000 + i, requires_python=">=3.9",
            metadata_sha256=hashlib.sha256(b"m%d" % i).hexdigest(), upload_time=datetime.now(timezone.utc),
        )
        for i in range(2000)
    ]
    write_project(tmp_path, "bigproject", files)
    back = read_project(tmp_path, "bigproject")
    assert len(back) == 2000 and {f.sha256 for f in back} == {f.sha256 for f in files}


def test_publish_adds_one_file(tmp_path: Path) -> None:
    root = tmp_path / "index"
    src = tmp_path / "src"
    publish(root, "farmidx-alpha", make_wheel(src, "farmidx-alpha", "1.0"))
    publish(root, "farmidx-alpha", make_wheel(src, "farmidx-alpha", "1.1"))
    publish(root, "Farmidx.Beta", make_wheel(src, "farmidx-beta", "1.0"))
    assert [f.filename for f in read_project(root, "farmidx-alpha")] == [
        "farmidx_alpha-1.0-py3-none-any.whl", "farmidx_alpha-1.1-py3-none-any.whl"]
    assert list_projects(root) == ["farmidx-alpha", "farmidx-beta"]
    assert IndexPage.from_html((root / "simple" / "index.html").read_text()).projects == list_projects(root)
    with pytest.raises(PublishError, match="already published"):
        publish(root, "farmidx-alpha", src / "farmidx_alpha-1.0-py3-none-any.whl", replace=False)


# Serving ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "text/html"),
        ("", "text/html"),
        ("*/*", "text/html"),
        ("text/html", "text/html"),
        (V1HTML, V1HTML),
        (JSON, JSON),
        (PIP_ACCEPT, JSON),
        ("application/vnd.pypi.simple.latest+json", JSON),
        ("application/vnd.pypi.simple.latest+html", V1HTML),
        (f"{JSON};q=0.5, text/html;q=0.9", "text/html"),
        (f"{JSON};q=0.9, {V1HTML};q=0.9", JSON),  # a tie goes to the client's first choice
        (f"{V1HTML}, {JSON}", V1HTML),
        ("text/html;q=0, */*", V1HTML),
        ("text/*;q=0.2, application/*;q=0.1", "text/html"),
        (f"{JSON};q=0, text/html;q=0", None),
        ("application/json", None),
        ("image/png, text/plain", None),
        (f"{JSON};q=bogus, text/html;q=0.3", "text/html"),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


@pytest.fixture
def client(index: Path) -> Iterator[TestClient]:
    with TestClient(index_app(index), follow_redirects=False) as c:
        yield c


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [(None, "text/html"), (JSON, JSON), (V1HTML, V1HTML), (PIP_ACCEPT, JSON), ("text/html", "text/html")],
)
def test_serve_project_negotiates(client: TestClient, index: Path, accept: str | None, content_type: str) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    for url, folder in (("/simple/farmidx-alpha/", "simple/farmidx-alpha"), ("/simple/", "simple")):
        r = client.get(url, headers=headers)
        assert r.status_code == 200
        assert r.headers["content-type"].split(";")[0] == content_type
        assert "accept" in r.headers["vary"].lower()
        name = "index.json" if content_type == JSON else "index.html"
        assert r.content == (index / folder / name).read_bytes()


def test_serve_406_and_404(client: TestClient) -> None:
    r = client.get("/simple/farmidx-alpha/", headers={"Accept": "application/json"})
    assert r.status_code == 406
    assert client.get("/simple/no-such-project/").status_code == 404
    assert client.get("/simple/no-such-project/", headers={"Accept": JSON}).status_code == 404
    assert client.get("/files/farmidx-alpha/nothing.whl").status_code == 404


def test_serve_format_query_parameter(client: TestClient) -> None:
    r = client.get("/simple/farmidx-alpha/", params={"format": JSON})
    assert r.status_code == 200 and r.headers["content-type"] == JSON


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/", "/simple/"),
        ("/simple", "/simple/"),
        ("/simple/farmidx-alpha", "/simple/farmidx-alpha/"),
        ("/simple/Farmidx_Alpha/", "/simple/farmidx-alpha/"),
        ("/simple/FARMIDX.alpha", "/simple/farmidx-alpha/"),
        ("/simple/Farmidx_Alpha/?format=text/html", "/simple/farmidx-alpha/?format=text/html"),
    ],
)
def test_serve_redirects(client: TestClient, path: str, location: str) -> None:
    r = client.get(path)
    assert r.status_code in (301, 308), r.status_code
    assert r.headers["location"] == f"http://testserver{location}"


def test_serve_files_and_metadata(client: TestClient, index: Path, built: dict[str, list[Path]]) -> None:
    for pkg in ProjectPage.from_json_data(
        client.get("/simple/farmidx-alpha/", headers={"Accept": JSON}).json(),
        base_url="http://testserver/simple/farmidx-alpha/",
    ).packages:
        path = pkg.url.removeprefix("http://testserver")
        data = client.get(path).content
        assert hashlib.sha256(data).hexdigest() == pkg.digests["sha256"]
        meta = client.get(path + ".metadata").content
        assert hashlib.sha256(meta).hexdigest() == pkg.metadata_digests["sha256"]
    assert client.head("/simple/farmidx-alpha/").status_code == 200


def test_serve_etag(client: TestClient) -> None:
    first = client.get("/simple/farmidx-beta/", headers={"Accept": JSON})
    again = client.get("/simple/farmidx-beta/", headers={"Accept": JSON, "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    html_etag = client.get("/simple/farmidx-beta/").headers["etag"]
    assert html_etag != first.headers["etag"]


def test_serve_sees_new_pages(client: TestClient, index: Path, tmp_path: Path) -> None:
    assert client.get("/simple/farmidx-gamma/").status_code == 404
    publish(index, "farmidx-gamma", make_wheel(tmp_path / "src2", "farmidx-gamma", "0.1"))
    assert client.get("/simple/farmidx-gamma/").status_code == 200
    assert "farmidx-gamma" in IndexPage.from_html(client.get("/simple/").text).projects


# Real clients ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    """alpha 1.0 (installable), alpha 2.0 (needs Python 99), alpha 3.0 (yanked), beta 1.0 needing alpha."""
    base = tmp_path_factory.mktemp("served")
    src = base / "src"
    wheels = {
        "farmidx-alpha": [
            make_wheel(src, "farmidx-alpha", "1.0", requires_python=">=3.8", code="WHO = 'alpha 1.0'\n"),
            make_wheel(src, "farmidx-alpha", "2.0", requires_python=">=99", code="WHO = 'alpha 2.0'\n"),
            make_wheel(src, "farmidx-alpha", "3.0", code="WHO = 'alpha 3.0'\n"),
        ],
        "farmidx-beta": [
            make_wheel(src, "farmidx-beta", "1.0", requires=("farmidx-alpha>=1.0",),
                       code="from farmidx_alpha import WHO as ALPHA\nWHO = 'beta 1.0'\n"),
        ],
    }
    _publish_all(base / "index", wheels, yank={"farmidx_alpha-3.0-py3-none-any.whl": "do not use"})
    with _Server(index_app(base / "index")) as server:
        yield server


def _env(tmp_path: Path) -> dict[str, str]:
    return clean_env({"UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
                      "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1"})


def _pip_venv(tmp_path: Path, env: dict[str, str]) -> Path:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], env=env, timeout=300)
    return venv / "bin" / "python"


def _check_installed(python: Path, env: dict[str, str]) -> None:
    out = run([python, "-c", "import farmidx_beta as b; print(b.WHO, '|', b.ALPHA)"], env=env, timeout=60).output
    assert out.strip() == "beta 1.0 | alpha 1.0"


@pytest.mark.slow
def test_pip_installs_from_the_index(served: _Server, tmp_path: Path) -> None:
    env = _env(tmp_path)
    python = _pip_venv(tmp_path, env)
    result = run([python, "-m", "pip", "install", "--index-url", served.url, "farmidx-beta"], env=env, timeout=300)
    assert "Successfully installed farmidx-alpha-1.0 farmidx-beta-1.0" in result.output, result.output
    _check_installed(python, env)


@pytest.mark.slow
def test_uv_installs_from_the_index(served: _Server, tmp_path: Path) -> None:
    env = _env(tmp_path)
    venv = tmp_path / "uv-venv"
    run([UV, "venv", "--python", sys.executable, venv], env=env, timeout=300)
    python = venv / "bin" / "python"
    result = run([UV, "pip", "install", "--index-url", served.url, "--python", python, "farmidx-beta"],
                 env=env, timeout=300)
    assert "farmidx-alpha==1.0" in result.output, result.output
    _check_installed(python, env)
    # uv reads the JSON pages.
    assert any(p == "/simple/farmidx-beta/" for p in served.paths)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["venv-pip", "current-pip"])
def test_pip_resolves_with_the_metadata_files(served: _Server, tmp_path: Path, which: str) -> None:
    """pip takes dependencies from the PEP 658 files: the fresh venv's own pip (as `venv` seeds it)
    and this project's newer pip (run with `--python`), which then downloads no wheel at all."""
    env = _env(tmp_path)
    python = _pip_venv(tmp_path, env)
    pip = [python, "-m", "pip"] if which == "venv-pip" else [sys.executable, "-m", "pip", "--python", python]
    del served.paths[:]
    report = tmp_path / "report.json"
    result = run([*pip, "install", "-v", "--dry-run", "--report", report, "--index-url", served.url, "farmidx-beta"],
                 env=env, timeout=300)
    assert "Would install farmidx-alpha-1.0 farmidx-beta-1.0" in result.output, result.output
    assert "WARNING" not in result.output and "ERROR" not in result.output, result.output
    for project, wheel in (("farmidx-beta", "farmidx_beta-1.0"), ("farmidx-alpha", "farmidx_alpha-1.0")):
        url = f"{served.url[:-len('simple/')]}files/{project}/{wheel}-py3-none-any.whl.metadata"
        assert f"Obtaining dependency information for {project}" in result.output
        assert url in result.output, result.output
    paths = list(served.paths)
    metadata = [i for i, p in enumerate(paths) if p.endswith(".whl.metadata")]
    wheels = [i for i, p in enumerate(paths) if p.endswith(".whl")]
    assert len(metadata) == 2, paths
    assert not wheels or min(wheels) > max(metadata), paths  # resolved before any wheel was fetched
    if which == "current-pip":
        assert not wheels, paths
    installs = json.loads(report.read_text())["install"]
    assert {i["metadata"]["name"]: i["metadata"]["version"] for i in installs} == {
        "farmidx-beta": "1.0", "farmidx-alpha": "1.0"}
    assert all(i["download_info"]["archive_info"]["hashes"]["sha256"] for i in installs)


@pytest.mark.slow
def test_installers_check_the_metadata_hash(tmp_path: Path) -> None:
    """pip and uv verify a metadata file against the page's hash: a wrong file must not slip through."""
    root = tmp_path / "index"
    wheel = make_wheel(tmp_path / "src", "farmidx-delta", "1.0")
    _publish_all(root, {"farmidx-delta": [wheel]})
    (entry,) = read_project(root, "farmidx-delta")
    meta = root / "files" / "farmidx-delta" / f"{wheel.name}.metadata"
    meta.write_bytes(meta.read_bytes() + b"\n")
    env = _env(tmp_path)
    python = _pip_venv(tmp_path, env)
    with _Server(index_app(root)) as server:
        pip = run([python, "-m", "pip", "install", "--dry-run", "--index-url", server.url, "farmidx-delta"],
                  env=env, timeout=300, check=False)
        uv = run([UV, "pip", "install", "--dry-run", "--index-url", server.url, "--python", python, "farmidx-delta"],
                 env=env, timeout=300, check=False)
        assert any(p.endswith(".whl.metadata") for p in server.paths)
    for result in (pip, uv):
        assert result.returncode != 0, result.output
        assert "hash" in result.output.lower() and entry.metadata_sha256 in result.output, result.output


def test_cycle_wheels_beside_the_index_satisfy_requirements_and_downloads(tmp_path: Path) -> None:
    """What a job in a dependency cycle gets: the other member's staged wheel (not on the index)
    counts as present, and the dependency download for a clean container takes it from beside the
    index, with the job's own wheel for the way back (A needs B, B needs A)."""
    import io

    from packaging.requirements import Requirement

    from farm.config import Settings
    from farm.worker import verify
    from farm.worker.platforms import get_platform
    from tests.helpers.wheels import make_wheel

    index_root = tmp_path / "index"
    simple.write_root(index_root, [])
    index_url = (index_root / "simple").as_uri() + "/"
    cycle = tmp_path / "cycle"
    a = make_wheel(cycle, "cyc-a", "1.0", requires=("cyc-b>=1",))
    make_wheel(cycle, "cyc-b", "1.0", requires=("cyc-a>=1",))
    target = verify.Target.for_job("cp311", get_platform("linux-x86_64"), Settings(home=tmp_path / "home"))
    index = verify.FarmIndex(index_url)
    reqs = [Requirement("cyc-b>=1")]
    assert verify.missing_requirements(reqs, index=index, target=target) == ["cyc-b>=1"]
    assert verify.missing_requirements(reqs, index=index, target=target, beside=sorted(cycle.glob("*.whl"))) == []
    assert verify.missing_requirements([Requirement("cyc-b>=2")], index=index, target=target,
                                       beside=sorted(cycle.glob("*.whl"))) == ["cyc-b>=2"]
    got = verify.dependency_wheels(a, target=target, index_url=index_url, requires=[], dest=tmp_path / "deps",
                                   log=io.StringIO(), find_links=cycle)
    assert sorted(p.name for p in got) == ["cyc_a-1.0-py3-none-any.whl", "cyc_b-1.0-py3-none-any.whl"]
    from farm.errors import PackageFailure

    with pytest.raises(PackageFailure, match="do not resolve from the farm's index"):
        verify.dependency_wheels(a, target=target, index_url=index_url, requires=[], dest=tmp_path / "deps2",
                                 log=io.StringIO())


def test_dependency_download_for_a_container_takes_the_targets_markers(tmp_path: Path) -> None:
    """pip downloads a clean container's dependencies while running on the farm's own Python: a
    requirement whose marker holds for the target (cp39) but not for that Python is still fetched,
    and one for the farm's Python only is not (a marker is evaluated for the target, once)."""
    import io

    from farm.config import Settings
    from farm.worker import verify
    from farm.worker.platforms import get_platform
    from tests.helpers.wheels import make_wheel

    index_root = tmp_path / "index"
    simple.write_root(index_root, [])
    index_url = (index_root / "simple").as_uri() + "/"
    beside = tmp_path / "beside"
    top = make_wheel(tmp_path / "top", "mk-top", "1.0",
                     requires=('mk-old>=1; python_version < "3.11"', 'mk-new; python_version >= "3.11"'))
    make_wheel(beside, "mk-old", "1.0")
    make_wheel(beside, "mk-new", "1.0")
    make_wheel(beside, "mk-test", "1.0")
    platform = get_platform("linux-x86_64")
    for python, expected in (("cp39", ["mk_old-1.0-py3-none-any.whl", "mk_test-1.0-py3-none-any.whl"]),
                             ("cp313", ["mk_new-1.0-py3-none-any.whl"])):
        target = verify.Target.for_job(python, platform, Settings(home=tmp_path / "home"))
        got = verify.dependency_wheels(top, target=target, index_url=index_url,
                                       requires=['mk-test; python_version < "3.10"'], dest=tmp_path / f"deps-{python}",
                                       log=io.StringIO(), find_links=beside)
        assert sorted(p.name for p in got) == expected, python


def test_dependency_download_walks_the_closure_with_the_targets_markers(tmp_path: Path) -> None:
    """Two levels down: the top wheel needs mk-mid, which needs mk-deep only below Python 3.11 and
    mk-extra only with its `more` extra (asked for by the top wheel). pip, run by the farm's Python,
    would evaluate mk-mid's markers for itself; the closure is walked for the target instead."""
    import io

    from farm.config import Settings
    from farm.worker import verify
    from farm.worker.platforms import get_platform
    from tests.helpers.wheels import make_wheel

    index_root = tmp_path / "index"
    simple.write_root(index_root, [])
    index_url = (index_root / "simple").as_uri() + "/"
    beside = tmp_path / "beside"
    top = make_wheel(tmp_path / "top", "mk-top", "1.0", requires=("mk-mid[more]>=1",))
    make_wheel(beside, "mk-mid", "1.0", requires=('mk-deep; python_version < "3.11"', 'mk-extra; extra == "more"',
                                                  'mk-never; extra == "other"'))
    for name in ("mk-deep", "mk-extra", "mk-never"):
        make_wheel(beside, name, "1.0")
    platform = get_platform("linux-x86_64")
    for python, expected in (("cp39", ["mk_deep", "mk_extra", "mk_mid"]), ("cp313", ["mk_extra", "mk_mid"])):
        target = verify.Target.for_job(python, platform, Settings(home=tmp_path / "home"))
        got = verify.dependency_wheels(top, target=target, index_url=index_url, requires=[],
                                       dest=tmp_path / f"deps-{python}", log=io.StringIO(), find_links=beside)
        assert sorted(p.name.split("-")[0] for p in got) == expected, python
