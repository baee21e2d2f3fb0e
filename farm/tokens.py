"""API tokens: made once, shown once, kept only as their sha256 in `$FARM_HOME/farm.toml`.

Roles: `submit` (submit and read jobs), `worker` (storage for remote workers), `admin` (all).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

import tomli_w

from farm.config import TokenConfig
from farm.errors import ConfigError

ROLES = ("submit", "worker", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    return role == "admin" or role == needed


def find_token(token: str, tokens: Iterable[TokenConfig]) -> TokenConfig | None:
    """The configured token whose hash matches, compared in constant time."""
    digest = hash_token(token)
    found = None
    for t in tokens:
        if hmac.compare_digest(t.sha256, digest):
            found = t
    return found


def create_token(home: Path, name: str, role: str) -> str:
    """A new random token for `name` with `role`; its hash is appended to `home/farm.toml`.

    The rest of the file is kept as it is (the entry is appended as a `[[tokens]]` table); only a
    file that spells `tokens` as an inline array is rewritten as a whole.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    path = home / "farm.toml"
    text = path.read_text() if path.is_file() else ""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    existing = doc.get("tokens", [])
    if not isinstance(existing, list):
        raise ConfigError(f"{path}: tokens must be a list of tables")
    if any(isinstance(t, dict) and t.get("name") == name for t in existing):
        raise ConfigError(f"{path}: a token named {name!r} exists already")
    token = "farm_" + secrets.token_urlsafe(32)
    entry = {"name": name, "role": role, "sha256": hash_token(token)}
    TokenConfig.model_validate(entry)
    sep = "" if not text else "\n" if text.endswith("\n") else "\n\n"
    appended = text + sep + "[[tokens]]\n" + tomli_w.dumps(entry)
    try:
        new_doc = tomllib.loads(appended)
        ok = new_doc.get("tokens", [])[-1:] == [entry]
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # e.g. `tokens = [...]` inline: rewrite the document with the new entry
        appended = tomli_w.dumps({**doc, "tokens": [*existing, entry]})
    _write(path, appended)
    return token


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".farm.toml-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
