"""The remote backend: the same commands against a farm's HTTP API (`--server URL`, `server_url`,
FARM_SERVER_URL). Nothing here imports the database modules.

The token comes from `--token`, `token` or FARM_TOKEN; without one, a server on a loopback address
gets the local admin token `farm up` made ($FARM_HOME/admin.token), and no other server ever does.

An error answer names its error class (`error_class`, see farm/api/app.py); the client raises that
class from farm/errors.py, so the exit code is the one the same error has on the farm's own host.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import httpx

from farm.cli.backend import JobView, RequirementsView, SubmissionView
from farm.cli.requirements import Item
from farm.errors import FarmError, NotFound, StateError, UsageError, error_class
from farm.util.archive import is_file_request


class ApiClient:
    """A small client of the farm's API: submissions, jobs, logs, releases."""

    def __init__(self, base_url: str, token: str = "", *, timeout: float = 600.0,
                 client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._client.request(method, self.base_url + path, headers=self._headers, **kw)
        except httpx.HTTPError as exc:
            raise FarmError(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise self._error(method, path, resp)
        return resp

    def _error(self, method: str, path: str, resp: httpx.Response) -> FarmError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        detail = body.get("detail", resp.text) if isinstance(body, dict) else resp.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        kind = body.get("error_class") if isinstance(body, dict) else None
        if isinstance(kind, str):  # the farm's own error: the same class, the same exit code
            return error_class(kind).from_message(detail)
        if resp.status_code == 404:
            return NotFound(detail)
        if resp.status_code == 409:
            return StateError(detail)
        if resp.status_code == 401 and not self._headers:
            detail += (" (no token was sent: give --token or FARM_TOKEN; for a farm on this host, run the CLI "
                       "with its FARM_HOME, where `farm up` keeps admin.token)")
        return FarmError(f"{method} {path}: HTTP {resp.status_code}: {detail}")

    def submit_file(self, path: Path, *, priority: int = 0, rebuild: str | None = None) -> SubmissionView:
        if not path.is_file():
            raise FarmError(f"{path}: no such file")
        data = {"priority": str(priority), **({"rebuild": rebuild} if rebuild is not None else {})}
        with open(path, "rb") as f:
            return self._call("POST", "/api/submissions", data=data,
                              files={"file": (path.name, f, "application/octet-stream")}).json()

    def submit_requirement(self, requirement: str, *, priority: int = 0, rebuild: str | None = None) -> SubmissionView:
        body = {"requirement": requirement, "priority": priority, **({"rebuild": rebuild} if rebuild is not None else {})}
        return self._call("POST", "/api/submissions", json=body).json()

    def yank(self, pin: str, *, reason: str | None = None, undo: bool = False) -> list[str]:
        return list(self._call("POST", "/api/releases/yank", json={"pin": pin, "reason": reason, "undo": undo})
                    .json()["lines"])

    def promote(self, pin: str, *, to: str, upload: bool = True) -> list[str]:
        return list(self._call("POST", "/api/releases/promote", json={"pin": pin, "to": to, "upload": upload})
                    .json()["lines"])

    def cancel(self, job_id: int) -> str:
        return str(self._call("POST", f"/api/jobs/{job_id}/cancel").json()["detail"])

    def jobs(self, *, submission: int | None = None, limit: int = 50, active: bool = False) -> list[JobView]:
        params: dict[str, Any] = {"limit": limit, "active": active}
        if submission is not None:
            params["submission"] = submission
        return self._call("GET", "/api/jobs", params=params).json()

    def job(self, job_id: int) -> JobView:
        return self._call("GET", f"/api/jobs/{job_id}").json()

    def log(self, job_id: int) -> str:
        return self._call("GET", f"/api/jobs/{job_id}/log").text

    def show(self, pin: str) -> dict[str, Any]:
        return self._call("GET", "/api/releases/show", params={"pin": pin}).json()

    def find(self, sha256: str) -> dict[str, Any]:
        return self._call("GET", "/api/releases/find", params={"sha256": sha256.strip().lower()}).json()


class RemoteBackend:
    """`Backend` over the API: the same views as the local one, read from `/api/...`."""

    poll_interval = 0.5

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def submit(self, request: str, *, priority: int, rebuild: str | None = None,
               platforms: list[str] | None = None, pythons: list[str] | None = None) -> SubmissionView:
        if platforms or pythons:
            raise FarmError("--python and --platform are not sent through --server yet: submit on the farm's host")
        if is_file_request(request):
            return self.api.submit_file(Path(request), priority=priority, rebuild=rebuild)
        return self.api.submit_requirement(request, priority=priority, rebuild=rebuild)

    def submit_requirements(self, label: str, items: list[Item], *, priority: int, rebuild: str | None = None,
                            platforms: list[str] | None = None, pythons: list[str] | None = None) -> RequirementsView:
        if platforms or pythons:
            raise UsageError("--platform and --python are not sent with a requirements file to a --server yet; "
                             "submit its lines one by one, or without them")
        files = [i for i in items if i.from_file]
        if files:
            raise UsageError(f"{files[0].origin}: an sdist path in a requirements file is not sent to a --server; "
                             "submit the file on its own (it is uploaded)")
        body = {"request": label, "priority": priority, **({"rebuild": rebuild} if rebuild is not None else {}),
                "items": [{"requirement": i.request, "sha256": sorted(i.sha256), "origin": i.origin} for i in items]}
        return self.api._call("POST", "/api/submissions/requirements", json=body).json()

    def jobs(self, *, submission: int | None, limit: int, active: bool) -> list[JobView]:
        return self.api.jobs(submission=submission, limit=limit, active=active)

    def jobs_by_id(self, job_ids: list[int]) -> list[JobView]:
        return [self.api.job(i) for i in job_ids]

    def log(self, job_id: int) -> str:
        return self.api.log(job_id)

    def cancel(self, job_id: int) -> str:
        return self.api.cancel(job_id)

    def yank(self, pin: str, *, reason: str | None, undo: bool) -> list[str]:
        return self.api.yank(pin, reason=reason, undo=undo)

    def promote(self, pin: str, *, to: str, upload: bool) -> list[str]:
        return self.api.promote(pin, to=to, upload=upload)


def client_from_settings() -> ApiClient:
    from farm.config import get_settings

    settings = get_settings()
    return ApiClient(settings.server_url, settings.token or local_token(settings.server_url, settings.home))


def is_loopback_url(url: str) -> bool:
    host = (httpx.URL(url).host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_token(server_url: str, home: Path) -> str:
    """The local admin token for a farm on this host (a loopback URL), or "" (never sent elsewhere)."""
    from farm.tokens import read_local_admin_token

    if not is_loopback_url(server_url):
        return ""
    return read_local_admin_token(home) or ""
