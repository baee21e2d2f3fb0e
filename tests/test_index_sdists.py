"""`serve_sdists`: a channel's pages list, beside the wheels, the sdist the farm built them from.

A real sdist (uv build of a small setuptools project) is the job's source; its wheel is published with
the coordinator's publish. Covered: with `serve_sdists = ["staging"]` the staging page and the virtual
`dev` index list the sdist with its sha256, size and the time the farm received it (pypi-simple reads
both formats and downloads it with the digest checked), pip `--no-binary :all:` builds and installs it
from the farm's index, and the doctor finds nothing to repair; stable does not list it after a promote
(not configured there); off by default: no sdist on any page. Bad inputs: an sdist whose stored bytes
changed is not served (the wheel is listed all the same); a channel that does not exist is a config error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypi_simple import ACCEPT_HTML_ONLY, ACCEPT_JSON_ONLY, PyPISimple

from farm.cli import main
from farm.db.session import session_scope
from farm.index import doctor, simple
from farm.util.cmd import run
from tests.helpers.clients import UPSTREAM, UV, _env, pip_venv
from tests.helpers.farms import prepare_job, publish_prepared
from tests.helpers.indexes import _Server
from tests.helpers.sdists import make_project, make_sdist
from tests.helpers.wheels import make_wheel


def _init(home: Path, toml: str = ""):  # type: ignore[no-untyped-def]
    from farm.config import get_settings, reset_settings

    home.mkdir(parents=True, exist_ok=True)
    if toml:
        (home / "farm.toml").write_text(toml)
    reset_settings()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init"]) == 0
    return get_settings()


def _publish_with_sdist(settings, tmp_path: Path, name: str, version: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """The job's source is a real sdist (stored where the farm stores sdists); its wheel is published."""
    from farm.storage import get_storage

    sdist = make_sdist(make_project(tmp_path / "proj", name, version=version, c_extension=False), tmp_path / "sdist")
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    wheel = make_wheel(tmp_path / "wheel", name, version)
    job_id, report = prepare_job(settings, wheel, version=version, sdist_sha256=sha)
    from farm.db.models import Job

    with session_scope() as s:
        src = s.get(Job, job_id).source
        assert src.filename == sdist.name
        src.size = sdist.stat().st_size
        get_storage().put_file(src.storage_key, sdist)
    publish_prepared(settings, job_id, report)
    return sdist, wheel


@pytest.fixture
def served(farm_home: Path, tmp_path: Path) -> Iterator[tuple]:  # type: ignore[type-arg]
    settings = _init(farm_home, 'serve_sdists = ["staging"]\n')
    assert settings.serve_sdists == ["staging"]
    sdist, wheel = _publish_with_sdist(settings, tmp_path, "sdistdemo", "1.0")
    yield settings, sdist, wheel


def test_the_sdist_is_listed_beside_the_wheel(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.index.serve import index_app

    settings, sdist, wheel = served
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    for tree in (settings.index, settings.index / "dev"):
        files = {f.filename: f for f in simple.read_project(tree, "sdistdemo")}
        assert set(files) == {wheel.name, sdist.name}, tree
        f = files[sdist.name]
        assert (f.sha256, f.size, f.metadata_sha256, f.provenance_url) == (sha, sdist.stat().st_size, None, None)
        assert f.upload_time is not None
        assert (tree / "files" / "sdistdemo" / sdist.name).read_bytes() == sdist.read_bytes()
        html = (tree / "simple" / "sdistdemo" / "index.html").read_text()
        assert f'{sdist.name}#sha256={sha}"' in html
    with session_scope() as s:
        assert doctor.examine(s, settings, grace=0, deep=True) == []

    with _Server(index_app(settings.index)) as server, PyPISimple(endpoint=server.url) as client:
        for accept in (ACCEPT_JSON_ONLY, ACCEPT_HTML_ONLY):
            page = client.get_project_page("sdistdemo", accept=accept)
            pkg = next(p for p in page.packages if p.filename == sdist.name)
            assert pkg.package_type == "sdist" and pkg.digests["sha256"] == sha and pkg.version == "1.0"
            client.download_package(pkg, path=tmp_path / f"dl-{accept[:10]}" / pkg.filename, verify=True)
        python = pip_venv(tmp_path / "venv", "pip")
        run([UV, "pip", "install", "--quiet", "--python", python, "--default-index", UPSTREAM, "setuptools>=61"],
            env=_env(tmp_path), timeout=600)
        env = _env(tmp_path)
        r = run([python, "-m", "pip", "install", "--no-binary", ":all:", "--no-build-isolation", "--no-deps",
                 "--index-url", server.url, "sdistdemo"], env=env, timeout=600, check=False)
        assert r.returncode == 0, r.output
        assert "sdistdemo-1.0.tar.gz" in r.output, r.output  # built from the sdist, not the wheel
        assert run([python, "-c", "import sdistdemo; print(sdistdemo.add(2, 3))"], env=env, timeout=60).output.strip() == "5"


def test_only_the_configured_channels_list_it(served) -> None:  # type: ignore[no-untyped-def]
    from farm.index.promote import promote_and_publish

    settings, sdist, wheel = served
    open_gate = settings.model_copy(update={"channel_requirements": {}})
    assert any("promoted to stable" in line for line in promote_and_publish(open_gate, "sdistdemo==1.0", "stable",
                                                                            by="test", upload=False))
    for tree in ("stable", "prod"):
        assert [f.filename for f in simple.read_project(settings.index / tree, "sdistdemo")] == [wheel.name]
    assert sdist.name in {f.filename for f in simple.read_project(settings.index, "sdistdemo")}


def test_off_by_default(farm_home: Path, tmp_path: Path) -> None:
    settings = _init(farm_home)
    assert settings.serve_sdists == []
    sdist, wheel = _publish_with_sdist(settings, tmp_path, "sdistoff", "1.0")
    for tree in ("", "dev"):
        page = settings.index / tree / "simple" / "sdistoff"
        assert [f["filename"] for f in json.loads((page / "index.json").read_bytes())["files"]] == [wheel.name]
        assert not (settings.index / tree / "files" / "sdistoff" / sdist.name).exists()


def test_a_changed_stored_sdist_is_not_served_and_the_wheel_is(farm_home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.index import channels

    settings = _init(farm_home, 'serve_sdists = ["staging"]\n')
    real = channels.place_sdist

    def tampered(tree, project, src):  # type: ignore[no-untyped-def]
        from farm.storage import get_storage

        path = get_storage().local_path(src.storage_key)
        assert path is not None
        path.write_bytes(path.read_bytes() + b"changed")
        return real(tree, project, src)

    monkeypatch.setattr(channels, "place_sdist", tampered)
    sdist, wheel = _publish_with_sdist(settings, tmp_path, "sdistbad", "1.0")
    assert [f.filename for f in simple.read_project(settings.index, "sdistbad")] == [wheel.name]
    assert not (settings.index / "files" / "sdistbad" / sdist.name).exists()


def test_an_unknown_channel_is_a_config_error(farm_home: Path) -> None:
    from farm.config import get_settings, reset_settings
    from farm.errors import ConfigError
    from farm.index.channels import layout

    farm_home.mkdir(parents=True)
    (farm_home / "farm.toml").write_text('serve_sdists = ["gold"]\n')
    reset_settings()
    with pytest.raises(ConfigError, match="serve_sdists: 'gold' is not a channel"):
        layout(get_settings())
