"""Tokens and roles for the API, the upload API and private channels.

A client sends its token as `Authorization: Bearer TOKEN`, or with HTTP Basic as the password (the
user name is not looked at; twine, uv and pip send `__token__`). The token's sha256 is looked up on
every request: the local admin token `farm up` keeps in `$FARM_HOME/admin.token` (farm/tokens.py),
then the database's `api_token` table, so a revoked or expired token is refused on the very next
request. Missing, unknown, revoked or expired token: 401. A known token used beyond its role, or
for a channel it is not limited to: 403. `admin` may do everything (roles: farm/tokens.py).

Where a client connects from counts for nothing: package code runs on the farm's own hosts, so a
loopback client is not trusted either. With no tokens at all, every route that needs a role
answers 401; `/health` and the index of a channel that is not private need no token.

The `farm.toml` tokens are imported into the database once per app, at its first request that
carries a token (`farm.tokens.import_config_tokens`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from farm.config import Settings
from farm.errors import AccessRefused as Refused
from farm.errors import ConfigError
from farm.tokens import TokenInfo, hash_token, import_config_tokens, local_admin_config, lookup, role_allows

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, scheme_name="FarmToken",
                    description="A token made with `farm token create NAME --role ROLE` "
                                "(or the local admin token `farm up` keeps in $FARM_HOME/admin.token).")

BASIC_REALM = 'Basic realm="wheel-farm"'


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    channel: str | None = None  # the one channel the token is limited to; None: all


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def secret_from_header(header: str | None) -> str | None:
    """The token in an Authorization header value: `Bearer TOKEN`, or HTTP Basic with it as the password."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (password or None) if sep else None
    return None


def identify(settings: Settings, secret: str | None, state: object | None = None) -> Principal:
    """Who `secret` is, or `Refused(401)`. `state` (an app's state) remembers that the farm.toml
    tokens were imported into the database for that app."""
    if not secret:
        raise Refused(401, "no token: send one as the password of HTTP Basic (user __token__) or as a Bearer token")
    try:
        local = local_admin_config(settings.home)
    except ConfigError as exc:  # an unsafe admin.token is not trusted; the database's tokens still are
        log.error("local admin token refused: %s", exc)
        local = None
    if local is not None and local.sha256 == hash_token(secret):
        return Principal(local.name, "admin")
    info = _lookup(settings, secret, state)
    if info is None:
        raise Refused(401, "unknown token")
    status = info.state()
    if status != "active":
        raise Refused(401, f"token {info.name!r} is {status}")
    return Principal(info.name, info.role, info.channel)


def _lookup(settings: Settings, secret: str, state: object | None) -> TokenInfo | None:
    from farm.db.session import session_scope

    with session_scope() as session:
        if settings.tokens and not getattr(state, "farm_tokens_imported", False):
            added = import_config_tokens(session, settings)
            if added:
                log.info("imported farm.toml tokens into the database: %s", ", ".join(added))
            if state is not None:
                state.farm_tokens_imported = True  # type: ignore[attr-defined]
        return lookup(session, secret)


def authorize(who: Principal, needed: str, channel: str | None = None) -> None:
    """`Refused(403)` unless `who` may do `needed` (in `channel`, when the action is in one)."""
    if not role_allows(who.role, needed):
        raise Refused(403, f"token {who.name!r} has role {who.role!r}; this needs {needed!r}")
    if channel is not None and who.channel is not None and who.channel != channel:
        raise Refused(403, f"token {who.name!r} is for channel {who.channel!r}, not {channel!r}")


def require(role: str):  # type: ignore[no-untyped-def]
    """A dependency admitting `role` (and the roles that include it, and `admin`)."""

    def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        secret = secret_from_header(request.headers.get("authorization"))
        try:
            who = identify(app_settings(request), secret, request.app.state)
            authorize(who, role)
        except Refused as exc:
            if exc.status == 401 and secret is None:
                exc.detail = ("missing bearer token; `farm up` makes the local admin token ($FARM_HOME/admin.token), "
                              "`farm token create NAME --role ROLE` others")
            raise HTTPException(exc.status, exc.detail,
                                headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None) from None
        return who

    check.__name__ = f"require_{role}"
    return check


def private_trees(settings: Settings) -> dict[str, list[str]]:
    """Per private tree (channels and virtual indexes; "" for the top-level tree) the private channels
    it serves: a channel in `private_channels`, and any virtual index that lists one."""
    from farm.index.channels import layout

    lay = layout(settings)
    private = set(settings.private_channels)
    found: dict[str, list[str]] = {}
    for tree in lay.trees():
        members = [c for c in lay.members(tree) if c in private]
        if members:
            found[tree] = members
    if lay.first in found:
        found[""] = found[lay.first]
    return found


def index_guard(settings: Settings):  # type: ignore[no-untyped-def]
    """The index's guard (farm/index/serve.py): a private tree needs a token of role read (or more)
    for every private channel it serves; 401 with `WWW-Authenticate: Basic` without one, 403 for a
    token of another channel. Public trees need none."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse, Response

    guarded = private_trees(settings)

    async def guard(request: Request, tree: str) -> Response | None:
        channels = guarded.get(tree)
        if not channels:
            return None
        secret = secret_from_header(request.headers.get("authorization"))
        try:
            who = await run_in_threadpool(identify, settings, secret, request.app.state if "app" in request.scope else None)
            for channel in channels:
                authorize(who, "read", channel)
        except Refused as exc:
            headers = {"WWW-Authenticate": BASIC_REALM} if exc.status == 401 else None
            word = "Unauthorized" if exc.status == 401 else "Forbidden"
            return PlainTextResponse(f"{exc.status} {word}: {exc.detail}\n", status_code=exc.status, headers=headers)
        return None

    return guard
