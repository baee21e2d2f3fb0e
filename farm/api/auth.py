"""Bearer tokens and roles for the API.

`Authorization: Bearer TOKEN`; the token's sha256 is looked up in the configured `tokens`.
Missing or unknown token: 401. A known token used beyond its role: 403. `admin` may do everything.

With no tokens configured at all (the embedded farm), the API is open, but only to loopback
clients (127.0.0.0/8, ::1); any other client gets 401.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from farm.config import Settings
from farm.tokens import find_token, role_allows

bearer = HTTPBearer(auto_error=False, scheme_name="FarmToken",
                    description="A token made with `farm token create NAME --role submit|worker|admin`.")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require(role: str):  # type: ignore[no-untyped-def]
    """A dependency admitting `role` (and `admin`)."""

    def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        settings = app_settings(request)
        if not settings.tokens:
            if is_loopback(request.client.host if request.client else None):
                return Principal("loopback", "admin")
            raise _unauthorized("no API tokens are configured: this farm answers loopback clients only")
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise _unauthorized("missing bearer token")
        token = find_token(creds.credentials, settings.tokens)
        if token is None:
            raise _unauthorized("unknown token")
        if not role_allows(token.role, role):
            raise HTTPException(403, f"token {token.name!r} has role {token.role!r}; this needs {role!r}")
        return Principal(token.name, token.role)

    check.__name__ = f"require_{role}"
    return check
