"""The clients people run, against a farm index with real published wheels (the coordinator's publish
path: signed provenance, channels, pages), each given nothing but the index URL.

Every client is installed by the tests from the upstream index: the pip versions into a fresh venv per
test (their wheels cached by uv in ~/.cache/wheel-farm/clients/uv-cache), uv, pdm and poetry into tool
venvs kept in ~/.cache/wheel-farm/clients/venvs/ (rebuilt when the pinned requirement changes).

pip 23.0.1 (Debian 12's pip, the pip bundled with Python 3.9) and pip 22.3 to 23.1 fail on a JSON page
whose files carry `dist-info-metadata` as a dict (the bug PEP 714 is about); pip 20.3.4 predates the
JSON API and reads the HTML pages; it runs on this Python 3.11.

Every pip that ships with CPython 3.9 to 3.14: the version each release's ensurepip bundles (read from
that Python's own `ensurepip.version()` when pyenv has it, else from `BUNDLED`), downloaded from the
upstream index and run on that Python, or on the nearest Python there is when pyenv lacks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pypi_simple import ACCEPT_HTML_ONLY, ACCEPT_JSON_ONLY, PyPISimple

from farm.util.cmd import Result, run
from tests.helpers.clients import UPSTREAM, UV, _env, pip_venv, tool_venv
from tests.helpers.farms import publish_wheel
from tests.helpers.indexes import _Server
from tests.helpers.wheels import make_wheel


JSON = "application/vnd.pypi.simple.v1+json"
CHECK = ("import clientdemo_alpha as a, clientdemo_beta as b; print(a.VERSION, b.VERSION)")


class RecordingIndex:
    """The farm's index app, recording the path and Accept header of every request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.requests.append((scope["path"], headers.get(b"accept", b"").decode()))
        await self.app(scope, receive, send)

    def pages(self, project: str) -> list[str]:
        """The Accept headers of the requests for `project`'s page."""
        return [accept for path, accept in self.requests if path == f"/simple/{project}/"]

    def fetched(self, suffix: str) -> list[str]:
        return [path for path, _ in self.requests if path.endswith(suffix)]


@pytest.fixture(autouse=True)
def _test_interpreter_untouched() -> Iterator[None]:
    """No client may install into the interpreter running the tests (the shared venv)."""
    yield
    assert importlib.util.find_spec("clientdemo_alpha") is None, "a client installed into the test interpreter"


@pytest.fixture
def farm_index(farm_home: Path, tmp_path: Path) -> Iterator[tuple[_Server, RecordingIndex]]:
    """alpha 1.0, alpha 2.0 (yanked), beta 1.0 (needs alpha>=1.0), published with provenance and served
    on 127.0.0.1 at a free port."""
    from farm.cli import main
    from farm.config import get_settings
    from farm.index.serve import index_app

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init"]) == 0
    settings = get_settings()
    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "clientdemo-alpha", "1.0", requires_python=">=3.8"), version="1.0")
    publish_wheel(settings, make_wheel(src, "clientdemo-alpha", "2.0"), version="2.0")
    publish_wheel(settings, make_wheel(src, "clientdemo-beta", "1.0", requires=("clientdemo-alpha>=1.0",)),
                  version="1.0")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["yank", "clientdemo-alpha==2.0", "--reason", "broken"]) == 0
    app = RecordingIndex(index_app(settings.index))
    with _Server(app) as server:
        yield server, app


def _installed(python: Path, env: dict[str, str]) -> str:
    return run([python, "-c", CHECK], env=env, timeout=60).output.strip()


def _ok(result: Result) -> str:
    assert result.returncode == 0, result.output
    return result.output


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("pip", ["pip==20.3.4", "pip==23.0.1", "pip"])
def test_pip_installs_with_only_the_index_url(farm_index: tuple[_Server, RecordingIndex], tmp_path: Path,
                                              pip: str) -> None:
    server, app = farm_index
    env = _env(tmp_path)
    python = pip_venv(tmp_path / "venv", pip)
    version = run([python, "-m", "pip", "--version"], env=env, timeout=60).output.split()[1]
    if pip != "pip":
        assert version == pip.split("==")[1]
    result = run([python, "-m", "pip", "install", "--index-url", server.url, "clientdemo-beta"], env=env,
                 timeout=300, check=False)
    out = _ok(result)
    assert "Successfully installed clientdemo-alpha-1.0 clientdemo-beta-1.0" in out, out
    assert "Traceback" not in out and "unhashable" not in out, out
    assert _installed(python, env) == "1.0 1.0"  # not the yanked 2.0
    accepts = app.pages("clientdemo-beta")
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) >= (22, 2):  # pip asks for the JSON pages from 22.2 on: the pages that broke 22.3 to 23.1
        assert accepts and all(JSON in a for a in accepts), accepts
    else:
        assert accepts and all(JSON not in a for a in accepts), accepts
    if (major, minor) >= (23, 2):  # PEP 714's core-metadata: dependencies from the .metadata files
        assert app.fetched(".whl.metadata"), app.requests


@pytest.mark.slow
@pytest.mark.network
def test_uv_installs_with_only_the_index_url(farm_index: tuple[_Server, RecordingIndex], tmp_path: Path) -> None:
    server, app = farm_index
    uv = tool_venv("uv", "uv") / "uv"
    env = _env(tmp_path)
    _ok(run([uv, "venv", "--quiet", "--python", sys.executable, tmp_path / "target"], env=env, timeout=300, check=False))
    python = tmp_path / "target" / "bin" / "python"
    out = _ok(run([uv, "pip", "install", "--python", python, "--index-url", server.url, "clientdemo-beta"],
                  env=env, timeout=300, check=False))
    assert "clientdemo-alpha==1.0" in out and "clientdemo-beta==1.0" in out, out
    assert _installed(python, env) == "1.0 1.0"
    assert all(JSON in a for a in app.pages("clientdemo-beta")), app.requests
    assert app.fetched(".whl.metadata"), app.requests  # uv reads core-metadata


PYENV = Path("/root/.pyenv/versions")
# The pip that ensurepip bundles in the CPython releases pyenv does not have here (CPython's
# Lib/ensurepip/__init__.py, `_PIP_VERSION`, of that release).
BUNDLED = {"3.9": ("3.9.18", "23.0.1"), "3.10": ("3.10.13", "23.0.1"), "3.11": ("3.11.7", "23.2.1"),
           "3.12": ("3.12.1", "23.2.1"), "3.13": ("3.13.0", "24.2"), "3.14": ("3.14.0", "25.2")}


def _pyenv_python(minor: str) -> Path | None:
    found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"),
                   key=lambda p: tuple(int(x) for x in p.parent.parent.name.split(".") if x.isdigit()))
    return found[-1] if found else None


def bundled_pip(minor: str) -> tuple[str, str, Path, str]:
    """(the CPython release, the pip it bundles, the Python to run that pip on, the minor version of that
    Python) for CPython `minor`: pyenv's release of it when there is one, else the nearest minor it has."""
    python = _pyenv_python(minor)
    if python is not None:
        release = python.parent.parent.name
        version = run([python, "-c", "import ensurepip; print(ensurepip.version())"], timeout=60).output.strip()
        return release, version, python, minor
    release, version = BUNDLED[minor]
    want = int(minor.split(".")[1])
    have = sorted((abs(int(p.name.split(".")[1]) - want), -int(p.name.split(".")[1]), p.name)
                  for p in PYENV.glob("3.*") if _pyenv_python(".".join(p.name.split(".")[:2])))
    nearest = ".".join(have[0][2].split(".")[:2])
    python = _pyenv_python(nearest)
    assert python is not None
    return release, version, python, nearest


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("minor", ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"])
def test_the_pip_each_cpython_ships_installs_from_the_farm(farm_index: tuple[_Server, RecordingIndex],
                                                           tmp_path: Path, minor: str) -> None:
    server, app = farm_index
    release, pip_version, python, runs_on = bundled_pip(minor)
    if minor in BUNDLED and runs_on == minor:  # the table agrees with the release pyenv has, where both exist
        assert BUNDLED[minor] == (release, pip_version) or BUNDLED[minor][0] != release
    env = _env(tmp_path)
    venv_python = tmp_path / "venv" / "bin" / "python"
    run([UV, "venv", "--quiet", "--python", python, tmp_path / "venv"], env=env, timeout=300)
    run([UV, "pip", "install", "--quiet", "--python", venv_python, "--default-index", UPSTREAM,
         f"pip=={pip_version}"], env=_env(tmp_path), timeout=600)
    got = run([venv_python, "-m", "pip", "--version"], env=env, timeout=60).output.split()
    assert got[1] == pip_version and f"(python {runs_on})" in " ".join(got), got
    out = _ok(run([venv_python, "-m", "pip", "install", "--index-url", server.url, "clientdemo-beta"], env=env,
                  timeout=300, check=False))
    assert "Successfully installed clientdemo-alpha-1.0 clientdemo-beta-1.0" in out, out
    assert "Traceback" not in out and "unhashable" not in out, out
    assert _installed(venv_python, env) == "1.0 1.0"  # not the yanked 2.0
    assert app.pages("clientdemo-beta") and all(JSON in a for a in app.pages("clientdemo-beta")), app.requests
    if tuple(int(x) for x in pip_version.split(".")[:2]) >= (23, 2):
        assert app.fetched(".whl.metadata"), app.requests  # PEP 714's core-metadata read


def _consumer(folder: Path, tool_table: str) -> Path:
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "consumer"\nversion = "0.0.0"\nrequires-python = ">=3.11"\ndependencies = []\n\n'
        + tool_table)
    return folder


@pytest.mark.slow
@pytest.mark.network
def test_pdm_installs_with_only_the_index_url(farm_index: tuple[_Server, RecordingIndex], tmp_path: Path) -> None:
    server, app = farm_index
    pdm = tool_venv("pdm", "pdm[locked]") / "pdm"  # its own pins: plain pdm 2.29 fails with hishel 2
    project = _consumer(tmp_path / "consumer", "[tool.pdm]\ndistribution = false\n")
    env = _env(tmp_path, PDM_HOME=str(tmp_path / "pdm-home"), PDM_CACHE_DIR=str(tmp_path / "pdm-cache"),
               PDM_CONFIG_FILE=str(tmp_path / "pdm-config.toml"), PDM_PYPI_URL=server.url,
               PDM_CHECK_UPDATE="false", PDM_USE_UV="false")
    # A venv of the project's own: `pdm use` of this interpreter would install into the test's venv.
    _ok(run([UV, "venv", "--quiet", "--python", sys.executable, project / ".venv"], env=env, timeout=300, check=False))
    _ok(run([pdm, "use", "--quiet", "-f", project / ".venv" / "bin" / "python"], cwd=project, env=env, timeout=300,
            check=False))
    _ok(run([pdm, "add", "clientdemo-beta"], cwd=project, env=env, timeout=600, check=False))
    assert _installed(project / ".venv" / "bin" / "python", env) == "1.0 1.0"
    assert app.pages("clientdemo-beta"), app.requests
    lock = (project / "pdm.lock").read_text()
    assert 'name = "clientdemo-alpha"\nversion = "1.0"' in lock, lock


@pytest.mark.slow
@pytest.mark.network
def test_poetry_installs_with_only_the_index_url(farm_index: tuple[_Server, RecordingIndex], tmp_path: Path) -> None:
    server, app = farm_index
    poetry = tool_venv("poetry", "poetry") / "poetry"
    project = _consumer(tmp_path / "consumer", "[tool.poetry]\npackage-mode = false\n\n[[tool.poetry.source]]\n"
                        f'name = "farm"\nurl = "{server.url}"\npriority = "primary"\n')
    env = _env(tmp_path, POETRY_CACHE_DIR=str(tmp_path / "poetry-cache"), POETRY_VIRTUALENVS_IN_PROJECT="true",
               POETRY_CONFIG_DIR=str(tmp_path / "poetry-config"), POETRY_DATA_DIR=str(tmp_path / "poetry-data"))
    _ok(run([poetry, "env", "use", sys.executable], cwd=project, env=env, timeout=300, check=False))
    _ok(run([poetry, "add", "clientdemo-beta"], cwd=project, env=env, timeout=600, check=False))
    assert _installed(project / ".venv" / "bin" / "python", env) == "1.0 1.0"
    assert app.pages("clientdemo-beta"), app.requests
    assert '[[package]]\nname = "clientdemo-alpha"\nversion = "1.0"' in (project / "poetry.lock").read_text()


def test_pypi_simple_reads_both_formats(farm_index: tuple[_Server, RecordingIndex], tmp_path: Path) -> None:
    """pypi-simple (which validates PEP 691/700/714/740 pages strictly) reads the same files from the
    HTML and the JSON pages, downloads them with their digests checked, and follows the provenance links."""
    server, _app = farm_index
    with PyPISimple(endpoint=server.url) as client:
        for accept in (ACCEPT_JSON_ONLY, ACCEPT_HTML_ONLY):
            assert client.get_index_page(accept=accept).projects == ["clientdemo-alpha", "clientdemo-beta"]
        pages = {accept: client.get_project_page("clientdemo-alpha", accept=accept)
                 for accept in (ACCEPT_JSON_ONLY, ACCEPT_HTML_ONLY)}
        json_page, html_page = pages[ACCEPT_JSON_ONLY], pages[ACCEPT_HTML_ONLY]
        assert json_page.repository_version == html_page.repository_version == "1.3"
        assert json_page.versions == ["1.0", "2.0"]
        assert [p.filename for p in json_page.packages] == [p.filename for p in html_page.packages] == [
            "clientdemo_alpha-1.0-py3-none-any.whl", "clientdemo_alpha-2.0-py3-none-any.whl"]
        for j, h in zip(json_page.packages, html_page.packages):
            assert (j.url, j.digests, j.metadata_digests, j.provenance_url, j.is_yanked, j.yanked_reason) == \
                   (h.url, h.digests, h.metadata_digests, h.provenance_url, h.is_yanked, h.yanked_reason)
            assert j.has_metadata and j.provenance_url and j.provenance_url.startswith(server.url[: -len("simple/")])
        assert [p.is_yanked for p in json_page.packages] == [False, True]
        assert json_page.packages[1].yanked_reason == "broken"
        assert json_page.packages[0].requires_python == ">=3.8"
        assert json_page.packages[0].size and json_page.packages[0].upload_time
        pkg = json_page.packages[0]
        target = tmp_path / pkg.filename
        client.download_package(pkg, path=target, verify=True)  # checks the sha256
        assert hashlib.sha256(target.read_bytes()).hexdigest() == pkg.digests["sha256"]
        assert "Name: clientdemo-alpha" in client.get_package_metadata(pkg, verify=True)
        provenance = client.get_provenance(pkg)
        assert provenance["attestation_bundles"][0]["attestations"][0]["dsse_envelope"]
