"""Upload targets: `farm publish-to TARGET NAME==VERSION` and uploads on promotion, with twine's
upload protocol, against a real pypiserver and a real devpi-server on 127.0.0.1 with credentials
from the configuration; then pip installs from them."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.cli import main
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel
from tests.helpers.servers import DevpiServer, PypiServer


def _farm(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_form_fields_are_twines(tmp_path: Path) -> None:
    from farm.index.targets import form_fields

    wheel = make_wheel(tmp_path, "tgform", "1.0", requires=("a>=1", "b; python_version < '3.12'"),
                       requires_python=">=3.9", tag="cp311-cp311-manylinux_2_17_x86_64")
    f = form_fields(wheel)
    assert f[":action"] == "file_upload" and f["protocol_version"] == "1" and f["filetype"] == "bdist_wheel"
    assert (f["name"], f["version"], f["pyversion"], f["metadata_version"]) == ("tgform", "1.0", "cp311", "2.1")
    assert f["requires_dist"] == ["a>=1", "b; python_version < '3.12'"] and f["requires_python"] == ">=3.9"
    import hashlib

    assert f["sha256_digest"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert "A package for the index tests." in str(f["description"])


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PypiServer, DevpiServer]]:
    base = tmp_path_factory.mktemp("targets")
    with PypiServer(base / "pypiserver") as pypi, DevpiServer(base / "devpi") as devpi:
        yield pypi, devpi


@pytest.fixture
def settings(farm_home: Path, servers: tuple[PypiServer, DevpiServer], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from farm.config import get_settings, reset_settings

    pypi, devpi = servers
    monkeypatch.setenv("TEST_PYPISERVER_PASSWORD", pypi.password)
    monkeypatch.setenv("FARM_UPLOAD_TARGETS", json.dumps({
        "pypiserver": {"url": pypi.url, "index_url": pypi.index_url, "username": pypi.username,
                       "password_env": "TEST_PYPISERVER_PASSWORD"},
        "devpi": {"url": devpi.url, "index_url": devpi.index_url, "username": devpi.username,
                  "password": devpi.password, "channel": "stable"},
        "bad-password": {"url": pypi.url, "username": pypi.username, "password": "wrong"},
    }))
    reset_settings()
    assert main(["init"]) == 0
    return get_settings()


def _pip_install(index_url: str, venv: Path, requirement: str, module: str) -> str:
    from farm.util.cmd import clean_env

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--no-cache-dir", "--index-url", index_url,
                        requirement], env=clean_env({}), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = subprocess.run([str(venv / "bin/python"), "-c", f"import {module}; print({module}.VERSION)"],
                         capture_output=True, text=True, cwd=venv)
    return out.stdout.strip()


@pytest.mark.slow
def test_publish_to_pypiserver_then_pip_installs(settings, servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pypi, _ = servers
    publish_wheel(settings, make_wheel(tmp_path / "src", "tgpypi", "1.0"), version="1.0")
    code, out, err = _farm("publish-to", "pypiserver", "tgpypi==1.0")
    assert code == 0, err
    assert "uploaded to pypiserver: tgpypi-1.0-py3-none-any.whl" in out and "listed" in out
    assert (pypi.folder / "packages" / "tgpypi-1.0-py3-none-any.whl").is_file()
    # Again: pypiserver refuses to overwrite (409), the farm sees the same sha256 listed.
    code, out, err = _farm("publish-to", "pypiserver", "tgpypi==1.0")
    assert code == 0 and "already there" in out, out + err
    assert _pip_install(pypi.index_url, tmp_path / "venv", "tgpypi", "tgpypi") == "1.0"
    from farm.db.models import Upload
    from farm.db.session import session_scope

    with session_scope() as s:
        (row,) = s.query(Upload).all()
        assert (row.target, row.url) == ("pypiserver", pypi.url)


@pytest.mark.slow
def test_bad_credentials_and_unknown_target_fail_clearly(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    publish_wheel(settings, make_wheel(tmp_path / "src", "tgbad", "1.0"), version="1.0")
    code, _, err = _farm("publish-to", "bad-password", "tgbad==1.0")
    assert code == 9 and "refused the credentials" in err
    code, _, err = _farm("publish-to", "nowhere", "tgbad==1.0")
    assert code == 2 and "no upload target 'nowhere'" in err and "pypiserver" in err
    # The devpi target is bound to stable: a version only in staging is not uploaded.
    code, _, err = _farm("publish-to", "devpi", "tgbad==1.0")
    assert code == 7 and "in channel stable" in err


@pytest.mark.slow
def test_promotion_uploads_to_devpi_then_pip_installs(settings, servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, devpi = servers
    publish_wheel(settings, make_wheel(tmp_path / "src", "tgdevpi", "1.0"), version="1.0")
    code, out, err = _farm("promote", "tgdevpi==1.0", "--to", "stable")
    assert code == 0, err
    assert "promoted to stable" in out and "uploaded to devpi: tgdevpi-1.0-py3-none-any.whl" in out
    assert _pip_install(devpi.index_url, tmp_path / "venv", "tgdevpi==1.0", "tgdevpi") == "1.0"
    # publish-to the same target again: devpi takes the identical file again; the same sha256 is listed.
    code, out, err = _farm("publish-to", "devpi", "tgdevpi==1.0")
    assert code == 0 and "listed" in out, out + err
