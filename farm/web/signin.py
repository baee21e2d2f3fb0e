"""Sign-in for the dashboard: an API token (farm/tokens.py), kept in a cookie.

The sign-in form posts the token; the dashboard checks it as the API does (`farm.api.auth.identify`:
the database's tokens and the local admin token) and keeps it in an HttpOnly, SameSite=Strict cookie
(Secure when the page came over HTTPS). Every request checks it again, so a revoked or expired token
signs its holder out on the next page. Reading needs the role `submit` (like `GET /api/jobs`), so a worker
token does not sign in; `submit` and `admin` see the cancel and retry buttons.

Every form that changes something carries a CSRF value derived from the token (an HMAC), checked
on POST, besides the SameSite cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from fastapi import HTTPException, Request

from farm.api.auth import Principal, Refused, app_settings, identify
from farm.tokens import role_allows

COOKIE = "farm_token"
READ_ROLE = "submit"


def principal_for(request: Request, token: str | None) -> Principal | None:
    if not token:
        return None
    try:
        return identify(app_settings(request), token, request.app.state)
    except Refused:
        return None


def viewer(request: Request) -> Principal | None:
    """The signed-in principal allowed to read the dashboard, or None."""
    who = principal_for(request, request.cookies.get(COOKIE))
    return who if who is not None and role_allows(who.role, READ_ROLE) else None


def can(who: Principal | None, role: str) -> bool:
    return who is not None and role_allows(who.role, role)


def csrf_value(request: Request) -> str:
    token = request.cookies.get(COOKIE, "")
    return hmac.new(hashlib.sha256(token.encode()).digest(), b"farm-dashboard-csrf", "sha256").hexdigest()


def check_csrf(request: Request, value: str | None) -> None:
    if not value or not hmac.compare_digest(value, csrf_value(request)):
        raise HTTPException(403, "the form is stale or came from another site: reload the page and try again")


def safe_next(target: str | None) -> str:
    """A local path to go back to after sign-in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def signin_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/ui/signin?next={quote(here, safe='')}"
