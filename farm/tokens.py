"""API tokens: made once, shown once, kept only as their sha256 in the database (table `api_token`).

Roles, and what each may do (`GRANTS`; `admin` may do everything):

| role | may |
|---|---|
| `read` | download from private channels |
| `upload` | read, and upload to a channel's legacy upload API (`/<channel>/legacy/`) |
| `submit` | read, submit builds and read jobs |
| `promote` | submit, and promote and yank releases |
| `admin` | everything |
| `worker` | the storage of remote workers, nothing else |

A token may be limited to one channel (`--channel`): it reads and uploads there only. It may expire
(`--expires DATE`). `farm token revoke NAME` marks it revoked; every request looks its token up in the
database, so the next request with it is refused, with no restart.

Tokens in `farm.toml` (`[[tokens]]`, sha256 only, the form before the database held them) are
imported into the database when the API starts and by every `farm token` command; an imported
token is then managed like any other (listed, revoked). One whose sha256 the database already holds,
revoked or not, is never imported again, so removing it from `farm.toml` is not needed to revoke it.

The local admin token: `farm up` makes one on first start, `$FARM_HOME/admin.token` (mode 0600,
the token itself, for the CLI on this host). The API trusts it by its sha256 (`local_admin_config`),
read from the file, not the database; the local CLI sends it to a loopback `--server` when no
token is given. Deleting the file revokes it.

Storage capabilities: the coordinator gives every attempt of a job a capability, an HMAC of
(job id, attempt) under a secret only the server's processes read (`$FARM_HOME/storage-capability.key`,
mode 0600). It travels in the job's `JobSpec`; a worker shows it with every upload, and the API's
storage accepts a write only for the keys of that job and attempt (farm/api/routes_workers.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import tomli_w

from farm.config import Settings, TokenConfig
from farm.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ROLES = ("read", "upload", "submit", "promote", "admin", "worker")
GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "upload": frozenset({"read", "upload"}),
    "submit": frozenset({"read", "submit"}),
    "promote": frozenset({"read", "submit", "promote"}),
    "worker": frozenset({"worker"}),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    return role == "admin" or needed in GRANTS.get(role, frozenset())


def find_token(token: str, tokens: Iterable[TokenConfig]) -> TokenConfig | None:
    """The configured token whose hash matches, compared in constant time."""
    digest = hash_token(token)
    found = None
    for t in tokens:
        if hmac.compare_digest(t.sha256, digest):
            found = t
    return found


def _new_secret() -> str:
    return "farm_" + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    return name


# Tokens in the database ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TokenInfo:
    """A token as the API knows it (never the secret)."""

    name: str
    role: str
    channel: str | None = None
    created_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    origin: str = "cli"

    def state(self, now: dt.datetime | None = None) -> str:
        now = now or _utcnow()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def may_use(self, channel: str) -> bool:
        return self.channel is None or self.channel == channel


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def parse_expiry(text: str) -> dt.datetime:
    """`--expires`: a date (YYYY-MM-DD, the token works until that day begins, UTC) or an ISO date-time."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--expires {text!r}: expected a date (YYYY-MM-DD) or an ISO date-time") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    if when <= _utcnow():
        raise ConfigError(f"--expires {text!r} is in the past")
    return when


def _info(row: object) -> TokenInfo:
    return TokenInfo(name=row.name, role=row.role, channel=row.channel, created_at=row.created_at,  # type: ignore[attr-defined]
                     expires_at=row.expires_at, revoked_at=row.revoked_at, origin=row.origin)  # type: ignore[attr-defined]


def issue(session: Session, settings: Settings, name: str, role: str, *, channel: str | None = None,
          expires: dt.datetime | None = None) -> str:
    """A new random token `name` with `role` (limited to `channel` when given); only its sha256 is stored.
    The token itself is returned once and never again."""
    from sqlalchemy import select

    from farm.db.models import ApiToken

    check_name(name)
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if channel is not None:
        from farm.index.channels import layout

        known = layout(settings).channels
        if channel not in known:
            raise ConfigError(f"--channel {channel!r}: not a channel of this farm ({', '.join(known)})")
        if role in ("admin", "worker"):
            raise ConfigError(f"a {role} token is not limited to a channel")
    import_config_tokens(session, settings)
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise ConfigError(f"a token named {name!r} exists already (revoked ones keep their name)")
    token = _new_secret()
    session.add(ApiToken(name=name, role=role, channel=channel, sha256=hash_token(token), expires_at=expires,
                         origin="cli"))
    session.flush()
    return token


def revoke(session: Session, settings: Settings, name: str) -> TokenInfo:
    """Mark token `name` revoked (at once: the API looks every token up per request)."""
    from sqlalchemy import select

    from farm.db.models import ApiToken

    import_config_tokens(session, settings)
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        if name == LOCAL_ADMIN_NAME:
            raise ConfigError(f"{name} is the token in {local_admin_path(settings.home)}: delete that file to revoke it")
        raise NotFound(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = _utcnow()
        session.flush()
    return _info(row)


def list_tokens(session: Session, settings: Settings) -> list[TokenInfo]:
    from sqlalchemy import select

    from farm.db.models import ApiToken

    import_config_tokens(session, settings)
    return [_info(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.name))]


def lookup(session: Session, token: str) -> TokenInfo | None:
    """The database's token for the secret `token` (revoked and expired ones too: the caller decides)."""
    from sqlalchemy import select

    from farm.db.models import ApiToken

    row = session.scalar(select(ApiToken).where(ApiToken.sha256 == hash_token(token)))
    return None if row is None else _info(row)


def import_config_tokens(session: Session, settings: Settings) -> list[str]:
    """Copy the `farm.toml` tokens the database does not hold (by sha256, and by name) into it; their names."""
    from sqlalchemy import select

    from farm.db.models import ApiToken

    if not settings.tokens:
        return []
    held = set(session.scalars(select(ApiToken.sha256)))
    names = set(session.scalars(select(ApiToken.name)))
    added = []
    for t in settings.tokens:
        if t.sha256 in held:
            continue
        name = t.name if t.name not in names else f"{t.name}.toml-{t.sha256[:8]}"
        session.add(ApiToken(name=name, role=t.role, channel=None, sha256=t.sha256, origin="farm.toml"))
        held.add(t.sha256)
        names.add(name)
        added.append(name)
    if added:
        session.flush()
    return added


# Tokens in farm.toml (the form before the database; imported by `import_config_tokens`) ----------------


CONFIG_ROLES = ("submit", "worker", "admin")


def create_token(home: Path, name: str, role: str) -> str:
    """A new random token for `name` with `role`; its hash is appended to `home/farm.toml` (for a farm
    set up from files, before its database exists; `issue` makes one in the database).

    The rest of the file is kept as it is (the entry is appended as a `[[tokens]]` table); only a
    file that spells `tokens` as an inline array is rewritten as a whole.
    """
    if role not in CONFIG_ROLES:
        raise ConfigError(f"unknown role {role!r} for farm.toml; one of {', '.join(CONFIG_ROLES)}")
    check_name(name)
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
    token = _new_secret()
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
