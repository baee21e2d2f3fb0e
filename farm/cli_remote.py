"""`farm submit/status/logs` (and the client behind cancel/yank/promote) against a farm's HTTP API (`--server URL`, `server_url`, FARM_SERVER_URL).

The same output as the local commands, read from the API instead of the database; nothing here
imports the database modules. The token comes from `--token`, `token` or FARM_TOKEN; without one,
a server on a loopback address gets the local admin token `farm up` made ($FARM_HOME/admin.token),
and no other server ever does.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from farm.errors import FarmError, NotFound, StateError

SDIST_SUFFIXES = (".tar.gz", ".zip", ".tgz", ".tar.bz2")  # as farm.coordinator.submit
TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiClient:
    """A small client of the farm's API: submissions, jobs, logs."""

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
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            if resp.status_code == 404:
                raise NotFound(detail)
            if resp.status_code == 409:
                raise StateError(detail)
            if resp.status_code == 401 and not self._headers:
                detail += (" (no token was sent: give --token or FARM_TOKEN; for a farm on this host, run the CLI "
                           "with its FARM_HOME, where `farm up` keeps admin.token)")
            raise FarmError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
        return resp

    def submit_file(self, path: Path, *, priority: int = 0) -> dict[str, Any]:
        if not path.is_file():
            raise FarmError(f"{path}: no such file")
        with open(path, "rb") as f:
            return self._call("POST", "/api/submissions", data={"priority": str(priority)},
                              files={"file": (path.name, f, "application/octet-stream")}).json()

    def submit_requirement(self, requirement: str, *, priority: int = 0) -> dict[str, Any]:
        return self._call("POST", "/api/submissions", json={"requirement": requirement, "priority": priority}).json()

    def yank(self, pin: str, *, reason: str | None = None, undo: bool = False) -> list[str]:
        return list(self._call("POST", "/api/releases/yank", json={"pin": pin, "reason": reason, "undo": undo})
                    .json()["lines"])

    def promote(self, pin: str, *, to: str, upload: bool = True) -> list[str]:
        return list(self._call("POST", "/api/releases/promote", json={"pin": pin, "to": to, "upload": upload})
                    .json()["lines"])

    def cancel(self, job_id: int) -> str:
        return str(self._call("POST", f"/api/jobs/{job_id}/cancel").json()["detail"])

    def jobs(self, *, submission: int | None = None, limit: int = 50, active: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, "active": active}
        if submission is not None:
            params["submission"] = submission
        return self._call("GET", "/api/jobs", params=params).json()

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{job_id}").json()

    def log(self, job_id: int) -> str:
        return self._call("GET", f"/api/jobs/{job_id}/log").text


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


def _is_file(request: str) -> bool:
    if request.endswith(SDIST_SUFFIXES):
        return True
    try:
        return Path(request).exists()
    except OSError:
        return False


def cmd_submit(args: argparse.Namespace) -> int:
    api = client_from_settings()
    job_ids: list[int] = []
    for request in args.requests:
        result = (api.submit_file(Path(request), priority=args.priority) if _is_file(request)
                  else api.submit_requirement(request, priority=args.priority))
        for job in result["jobs"]:
            print(f"job {job['id']}: {result['name']} {result['version']} {job['build_id']} {job['state']}")
            job_ids.append(job["id"])
    if not args.wait:
        return 0
    return wait(api, job_ids, timeout=args.timeout, quiet=args.quiet)


def wait(api: ApiClient, job_ids: list[int], *, timeout: float, quiet: bool, interval: float = 0.5) -> int:
    deadline = time.monotonic() + timeout
    last: dict[int, str] = {}
    while True:
        views = [api.job(i) for i in job_ids]
        for v in views:
            if not quiet and last.get(v["id"]) != v["state"]:
                done_steps = " ".join(f"{s['name']} {s['seconds']:.1f}s" for s in v["steps"] if s["outcome"] != "running")
                print(f"job {v['id']}: {v['name']} {v['version']} {v['build_id']}: {v['state']}"
                      + (f"  [{done_steps}]" if done_steps else ""), flush=True)
                last[v["id"]] = v["state"]
        if all(v["state"] in TERMINAL for v in views):
            failed = [v for v in views if v["state"] != "succeeded"]
            for v in failed:
                print(f"job {v['id']} {v['state']}: {v['error']}", file=sys.stderr)
            for v in views:
                for wheel in v["wheels"]:
                    print(f"job {v['id']}: published {wheel}")
            return 1 if failed else 0
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:.0f} s waiting for jobs {job_ids}", file=sys.stderr)
            return 1
        time.sleep(interval)


def cmd_status(args: argparse.Namespace) -> int:
    views = client_from_settings().jobs(submission=args.submission, limit=args.limit, active=args.active)
    if args.json:
        print(json.dumps(views, default=str, indent=1))
        return 0
    if not views:
        print("no jobs")
    for v in views:
        steps = " ".join(f"{s['name']}={s['seconds']:.1f}s{'' if s['outcome'] != 'failed' else '!'}" for s in v["steps"])
        extra = f" reuses job {v['cached_from']}" if v["cached_from"] else ""
        waiting = f" waiting for {', '.join(v['waiting_for'])}" if v["waiting_for"] else ""
        print(f"{v['id']:>5} {v['name']} {v['version']} {v['build_id']:<28} {v['state']:<10} {steps}{extra}{waiting}")
        if v["error"] and v["state"] == "failed":
            print(f"      {v['error'].splitlines()[0][:200]}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sys.stdout.write(client_from_settings().log(args.job))
    return 0
