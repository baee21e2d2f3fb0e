"""API tokens: made once, shown once, kept only as their sha256 in `$FARM_HOME/farm.toml`.

Roles: `submit` (submit and read jobs), `worker` (storage for remote workers), `admin` (all).

The local admin token: `farm up` makes one on first start, `$FARM_HOME/admin.token` (mode 0600,
the token itself, for the CLI on this host). The API trusts it by its sha256 (`api_tokens`), like
any configured token; the local CLI sends it to a loopback `--server` when no token is given.

Storage capabilities: the coordinator gives every attempt of a job a capability, an HMAC of
(job id, attempt) under a secret only the server's processes read (`$FARM_HOME/storage-capability.key`,
mode 0600). It travels in the job's `JobSpec`; a worker shows it with every upload, and the API's
storage accepts a write only for the keys of that job and attempt (farm/api/routes_workers.py).
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
from functools import lru_cache
from pathlib import Path

import tomli_w

from farm.config import Settings, TokenConfig
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


# The local admin token (`farm up`) -------------------------------------------------------------------

LOCAL_ADMIN_FILE = "admin.token"
LOCAL_ADMIN_NAME = "local-admin"


def local_admin_path(home: Path) -> Path:
    return Path(home) / LOCAL_ADMIN_FILE


def ensure_local_admin_token(home: Path) -> tuple[str, bool]:
    """The local admin token, made now (mode 0600) if there is none; (token, created).

    Written under a temporary name and linked into place, so two `farm up` racing here end up with
    the same token (the loser reads the winner's).
    """
    existing = read_local_admin_token(home)
    if existing is not None:
        return existing, False
    token = "farm_" + secrets.token_urlsafe(32)
    if _create_exclusive(local_admin_path(home), (token + "\n").encode()):
        return token, True
    winner = read_local_admin_token(home)
    if winner is None:  # pragma: no cover - made and removed again between two lines
        raise ConfigError(f"{local_admin_path(home)} vanished while it was made")
    return winner, False


def read_local_admin_token(home: Path) -> str | None:
    """The token in `$FARM_HOME/admin.token`, or None when there is none.

    A file others may read or write (any group/other mode bit), or one owned by another user, is
    refused (ConfigError): whoever can read it is admin, whoever can write it chooses the admin.
    """
    path = local_admin_path(home)
    data = _read_private(path, "the local admin token")
    if data is None:
        return None
    token = data.decode(errors="replace").strip()
    if not token.startswith("farm_") or len(token) < 20 or not token.isprintable():
        raise ConfigError(f"{path}: not a farm token; remove it and run `farm up` again")
    return token


def local_admin_config(home: Path) -> TokenConfig | None:
    """The local admin token as the API checks it: its sha256, role admin."""
    token = read_local_admin_token(home)
    if token is None:
        return None
    return TokenConfig(name=LOCAL_ADMIN_NAME, role="admin", sha256=hash_token(token))


def api_tokens(settings: Settings) -> list[TokenConfig]:
    """Every token the API accepts: the configured ones and the local admin token, when there is one."""
    local = local_admin_config(settings.home)
    return [*settings.tokens, *([local] if local is not None else [])]


# Storage capabilities -------------------------------------------------------------------------------

CAPABILITY_FILE = "storage-capability.key"
CAPABILITY_HEADER = "X-Farm-Capability"
_CAPABILITY = re.compile(r"^fc1\.([0-9]{1,12})\.([0-9]{1,6})\.([0-9a-f]{64})$")


def capability_secret(home: Path) -> bytes:
    """The secret storage capabilities are made with (made now if missing; mode 0600)."""
    path = Path(home) / CAPABILITY_FILE
    data = _read_private(path, "the storage capability secret")
    if data is None:
        _create_exclusive(path, secrets.token_hex(32).encode() + b"\n")
        data = _read_private(path, "the storage capability secret")
    secret = (data or b"").strip()
    if len(secret) < 32:
        raise ConfigError(f"{path}: too short to be the storage capability secret; remove it (every queued "
                          "job's capability changes)")
    return secret


def _mac(secret: bytes, job_id: int, attempt: int) -> str:
    return hmac.new(secret, f"wheel-farm storage capability v1: job {job_id} attempt {attempt}".encode(),
                    hashlib.sha256).hexdigest()


def storage_capability(home: Path, job_id: int, attempt: int) -> str:
    """What a worker shows to write the storage keys of `attempt` of `job_id` (and nothing else)."""
    return f"fc1.{int(job_id)}.{int(attempt)}.{_mac(capability_secret(home), job_id, attempt)}"


def check_capability(home: Path, capability: str) -> tuple[int, int] | None:
    """(job id, attempt) the capability was made for, or None if it is not one of ours."""
    m = _CAPABILITY.match(capability or "")
    if m is None:
        return None
    job_id, attempt = int(m.group(1)), int(m.group(2))
    if not hmac.compare_digest(m.group(3), _mac(capability_secret(home), job_id, attempt)):
        return None
    return job_id, attempt


# Private files ------------------------------------------------------------------------------------------


def _read_private(path: Path, what: str) -> bytes | None:
    """The bytes of a file only its owner (this user) may read and write; None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if os.name == "posix":
        if st.st_mode & 0o077:
            raise ConfigError(f"{path}: {what} may be read or written by others (mode {st.st_mode & 0o777:o}); "
                              "chmod 600 it, or remove it to make a new one")
        if st.st_uid != os.getuid():
            raise ConfigError(f"{path}: {what} belongs to another user (uid {st.st_uid})")
    return _cached_read(path, st.st_mtime_ns, st.st_size, st.st_ino)


@lru_cache(maxsize=16)
def _cached_read(path: Path, _mtime: int, _size: int, _ino: int) -> bytes:
    return path.read_bytes()


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Write `data` to `path` (mode 0600) unless it exists; True when this call made it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)
