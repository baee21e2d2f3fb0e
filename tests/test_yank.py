"""PEP 592 yanking: `farm yank NAME==VERSION [--reason R] [--undo]` marks the artifacts in the
database and rewrites only that project's pages in every tree; pip and uv skip the yanked file
unless it is pinned; pypi-simple parses every page."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypi_simple import IndexPage, ProjectPage

from farm.cli import main
from farm.util.cmd import clean_env
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


@pytest.fixture
def two_versions(settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    for v in ("1.0", "1.1"):
        publish_wheel(settings, make_wheel(tmp_path / "src", "yankdemo", v), version=v)
    publish_wheel(settings, make_wheel(tmp_path / "src", "yankother", "3.0"), version="3.0")
    return settings


def _farm(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def _pages(tree: Path, project: str) -> list[ProjectPage]:
    folder = tree / "simple" / project
    base = f"http://farm.test/simple/{project}/"
    return [ProjectPage.from_html(project, (folder / "index.html").read_text(), base_url=base),
            ProjectPage.from_json_data(json.loads((folder / "index.json").read_bytes()), base_url=base)]


def test_yank_rewrites_only_that_project_in_every_tree(two_versions) -> None:  # type: ignore[no-untyped-def]
    settings = two_versions
    index = settings.index
    old = 1_000_000_000
    for p in index.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(old, old))
    code, out = _farm("yank", "YankDemo==1.1", "--reason", "broken <build> & \"quoted\"")
    assert code == 0 and "yanked (broken" in out and "yankdemo-1.1-py3-none-any.whl" in out
    changed = sorted(p.relative_to(index).as_posix() for p in index.rglob("*")
                     if p.is_file() and p.stat().st_mtime_ns != old)
    # staging (top level) and dev list yankdemo; stable and prod do not have it.
    assert changed == ["dev/simple/yankdemo/index.html", "dev/simple/yankdemo/index.json",
                       "simple/yankdemo/index.html", "simple/yankdemo/index.json"]
    for tree in (index, index / "dev"):
        for page in _pages(tree, "yankdemo"):
            by = {p.filename: p for p in page.packages}
            y = by["yankdemo-1.1-py3-none-any.whl"]
            assert y.is_yanked and y.yanked_reason == 'broken <build> & "quoted"'
            assert not by["yankdemo-1.0-py3-none-any.whl"].is_yanked
            assert all(p.provenance_url and p.has_metadata for p in page.packages)
        assert IndexPage.from_html((tree / "simple" / "index.html").read_text()).projects == ["yankdemo", "yankother"]
    # Without a reason: yanked, reason empty (HTML data-yanked="", JSON true).
    assert _farm("yank", "yankdemo==1.0")[0] == 0
    data = json.loads((index / "simple" / "yankdemo" / "index.json").read_bytes())
    assert [f["yanked"] for f in data["files"]] == [True, 'broken <build> & "quoted"']
    assert 'data-yanked=""' in (index / "simple" / "yankdemo" / "index.html").read_text()
    # Undo.
    assert _farm("yank", "yankdemo==1.0", "--undo")[0] == 0
    assert _farm("yank", "yankdemo==1.1", "--undo")[0] == 0
    for page in _pages(index, "yankdemo"):
        assert not any(p.is_yanked for p in page.packages)
    from farm.db.models import Artifact
    from farm.db.session import session_scope

    with session_scope() as s:
        assert {a.yanked for a in s.query(Artifact).filter_by(name="yankdemo")} == {None}


def test_yank_unknown_version_fails(settings) -> None:  # type: ignore[no-untyped-def]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["yank", "nothing==1.0"]) == 7
    assert "no published wheel of nothing==1.0" in err.getvalue()
    with contextlib.redirect_stderr(err):
        assert main(["yank", "nothing>=1.0"]) == 1
    assert "expected NAME==VERSION" in err.getvalue()


@pytest.mark.slow
def test_pip_and_uv_skip_a_yanked_file_unless_pinned(two_versions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.index.serve import index_app
    from tests.helpers.env import uv_bin
    from tests.helpers.indexes import _Server

    settings = two_versions
    assert _farm("yank", "yankdemo==1.1", "--reason", "do not use")[0] == 0
    env = clean_env({})
    with _Server(index_app(settings.index)) as server:
        for url in (server.url, server.url.replace("/simple/", "/dev/simple/")):
            def pip_download(req: str, dest: Path) -> str:
                r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", url,
                                    "-d", str(dest), req], env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stdout + r.stderr
                (got,) = [p.name for p in dest.iterdir()]
                return got + r.stdout + r.stderr

            assert pip_download("yankdemo", tmp_path / "a").startswith("yankdemo-1.0-")
            pinned = pip_download("yankdemo==1.1", tmp_path / "b")
            assert pinned.startswith("yankdemo-1.1-") and "do not use" in pinned  # pip warns with the reason
            for d in ("a", "b"):
                for p in (tmp_path / d).iterdir():
                    p.unlink()

            def uv_compile(req: str) -> str:
                r = subprocess.run([uv_bin(), "pip", "compile", "--no-config", "--no-header", "--index-url", url, "-"],
                                   input=req + "\n", env=env, capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stderr
                return r.stdout + r.stderr

            assert "yankdemo==1.0" in uv_compile("yankdemo")
            assert "yankdemo==1.1" in uv_compile("yankdemo==1.1")
        # A real install of the pinned, yanked version with uv.
        subprocess.run([uv_bin(), "venv", "-q", str(tmp_path / "venv")], env=env, check=True)
        r = subprocess.run([uv_bin(), "pip", "install", "--no-config", "--python", str(tmp_path / "venv/bin/python"),
                            "--index-url", server.url, "yankdemo==1.1"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out = subprocess.run([str(tmp_path / "venv/bin/python"), "-c", "import yankdemo; print(yankdemo.VERSION)"],
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.stdout.strip() == "1.1"
        # Undone: pip takes 1.1 again.
        assert _farm("yank", "yankdemo==1.1", "--undo")[0] == 0
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", server.url,
                            "-d", str(tmp_path / "c"), "yankdemo"], env=env, capture_output=True, text=True)
        assert r.returncode == 0 and [p.name for p in (tmp_path / "c").iterdir()] == ["yankdemo-1.1-py3-none-any.whl"]


def test_yank_and_promote_over_the_api(two_versions, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The API's release routes (what `farm --server URL yank|promote` calls): the same lines as the
    local commands, pages rewritten; bad input (no ==, an unknown field, an unknown channel, an
    unknown release) is refused with its reason, and a submit token may not yank."""
    from starlette.testclient import TestClient

    from farm.api.app import create_app
    from farm.cli.remote import ApiClient
    from farm.config import get_settings, reset_settings
    from farm.errors import FarmError, NotFound
    from farm.tokens import create_token

    settings = two_versions
    admin, submit = create_token(settings.home, "ops", "admin"), create_token(settings.home, "ci", "submit")
    reset_settings()
    with TestClient(create_app(get_settings())) as http:
        api = ApiClient("http://testserver", admin, client=http)
        assert api.yank("YankDemo==1.1", reason="broken") == ["yanked (broken): yankdemo-1.1-py3-none-any.whl"]
        yanked = {f.filename: f.yanked_reason for f in _pages(settings.index, "yankdemo")[1].packages if f.is_yanked}
        assert yanked == {"yankdemo-1.1-py3-none-any.whl": "broken"}
        assert api.yank("yankdemo==1.1", undo=True) == ["unyanked: yankdemo-1.1-py3-none-any.whl"]
        assert api.promote("yankdemo==1.0", to="stable") == ["promoted to stable: yankdemo-1.0-py3-none-any.whl"]
        assert [f.filename for f in _pages(settings.index / "stable", "yankdemo")[1].packages] == [
            "yankdemo-1.0-py3-none-any.whl"]
        assert api.promote("yankdemo==1.0", to="stable") == ["already in stable: yankdemo-1.0-py3-none-any.whl"]
        with pytest.raises(FarmError, match="'nowhere' is not a channel"):
            api.promote("yankdemo==1.0", to="nowhere")
        with pytest.raises(NotFound, match="no published wheel of yankdemo==9.9"):
            api.yank("yankdemo==9.9")
        with pytest.raises(FarmError, match="expected NAME==VERSION"):
            api.yank("yankdemo")
        extra = http.post("/api/releases/yank", json={"pin": "yankdemo==1.0", "force": True},
                          headers={"Authorization": f"Bearer {admin}"})
        assert extra.status_code == 422 and "force" in extra.text
        denied = http.post("/api/releases/yank", json={"pin": "yankdemo==1.0"},
                           headers={"Authorization": f"Bearer {submit}"})
        assert denied.status_code == 403
        # the CLI with a server URL goes through the same client
        monkeypatch.setattr("farm.cli.remote.client_from_settings", lambda: api)
        monkeypatch.setenv("FARM_SERVER_URL", "http://testserver")
        reset_settings()
        assert _farm("yank", "yankother==3.0") == (0, "yanked: yankother-3.0-py3-none-any.whl\n")
        assert _farm("yank", "yankother==3.0", "--undo") == (0, "unyanked: yankother-3.0-py3-none-any.whl\n")
        assert _farm("promote", "yankother==3.0", "--to", "stable") == (
            0, "promoted to stable: yankother-3.0-py3-none-any.whl\n")
        monkeypatch.delenv("FARM_SERVER_URL")
        reset_settings()
    assert not any(f.is_yanked for f in _pages(settings.index, "yankdemo")[1].packages)
