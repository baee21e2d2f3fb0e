"""The index over HTTP (farm/index/serve.py): gzip, Last-Modified and conditional requests, `?format=`
with a literal `+`, media types of every route, `/keys/` on a fresh farm, and provenance links that are
absolute on whatever port the farm serves, whichever command last wrote the page."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import warnings
from collections.abc import Iterator
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import httpx
import pytest
from pypi_simple import ProjectPage


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from farm.index import simple
from farm.index.serve import index_app, media_type_of
from farm.index.simple import IndexFile, write_project, write_root
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel
from tests.helpers.indexes import _Server

JSON = "application/vnd.pypi.simple.v1+json"
V1HTML = "application/vnd.pypi.simple.v1+html"


@pytest.fixture
def index(tmp_path: Path) -> Path:
    """One project with 40 files (a page worth compressing), one of them with provenance."""
    root = tmp_path / "index"
    wheels = [make_wheel(tmp_path / "src", "httpdemo", f"1.{i}") for i in range(40)]
    files = [simple.add_file(root, "httpdemo", w) for w in wheels]
    files[0] = IndexFile(**{**files[0].__dict__,
                            "provenance_url": simple.unserved_provenance_url("httpdemo", wheels[0].name)})
    (root / "files" / "httpdemo" / f"{wheels[0].name}.provenance").write_text('{"version": 1}')
    write_project(root, "httpdemo", files)
    write_root(root, ["httpdemo"])
    (root / "keys").mkdir()
    (root / "keys" / "farm.pub").write_text("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n")
    return root


@pytest.fixture
def client(index: Path) -> Iterator[TestClient]:
    with TestClient(index_app(index), follow_redirects=False) as c:
        yield c


def _raw(client: TestClient, url: str, **headers: str) -> httpx.Response:
    """The response as sent, not decoded (httpx would gunzip it)."""
    with client.stream("GET", url, headers=headers) as r:
        r.raw = b"".join(r.iter_raw())  # type: ignore[attr-defined]
    return r


@pytest.mark.parametrize("accept", [JSON, V1HTML, "text/html"])
def test_pages_are_gzipped_for_clients_that_ask(client: TestClient, index: Path, accept: str) -> None:
    plain = _raw(client, "/simple/httpdemo/", **{"Accept": accept, "Accept-Encoding": "identity"})
    zipped = _raw(client, "/simple/httpdemo/", **{"Accept": accept, "Accept-Encoding": "br;q=1.0, gzip;q=0.8"})
    assert "content-encoding" not in plain.headers
    assert zipped.headers["content-encoding"] == "gzip"
    assert gzip.decompress(zipped.raw) == plain.raw  # type: ignore[attr-defined]
    assert len(zipped.raw) < len(plain.raw) / 2  # type: ignore[attr-defined]  (hex digests compress little)
    assert int(zipped.headers["content-length"]) == len(zipped.raw)  # type: ignore[attr-defined]
    assert zipped.headers["content-type"].split(";")[0] == accept
    assert zipped.headers["etag"] != plain.headers["etag"]  # two representations, two strong ETags
    assert {v.strip() for v in zipped.headers["vary"].split(",")} == {"Accept", "Accept-Encoding"}
    # gzip;q=0 and no header at all: not compressed.
    assert "content-encoding" not in _raw(client, "/simple/httpdemo/", **{"Accept-Encoding": "gzip;q=0, *"}).headers
    assert "content-encoding" not in _raw(client, "/simple/", **{"Accept-Encoding": ""}).headers
    assert _raw(client, "/simple/", **{"Accept-Encoding": "*"}).headers["content-encoding"] == "gzip"


def test_last_modified_and_if_modified_since(client: TestClient, index: Path) -> None:
    r = client.get("/simple/httpdemo/", headers={"Accept": JSON})
    mtime = (index / "simple" / "httpdemo" / "index.json").stat().st_mtime
    assert r.headers["last-modified"] == formatdate(mtime, usegmt=True)
    since = parsedate_to_datetime(r.headers["last-modified"]).timestamp()
    assert client.get("/simple/httpdemo/", headers={"Accept": JSON, "If-Modified-Since": r.headers["last-modified"]}
                      ).status_code == 304
    assert client.get("/simple/httpdemo/", headers={"Accept": JSON,
                                                     "If-Modified-Since": formatdate(since - 10, usegmt=True)}
                      ).status_code == 200
    assert client.get("/simple/httpdemo/", headers={"If-Modified-Since": "not a date"}).status_code == 200
    # If-None-Match decides when both are sent (RFC 9110): a stale ETag is a 200 whatever the date.
    stale = client.get("/simple/httpdemo/", headers={"If-None-Match": '"0-0-json"',
                                                      "If-Modified-Since": r.headers["last-modified"]})
    assert stale.status_code == 200
    # The page is rewritten: the old date no longer matches.
    page = index / "simple" / "httpdemo" / "index.json"
    import os

    os.utime(page, (mtime + 5, mtime + 5))
    assert client.get("/simple/httpdemo/", headers={"Accept": JSON, "If-Modified-Since": r.headers["last-modified"]}
                      ).status_code == 200
    # Files: Last-Modified, and 304 for If-Modified-Since.
    f = client.get("/files/httpdemo/httpdemo-1.0-py3-none-any.whl")
    assert f.status_code == 200 and f.headers["last-modified"]
    assert client.get("/files/httpdemo/httpdemo-1.0-py3-none-any.whl",
                      headers={"If-Modified-Since": f.headers["last-modified"]}).status_code == 304


def test_if_none_match(client: TestClient) -> None:
    for url in ("/simple/", "/simple/httpdemo/", "/files/httpdemo/httpdemo-1.0-py3-none-any.whl", "/keys/farm.pub"):
        r = client.get(url, headers={"If-None-Match": "*"})
        assert r.status_code == 304 and r.content == b"", url
        assert r.headers["etag"], url
    assert client.get("/simple/nothing-here/", headers={"If-None-Match": "*"}).status_code == 404
    assert client.get("/files/httpdemo/nothing.whl", headers={"If-None-Match": "*"}).status_code == 404
    # The ETag of either encoding names this version of the page.
    zipped = client.get("/simple/httpdemo/", headers={"Accept-Encoding": "gzip"}).headers["etag"]
    plain = client.get("/simple/httpdemo/", headers={"Accept-Encoding": "identity"}).headers["etag"]
    for etag in (zipped, plain, f'W/{plain}', f'"x", {zipped}'):
        assert client.get("/simple/httpdemo/", headers={"If-None-Match": etag}).status_code == 304, etag
    assert client.get("/simple/httpdemo/", headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("query", [
    "format=application/vnd.pypi.simple.v1+json",  # a literal +, as clients write it
    "format=application%2Fvnd.pypi.simple.v1%2Bjson",
    "format=application/vnd.pypi.simple.latest+json",
    "other=1&format=application/vnd.pypi.simple.v1+json",
])
def test_format_query_keeps_a_literal_plus(client: TestClient, query: str) -> None:
    for url in ("/simple/", "/simple/httpdemo/"):
        r = client.get(f"{url}?{query}", headers={"Accept": "text/html"})
        assert r.status_code == 200, (url, query, r.text)
        assert r.headers["content-type"] == JSON
        assert r.json()["meta"]["api-version"]
    r = client.get("/simple/?format=application/vnd.pypi.simple.v1+html")
    assert r.headers["content-type"].split(";")[0] == V1HTML
    assert client.get("/simple/?format=application/json").status_code == 406


def test_media_types(client: TestClient) -> None:
    wheel = "/files/httpdemo/httpdemo-1.0-py3-none-any.whl"
    expected = {
        "/simple/": "text/html",
        "/simple/httpdemo/": "text/html",
        wheel: "application/octet-stream",
        wheel + ".metadata": "text/plain",
        wheel + ".provenance": "application/json",
        "/keys/farm.pub": "text/plain",
        "/keys/": "text/plain",
    }
    for url, media in expected.items():
        r = client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"].split(";")[0] == media, (url, r.headers["content-type"])
    assert client.get("/simple/httpdemo/", headers={"Accept": JSON}).headers["content-type"] == JSON
    assert client.get("/keys/").text == "farm.pub\n"
    meta = client.get(wheel + ".metadata")
    assert meta.headers["content-type"] == "text/plain; charset=utf-8" and meta.text.startswith("Metadata-Version")
    for name, media in (("x-1.0.tar.gz", "application/octet-stream"), ("x-1.0.zip", "application/octet-stream"),
                        ("x.whl.provenance.json", "application/json"), ("unknown.bin", "application/octet-stream")):
        assert media_type_of(name) == media


def test_api_version_is_that_of_the_keys_served(client: TestClient, index: Path, tmp_path: Path) -> None:
    """1.3 (PEP 740) on a page that serves `provenance`, 1.1 (PEP 700) on every other page."""
    for accept in (JSON, "text/html"):
        page = client.get("/simple/httpdemo/", headers={"Accept": accept})
        parsed = (ProjectPage.from_json_data(page.json(), base_url=str(page.url)) if accept == JSON
                  else ProjectPage.from_html("httpdemo", page.text, base_url=str(page.url)))
        assert parsed.repository_version == "1.3"
        assert client.get("/simple/", headers={"Accept": accept}).text.count('"1.1"') == 1
    write_project(index, "plain", [simple.add_file(index, "plain", make_wheel(tmp_path / "p", "plain", "1.0"))])
    assert client.get("/simple/plain/", headers={"Accept": JSON}).json()["meta"] == {"api-version": "1.1"}


def test_provenance_placeholders_are_made_absolute_per_request(client: TestClient, index: Path) -> None:
    on_disk = (index / "simple" / "httpdemo" / "index.json").read_text()
    assert f'"provenance":"{simple.UNSERVED_BASE}files/httpdemo/' in on_disk
    for host in ("testserver", "farm.example:9123"):
        r = client.get(f"http://{host}/simple/httpdemo/", headers={"Accept": JSON})
        (pkg,) = [p for p in ProjectPage.from_json_data(r.json(), base_url=str(r.url)).packages if p.provenance_url]
        assert pkg.provenance_url == f"http://{host}/files/httpdemo/{pkg.filename}.provenance"
        html = client.get(f"http://{host}/simple/httpdemo/").text
        assert f'data-provenance="http://{host}/files/httpdemo/{pkg.filename}.provenance"' in html
        assert "farm.invalid" not in r.text + html
    assert client.get(pkg.provenance_url.removeprefix("http://farm.example:9123")).json() == {"version": 1}


def test_old_pages_never_serve_dist_info_metadata(client: TestClient, index: Path) -> None:
    """A page written before PEP 714 was followed is served without the key old pip fails on."""
    page = index / "simple" / "httpdemo" / "index.json"
    data = json.loads(page.read_bytes())
    for entry in data["files"]:
        entry["dist-info-metadata"] = entry.pop("data-dist-info-metadata")
    page.write_text(json.dumps(data, separators=(",", ":")))
    served = client.get("/simple/httpdemo/", headers={"Accept": JSON}).json()
    for entry in served["files"]:
        assert "dist-info-metadata" not in entry
        assert entry["data-dist-info-metadata"] == entry["core-metadata"]


def test_keys_on_a_fresh_farm(farm_home: Path) -> None:
    """Before `farm init` there is no key: /keys/ and the key file are 404s, never a 500."""
    from farm.api.app import create_app
    from farm.cli import ensure_db, main

    ensure_db()
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        for url in ("/keys/", "/keys/farm.pub", "/keys", "/stable/keys/", "/staging/keys/farm.pub"):
            r = c.get(url, follow_redirects=True)
            assert r.status_code == 404, (url, r.status_code, r.text)
        assert main(["init"]) == 0
        for url in ("/keys/", "/stable/keys/", "/keys/farm.pub", "/stable/keys/farm.pub"):
            r = c.get(url)
            assert r.status_code == 200, (url, r.status_code)
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert c.get("/keys/farm.pub").text.startswith("-----BEGIN PUBLIC KEY-----")


# Provenance links after yank, promote and reindex ----------------------------------------------------


def _farm(*args: str) -> int:
    from farm.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        return main(list(args))


def _provenance_links(base: str, tree: str, project: str) -> dict[str, str]:
    page = httpx.get(f"{base}/{tree}simple/{project}/", headers={"Accept": JSON})
    assert page.status_code == 200, page.text
    assert page.json()["meta"]["api-version"] == "1.3"
    return {p.filename: p.provenance_url for p in ProjectPage.from_json_data(page.json(), base_url=str(page.url)).packages}


def test_provenance_links_resolve_on_any_port_after_yank_promote_and_reindex(farm_home: Path, tmp_path: Path) -> None:
    """The farm serves on a random port (not the default 8477); every command that rewrites a page
    (publish, `farm yank`, `farm promote`, `farm reindex`) leaves provenance links that resolve there."""
    from farm.api.app import create_app
    from farm.config import get_settings

    assert _farm("init") == 0
    settings = get_settings()
    assert settings.api_port == 8477 and not settings.public_url
    for version in ("1.0", "2.0"):
        publish_wheel(settings, make_wheel(tmp_path / "src", "portdemo", version), version=version)
    with _Server(create_app(settings)) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert server.port != 8477

        def check(tree: str, expected: int) -> None:
            links = _provenance_links(base, tree, "portdemo")
            assert len(links) == expected
            for filename, url in links.items():
                assert url == f"{base}/{tree}files/portdemo/{filename}.provenance"
                doc = httpx.get(url)
                assert doc.status_code == 200 and doc.headers["content-type"] == "application/json"
                assert doc.json()["attestation_bundles"][0]["attestations"][0]["dsse_envelope"]

        check("", 2)
        assert _farm("yank", "portdemo==1.0", "--reason", "broken") == 0
        check("", 2)
        check("dev/", 2)
        assert _farm("promote", "portdemo==2.0", "--to", "stable", "--no-upload") == 0
        check("stable/", 1)
        check("prod/", 1)
        assert _farm("reindex") == 0
        for tree, n in (("", 2), ("staging/", 2), ("stable/", 1), ("prod/", 1), ("dev/", 2)):
            check(tree, n)
        for page in settings.index.rglob("index.*"):
            assert b"8477" not in page.read_bytes(), page


def test_public_url_wins_over_the_request(farm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `public_url` set, every page writer links below it, and the server leaves those links alone."""
    from farm.config import get_settings, reset_settings

    monkeypatch.setenv("FARM_PUBLIC_URL", "https://wheels.example/farm")
    reset_settings()
    assert _farm("init") == 0
    settings = get_settings()
    publish_wheel(settings, make_wheel(tmp_path / "src", "pubdemo", "1.0"), version="1.0")
    assert _farm("promote", "pubdemo==1.0", "--to", "stable", "--no-upload") == 0
    assert _farm("yank", "pubdemo==1.0") == 0
    with TestClient(index_app(settings.index)) as c:
        for tree in ("", "staging/", "stable/", "prod/", "dev/"):
            r = c.get(f"/{tree}simple/pubdemo/", headers={"Accept": JSON})
            (pkg,) = ProjectPage.from_json_data(r.json(), base_url=str(r.url)).packages
            canonical = "" if tree == "staging/" else tree  # the first channel is the top-level tree
            assert pkg.provenance_url == (f"https://wheels.example/farm/{canonical}files/pubdemo/"
                                          "pubdemo-1.0-py3-none-any.whl.provenance"), tree
            assert pkg.is_yanked
    digest = hashlib.sha256((settings.index / "files" / "pubdemo" / "pubdemo-1.0-py3-none-any.whl").read_bytes())
    assert digest.hexdigest() == pkg.digests["sha256"]
