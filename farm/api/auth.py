"""Bearer tokens and roles for the API.

`Authorization: Bearer TOKEN`; the token's sha256 is looked up in the tokens the API accepts: the
configured `tokens` and the local admin token `farm up` keeps in `$FARM_HOME/admin.token`
(farm/tokens.py). Missing or unknown token: 401. A known token used beyond its role: 403. `admin`
may do everything.

Where a client connects from counts for nothing: package code runs on the farm's own hosts, so a
loopback client is not trusted either. With no tokens at all, every route that needs a role
answers 401; `/health` and the index need no token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from farm.config import Settings, TokenConfig
from farm.errors import ConfigError
from farm.tokens import api_tokens, find_token, role_allows

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, scheme_name="FarmToken",
                    description="A token made with `farm token create NAME --role submit|worker|admin` "
                                "(or the local admin token `farm up` keeps in $FARM_HOME/admin.token).")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def app_tokens(request: Request) -> list[TokenConfig]:
    """The tokens this app accepts, read once per app (like the configured ones, loaded at start)."""
    tokens = getattr(request.app.state, "farm_tokens", None)
    if tokens is None:
        settings = app_settings(request)
        try:
            tokens = api_tokens(settings)
        except ConfigError as exc:  # an unsafe admin.token is not trusted; the configured tokens still are
            log.error("local admin token refused: %s", exc)
            tokens = list(settings.tokens)
        request.app.state.farm_tokens = tokens
    return tokens


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require(role: str):  # type: ignore[no-untyped-def]
    """A dependency admitting `role` (and `admin`)."""

    def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        tokens = app_tokens(request)
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise _unauthorized("missing bearer token" if tokens else
                                "missing bearer token; this farm has no API tokens yet: `farm up` makes the local "
                                "admin token ($FARM_HOME/admin.token), `farm token create NAME --role ROLE` others")
        token = find_token(creds.credentials, tokens)
        if token is None:
            raise _unauthorized("unknown token")
        if not role_allows(token.role, role):
            raise HTTPException(403, f"token {token.name!r} has role {token.role!r}; this needs {role!r}")
        return Principal(token.name, token.role)

    check.__name__ = f"require_{role}"
    return check
