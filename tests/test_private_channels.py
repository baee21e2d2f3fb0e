"""Private channels: `stable` private (farm.toml), served by the API with uvicorn on 127.0.0.1.

pip (a real one, in a fresh venv) installs from it with the token in the index URL, and with it in
PIP_INDEX_URL, and not without; no token 401 with `WWW-Authenticate: Basic`, a token for another
channel 403, a revoked token refused on the very next request; the virtual index `prod` (which lists
stable) is private too; `staging`, the top-level tree and the public keys stay public.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from farm.util.cmd import run
from tests.helpers.clients import _env, pip_venv
from tests.helpers.indexes import _Server
from tests.helpers.uploads import Farm, form_upload
from tests.helpers.wheels import make_wheel


@dataclass
class Private(Farm):
    wheel: Path


@pytest.fixture
def farm(farm_home: Path, tmp_path: Path) -> Iterator[Private]:
    from farm.api.app import create_app
    from farm.cli import main
    from farm.config import get_settings, reset_settings
    from farm.db.session import session_scope
    from farm.tokens import issue

    farm_home.mkdir(parents=True)
    (farm_home / "farm.toml").write_text('private_channels = ["stable"]\n')
    reset_settings()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init"]) == 0
    settings = get_settings()
    assert settings.private_channels == ["stable"]
    with session_scope() as s:
        tokens = {"upload": issue(s, settings, "uploader", "upload"),
                  "read": issue(s, settings, "reader", "read", channel="stable"),
                  "staging": issue(s, settings, "staging-reader", "read", channel="staging"),
                  "later-revoked": issue(s, settings, "later-revoked", "read")}
    wheel = make_wheel(tmp_path / "dist", "privdemo", "1.0")
    with _Server(create_app(settings)) as server:
        f = Private(server, tokens, farm_home, wheel)
        assert form_upload(f, wheel, tokens["upload"], channel="stable").status_code == 200
        yield f


def test_http_answers_of_a_private_channel(farm: Private) -> None:
    page = farm.url("/stable/simple/privdemo/")
    r = httpx.get(page, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    file_url = farm.url(f"/stable/files/privdemo/{farm.wheel.name}")
    assert httpx.get(file_url, timeout=30).status_code == 401
    assert httpx.get(page, auth=("__token__", "farm_" + "z" * 43), timeout=30).status_code == 401
    r = httpx.get(page, auth=("__token__", farm.tokens["staging"]), timeout=30)
    assert r.status_code == 403 and "staging" in r.text
    r = httpx.get(page, auth=("__token__", farm.tokens["read"]), timeout=30)
    assert r.status_code == 200 and farm.wheel.name in r.text
    assert httpx.get(file_url, headers={"Authorization": f"Bearer {farm.tokens['read']}"}, timeout=30).status_code == 200
    # prod lists stable: private too; staging, the top level and the keys are public
    assert httpx.get(farm.url("/prod/simple/privdemo/"), timeout=30).status_code == 401
    assert httpx.get(farm.url("/prod/simple/privdemo/"), auth=("__token__", farm.tokens["read"]),
                     timeout=30).status_code == 200
    assert httpx.get(farm.url("/staging/simple/privdemo/"), timeout=30).status_code == 200
    assert httpx.get(farm.url("/simple/privdemo/"), timeout=30).status_code == 200
    assert httpx.get(farm.url("/keys/farm.pub"), timeout=30).status_code == 200


def test_revoked_token_is_refused_on_the_very_next_request(farm: Private) -> None:
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import revoke

    page = farm.url("/stable/simple/privdemo/")
    auth = ("__token__", farm.tokens["later-revoked"])
    assert httpx.get(page, auth=auth, timeout=30).status_code == 200
    with session_scope() as s:
        revoke(s, get_settings(), "later-revoked")
    r = httpx.get(page, auth=auth, timeout=30)
    assert r.status_code == 401 and "revoked" in r.text


def test_pip_installs_from_a_private_channel_with_the_token_in_the_url(farm: Private, tmp_path: Path) -> None:
    env = _env(tmp_path)
    python = pip_venv(tmp_path / "venv", "pip")
    host = f"127.0.0.1:{farm.server.port}"
    r = run([python, "-m", "pip", "install", "--index-url", f"http://{host}/stable/simple/", "privdemo"],
            env=env, timeout=300, check=False)
    assert r.returncode != 0 and "No matching distribution" in r.output  # pip got 401 (see the HTTP test)
    assert "/stable/simple/privdemo/" in farm.server.paths
    r = run([python, "-m", "pip", "install", "--index-url",
             f"http://__token__:{farm.tokens['staging']}@{host}/stable/simple/", "privdemo"],
            env=env, timeout=300, check=False)
    assert r.returncode != 0 and "No matching distribution" in r.output  # 403
    r = run([python, "-m", "pip", "install", "--quiet", "--index-url",
             f"http://__token__:{farm.tokens['read']}@{host}/stable/simple/", "privdemo"],
            env=env, timeout=300, check=False)
    assert r.returncode == 0, r.output
    run([python, "-m", "pip", "uninstall", "--quiet", "-y", "privdemo"], env=env, timeout=120)
    env2 = _env(tmp_path, PIP_INDEX_URL=f"http://__token__:{farm.tokens['read']}@{host}/prod/simple/")
    r = run([python, "-m", "pip", "install", "--quiet", "privdemo"], env=env2, timeout=300, check=False)
    assert r.returncode == 0, r.output
    assert run([python, "-c", "import privdemo; print(privdemo.VERSION)"], env=env, timeout=60).output.strip() == "1.0"


def _netrc(home: Path, host: str, token: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text(f"machine {host}\nlogin __token__\npassword {token}\n")
    (home / ".netrc").chmod(0o600)


def test_pip_and_uv_install_from_a_private_channel_with_the_token_in_netrc(farm: Private, tmp_path: Path) -> None:
    """Nothing but the plain index URL: the credentials come from `~/.netrc` (machine 127.0.0.1). A netrc
    with a token for another channel is refused (403), one without the host gives no credentials (401)."""
    from tests.helpers.clients import UV

    index = f"http://127.0.0.1:{farm.server.port}/stable/simple/"
    python = pip_venv(tmp_path / "venv", "pip")
    home = tmp_path / "home"
    env = _env(tmp_path, HOME=str(home))
    env.pop("NETRC", None)
    _netrc(home, "localhost", farm.tokens["read"])  # another host: not sent
    r = run([python, "-m", "pip", "install", "--index-url", index, "privdemo"], env=env, timeout=300, check=False)
    assert r.returncode != 0 and "No matching distribution" in r.output, r.output
    _netrc(home, "127.0.0.1", farm.tokens["staging"])  # a token for staging only
    before = len(farm.server.paths)
    r = run([python, "-m", "pip", "install", "--index-url", index, "privdemo"], env=env, timeout=300, check=False)
    assert r.returncode != 0 and "No matching distribution" in r.output, r.output
    assert "/stable/simple/privdemo/" in farm.server.paths[before:]
    _netrc(home, "127.0.0.1", farm.tokens["read"])
    r = run([python, "-m", "pip", "install", "--quiet", "--index-url", index, "privdemo"], env=env, timeout=300,
            check=False)
    assert r.returncode == 0, r.output
    assert run([python, "-c", "import privdemo; print(privdemo.VERSION)"], env=env, timeout=60).output.strip() == "1.0"
    target = tmp_path / "uv-target"
    run([UV, "venv", "--quiet", "--python", python, target], env=env, timeout=300)
    r = run([UV, "pip", "install", "--python", target / "bin" / "python", "--index-url", index, "privdemo"],
            env=env, timeout=300, check=False)
    assert r.returncode == 0 and "privdemo==1.0" in r.output, r.output
