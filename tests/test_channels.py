"""Channels and virtual indexes: builds land in the first channel, `farm promote` moves a version up
through the gate (verified on every required platform; no wheel above the level of its
dependencies), virtual indexes merge channels in order, and every tree is served at /<name>/simple/."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from pypi_simple import IndexPage, ProjectPage

from tests.helpers.farms import _farm


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from farm.cli import main
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel

JSON = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


def _listed(tree: Path, project: str) -> list[str]:
    page = tree / "simple" / project / "index.json"
    if not page.is_file():
        return []
    parsed = ProjectPage.from_json_data(json.loads(page.read_bytes()), base_url="http://x/simple/p/")
    return [p.filename for p in parsed.packages]


def test_publish_goes_to_the_first_channel_and_the_virtual_indexes_over_it(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "src", "chdemo", "1.0")
    publish_wheel(settings, wheel, version="1.0")
    index = settings.index
    assert _listed(index, "chdemo") == [wheel.name]  # staging = the top level
    assert _listed(index / "dev", "chdemo") == [wheel.name]
    assert _listed(index / "stable", "chdemo") == _listed(index / "prod", "chdemo") == []
    for tree in ("stable", "prod"):  # empty but valid indexes
        assert IndexPage.from_html((index / tree / "simple" / "index.html").read_text()).projects == []
    # The dev copy is the same file (a hard link), with its metadata and provenance.
    folder = index / "dev" / "files" / "chdemo"
    assert (folder / wheel.name).samefile(index / "files" / "chdemo" / wheel.name)
    assert (folder / f"{wheel.name}.metadata").is_file() and (folder / f"{wheel.name}.provenance").is_file()
    from farm.db.models import ChannelEntry
    from farm.db.session import session_scope

    with session_scope() as s:
        assert [(e.channel, e.added_by) for e in s.query(ChannelEntry)] == [("staging", "publish")]


def test_promote_through_the_gate(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "chlib", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(src, "chlib", "2.0"), version="2.0")
    publish_wheel(settings, make_wheel(src, "chapp", "1.0", requires=(
        "chlib>=1.5", "winonly; sys_platform == 'win32'", "chextra; extra == 'fancy'", "ChApp")), version="1.0")
    # A dependency only in staging: refused, with where it waits.
    code, out, err = _farm("promote", "chapp==1.0", "--to", "stable")
    assert code == 8, out + err
    assert "requires chlib>=1.5, which stable does not have (staging has 2.0: promote it first)" in err
    assert "winonly" not in err and "chextra" not in err
    # An older version in stable does not satisfy >=1.5 either.
    assert _farm("promote", "chlib==1.0", "--to", "stable")[0] == 0
    code, _, err = _farm("promote", "chapp==1.0", "--to", "stable")
    assert code == 8 and "staging has 2.0" in err
    code, out, _ = _farm("promote", "chlib==2.0", "--to", "stable")
    assert code == 0 and "promoted to stable: chlib-2.0-py3-none-any.whl" in out
    code, out, err = _farm("promote", "chapp==1.0", "--to", "stable")
    assert code == 0, err
    assert _listed(settings.index / "stable", "chapp") == ["chapp-1.0-py3-none-any.whl"]
    assert _listed(settings.index / "prod", "chlib") == ["chlib-1.0-py3-none-any.whl", "chlib-2.0-py3-none-any.whl"]
    # Still in staging (promotion copies up), and promoting again is a no-op.
    assert _listed(settings.index, "chapp") == ["chapp-1.0-py3-none-any.whl"]
    code, out, _ = _farm("promote", "chapp==1.0", "--to", "stable")
    assert code == 0 and "already in stable" in out
    # Nothing is promoted into the first channel; unknown channels and versions are errors.
    assert "first channel" in _farm("promote", "chapp==1.0", "--to", "staging")[2]
    assert "not a channel" in _farm("promote", "chapp==1.0", "--to", "gold")[2]
    assert _farm("promote", "chapp==9.9", "--to", "stable")[0] == 7


def test_promote_needs_verification_on_every_required_platform(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "charm", "1.0", tag="cp311-cp311-manylinux_2_17_aarch64"),
                  version="1.0", platform="linux-aarch64")
    code, _, err = _farm("promote", "charm==1.0", "--to", "stable")
    assert code == 8 and "not verified on linux-x86_64 (required for stable; verified on: linux-aarch64)" in err
    publish_wheel(settings, make_wheel(src, "charm", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64"),
                  version="1.0", platform="linux-x86_64")
    code, out, err = _farm("promote", "charm==1.0", "--to", "stable")
    assert code == 0, err
    assert len(_listed(settings.index / "stable", "charm")) == 2 and out.count("promoted to stable") == 2
    # A yanked version is not promoted.
    publish_wheel(settings, make_wheel(src, "charm", "2.0"), version="2.0")
    assert _farm("yank", "charm==2.0")[0] == 0
    code, _, err = _farm("promote", "charm==2.0", "--to", "stable")
    assert code == 8 and "every wheel of it is yanked" in err


def test_virtual_index_a_rebuild_under_a_promoted_name_shadows_nothing(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: a rebuild under the same file name (other bytes) published to staging, to shadow stable's
    file in dev (virtual indexes take the first channel listing a name). Refused: every tree keeps the
    promoted file, also after the pages are regenerated from the database."""
    import hashlib

    from farm.coordinator.publish import PublishRefused

    first = make_wheel(tmp_path / "a", "chshadow", "1.0")
    publish_wheel(settings, first, version="1.0")
    assert _farm("promote", "chshadow==1.0", "--to", "stable")[0] == 0
    rebuilt = make_wheel(tmp_path / "b", "chshadow", "1.0", size_pad=10)  # same name, other bytes
    with pytest.raises(PublishRefused, match="File already exists"):
        publish_wheel(settings, rebuilt, version="1.0", sdist_sha256="e" * 64)
    index = settings.index

    def sha(tree: Path) -> str:
        return json.loads((tree / "simple" / "chshadow" / "index.json").read_bytes())["files"][0]["hashes"]["sha256"]

    old = hashlib.sha256(first.read_bytes()).hexdigest()
    for tree in (index, index / "dev", index / "stable", index / "prod"):
        assert sha(tree) == old
        assert (tree / "files" / "chshadow" / first.name).read_bytes() == first.read_bytes()
    assert _farm("reindex")[0] == 0
    assert all(sha(t) == old for t in (index, index / "dev", index / "stable", index / "prod"))


def test_channel_layout_is_checked(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.config import get_settings, reset_settings
    from farm.errors import ConfigError
    from farm.index.channels import layout

    monkeypatch.setenv("FARM_VIRTUAL_INDEXES", json.dumps({"prod": ["gold"], "simple": ["staging"]}))
    monkeypatch.setenv("FARM_CHANNEL_REQUIREMENTS", json.dumps({"silver": ["linux-x86_64"]}))
    reset_settings()
    with pytest.raises(ConfigError) as exc:
        layout(get_settings())
    text = str(exc.value)
    assert "virtual_indexes.prod" in text and "'simple': not usable" in text and "channel_requirements.silver" in text


def test_trees_are_served(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.index.serve import index_app

    publish_wheel(settings, make_wheel(tmp_path / "src", "chserve", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(tmp_path / "src", "chserve", "2.0"), version="2.0")
    assert _farm("promote", "chserve==1.0", "--to", "stable")[0] == 0
    with TestClient(index_app(settings.index), follow_redirects=False) as client:
        def files(url: str) -> list[str]:
            r = client.get(url, headers={"Accept": JSON})
            assert r.status_code == 200 and r.headers["content-type"] == JSON, (url, r.status_code)
            page = ProjectPage.from_json_data(r.json(), base_url="http://testserver" + url)
            return [p.filename.split("-")[1] for p in page.packages]

        assert files("/simple/chserve/") == files("/staging/simple/chserve/") == files("/dev/simple/chserve/") == ["1.0", "2.0"]
        assert files("/stable/simple/chserve/") == files("/prod/simple/chserve/") == ["1.0"]
        # The same page, but for provenance links made absolute from each request's own URL.
        assert client.get("/staging/simple/chserve/").content.replace(b"/staging/files/", b"/files/") == \
            client.get("/simple/chserve/").content
        html = client.get("/prod/simple/chserve/").text
        page = ProjectPage.from_html("chserve", html, base_url="http://testserver/prod/simple/chserve/")
        (pkg,) = page.packages
        assert pkg.url == "http://testserver/prod/files/chserve/chserve-1.0-py3-none-any.whl"
        assert client.get(pkg.url.removeprefix("http://testserver")).status_code == 200
        assert client.get(pkg.url.removeprefix("http://testserver") + ".metadata").status_code == 200
        assert pkg.provenance_url == "http://testserver/prod/files/chserve/chserve-1.0-py3-none-any.whl.provenance"
        assert client.get("/prod/files/chserve/chserve-1.0-py3-none-any.whl.provenance").status_code == 200
        assert client.get("/prod/simple/chserve/", headers={"Accept": JSON}).headers["vary"] == "Accept, Accept-Encoding"
        r = client.get("/prod/simple/ChServe/")
        assert r.status_code == 301 and r.headers["location"] == "http://testserver/prod/simple/chserve/"
        assert client.get("/prod/simple/").status_code == 200
        assert client.get("/gold/simple/").status_code == 404
        assert client.get("/keys/farm.pub").text.startswith("-----BEGIN PUBLIC KEY-----")
        assert client.get("/stable/keys/farm.json").json()["keys"][0]["algorithm"] == "ed25519"


@pytest.mark.slow
def test_pip_installs_from_prod_only_what_is_stable(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.index.serve import index_app
    from farm.util.cmd import clean_env
    from tests.helpers.indexes import _Server

    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "chpip", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(src, "chpip", "2.0"), version="2.0")
    assert _farm("promote", "chpip==1.0", "--to", "stable")[0] == 0
    with _Server(index_app(settings.index)) as server:
        for tree, expected in (("prod/", "1.0"), ("dev/", "2.0"), ("", "2.0")):
            dest = tmp_path / f"dl-{tree.strip('/') or 'top'}"
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), "--index-url",
                                f"http://127.0.0.1:{server.port}/{tree}simple/", "chpip"],
                               env=clean_env({}), capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            assert [p.name for p in dest.iterdir()] == [f"chpip-{expected}-py3-none-any.whl"]


def test_wheel_changed_in_storage_is_not_published(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The file in storage no longer has the digest the worker reported (and signed into the provenance):
    publish refuses it as an infrastructure fault; no row, page, file or provenance is left."""
    from sqlalchemy import func, select

    from farm.db.models import Artifact
    from farm.db.session import session_scope
    from farm.errors import InfrastructureFault
    from farm.storage import get_storage
    from tests.helpers.farms import prepare_job, publish_prepared

    wheel = make_wheel(tmp_path / "src", "swapped", "1.0")
    job_id, report = prepare_job(settings, wheel, version="1.0")
    stored = get_storage().local_path(report.storage_key)
    assert stored is not None
    stored.write_bytes(make_wheel(tmp_path / "other", "swapped", "1.0", size_pad=10).read_bytes())
    with pytest.raises(InfrastructureFault, match="the worker reported"):
        publish_prepared(settings, job_id, report)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 0
    assert not (settings.index / "files" / "swapped").exists()
    assert _listed(settings.index, "swapped") == [] and _listed(settings.index / "dev", "swapped") == []
