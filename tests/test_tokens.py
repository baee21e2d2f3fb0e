"""Tokens in the database: made by `farm token create` (the real command), listed, revoked; the API
(in process, on this test's SQLite farm) refuses a revoked token on the very next request, an
expired one, and a role used beyond its rights; `farm.toml` tokens are imported on start and can be
revoked like the others; the local admin token keeps working."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from farm.api.app import create_app
from farm.config import get_settings, reset_settings
from farm.errors import ConfigError, NotFound
from farm.tokens import create_token, ensure_local_admin_token, hash_token, issue, list_tokens, revoke


def farm_cmd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", "import sys; from farm.cli import main; sys.exit(main(sys.argv[1:]))", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def client(farm_home: Path) -> Iterator[TestClient]:
    import farm.cli

    farm_home.mkdir(parents=True, exist_ok=True)
    farm.cli.ensure_db()
    with TestClient(create_app(get_settings())) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_cli_creates_lists_and_revokes_tokens_and_stores_only_hashes(tmp_path: Path) -> None:
    home = tmp_path / "farm"
    made = farm_cmd(home, "token", "create", "ci", "--role", "upload", "--channel", "stable",
                    "--expires", "2099-01-01")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("farm_") and "shown only now" in made.stderr
    assert token.encode() not in (home / "farm.db").read_bytes()
    assert farm_cmd(home, "token", "create", "ci", "--role", "read").returncode == 2  # the name is taken
    bad = farm_cmd(home, "token", "create", "x", "--role", "read", "--channel", "nope")
    assert bad.returncode == 2 and "not a channel" in bad.stderr
    listed = farm_cmd(home, "token", "list").stdout
    assert "ci" in listed and "upload" in listed and "stable" in listed and "active" in listed
    assert farm_cmd(home, "token", "revoke", "ci").returncode == 0
    assert " revoked " in farm_cmd(home, "token", "list").stdout
    missing = farm_cmd(home, "token", "revoke", "nobody")
    assert missing.returncode == 7 and "no token named" in missing.stderr


def test_revoked_token_is_refused_on_the_very_next_request(client: TestClient) -> None:
    from farm.db.session import session_scope

    settings = get_settings()
    with session_scope() as s:
        token = issue(s, settings, "alice", "submit")
    assert client.get("/api/jobs", headers=bearer(token)).status_code == 200
    with session_scope() as s:
        revoke(s, settings, "alice")
    r = client.get("/api/jobs", headers=bearer(token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_expired_token_and_roles(client: TestClient) -> None:
    from farm.db.models import ApiToken
    from farm.db.session import session_scope

    settings = get_settings()
    with session_scope() as s:
        reader = issue(s, settings, "reader", "read")
        promoter = issue(s, settings, "promoter", "promote")
        old = issue(s, settings, "old", "submit", expires=dt.datetime(2100, 1, 1))
    with session_scope() as s:  # expire it (the CLI refuses a date in the past)
        s.query(ApiToken).filter_by(name="old").update({"expires_at": dt.datetime(2000, 1, 1)})
    r = client.get("/api/jobs", headers=bearer(old))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    r = client.get("/api/jobs", headers=bearer(reader))
    assert r.status_code == 403 and "'read'" in r.json()["detail"]
    assert client.get("/api/jobs", headers=bearer(promoter)).status_code == 200  # promote includes submit
    # promote and yank need role promote; a submit token gets 403, a promote token gets past the gate
    with session_scope() as s:
        submitter = issue(s, settings, "submitter", "submit")
    assert client.post("/api/releases/yank", json={"pin": "x==1"}, headers=bearer(submitter)).status_code == 403
    assert client.post("/api/releases/yank", json={"pin": "x==1"}, headers=bearer(promoter)).status_code == 404
    assert client.get("/api/jobs", headers=bearer("farm_" + "x" * 40)).status_code == 401
    # HTTP Basic with the token as password counts like a Bearer token
    import base64

    basic = base64.b64encode(f"__token__:{promoter}".encode()).decode()
    assert client.get("/api/jobs", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_farm_toml_tokens_are_imported_once_and_revocable(farm_home: Path) -> None:
    import farm.cli
    from farm.db.session import session_scope

    farm_home.mkdir(parents=True)
    legacy = create_token(farm_home, "legacy", "submit")
    reset_settings()
    farm.cli.ensure_db()
    settings = get_settings()
    with TestClient(create_app(settings)) as c:
        assert c.get("/api/jobs", headers=bearer(legacy)).status_code == 200
        with session_scope() as s:
            (info,) = [t for t in list_tokens(s, settings) if t.name == "legacy"]
            assert info.origin == "farm.toml" and info.state() == "active"
            revoke(s, settings, "legacy")
        assert c.get("/api/jobs", headers=bearer(legacy)).status_code == 401
    with TestClient(create_app(settings)) as c:  # a restart does not bring it back from farm.toml
        assert c.get("/api/jobs", headers=bearer(legacy)).status_code == 401


def test_local_admin_token_still_works_and_is_not_revoked_through_the_database(client: TestClient) -> None:
    from farm.db.session import session_scope

    settings = get_settings()
    admin, _ = ensure_local_admin_token(settings.home)
    assert client.get("/api/jobs", headers=bearer(admin)).status_code == 200
    with session_scope() as s, pytest.raises(ConfigError, match="admin.token"):
        revoke(s, settings, "local-admin")
    with session_scope() as s, pytest.raises(NotFound):
        revoke(s, settings, "nobody")
    with session_scope() as s:
        assert all(t.name != "local-admin" for t in list_tokens(s, settings))
        from farm.db.models import ApiToken

        assert s.query(ApiToken).filter_by(sha256=hash_token(admin)).count() == 0
