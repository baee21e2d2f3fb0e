"""The HTTP API in-process (FastAPI TestClient) on a real PostgreSQL database made for this module.

Tokens: missing or unknown -> 401, a role used beyond its rights -> 403, admin everywhere (with
no tokens at all nobody, loopback included: tests/test_farm_boundary.py). Submissions: an sdist
upload and a requirement (from a static upstream index on 127.0.0.1), a server path sent as a
requirement refused, a priority outside 0-9 refused with nothing stored, cancel (409 once a job has
ended, 404 unknown). Worker storage: traversal and absolute keys refused, writes only of a live job
attempt's results with its capability, a sha256 mismatch refused with nothing stored; HttpStorage
against the app. Tokens made by `farm token create`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import farm.cli
import farm.storage
from farm.api.app import create_app
from farm.config import get_settings, reset_settings
from farm.errors import ConfigError, InfrastructureFault, NotFound
from farm.storage import LocalStorage, get_storage
from farm.storage_http import HttpStorage, SHA256_HEADER
from farm.tokens import CAPABILITY_HEADER, create_token, hash_token
from tests.helpers.api import Api, api, capability, live_job, submission_count, upload  # noqa: F401 - fixtures
from tests.helpers.sdists import make_good


def storage_files(api: Api) -> set[str]:
    root = api.settings.storage
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def put(api: Api, key: str, data: bytes, role: str | None = "worker", digest: str | None = "auto",  # type: ignore[no-untyped-def]
        cap: dict[str, str] | None = None):
    headers = {**api.h(role), **(cap or {})}
    if digest is not None:
        headers[SHA256_HEADER] = hashlib.sha256(data).hexdigest() if digest == "auto" else digest
    return api.client.put(f"/api/storage/{key}", content=data, headers=headers)


# Open endpoints, OpenAPI ------------------------------------------------------------------------------


def test_health_and_index_need_no_token(api: Api) -> None:
    assert api.client.get("/health").json() == {"status": "ok"}
    for path in ("/simple/", "/simple/nothing/"):
        resp = api.client.get(path)
        assert resp.status_code in (200, 404) and "www-authenticate" not in resp.headers, path


def test_openapi_shows_bearer_scheme_on_protected_routes(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["FarmToken"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["FarmToken"]["description"]}
    for path, method in [("/api/submissions", "post"), ("/api/jobs", "get"), ("/api/jobs/{job_id}", "get"),
                         ("/api/jobs/{job_id}/log", "get"), ("/api/storage/{key}", "get"), ("/api/storage/{key}", "put")]:
        assert doc["paths"][path][method]["security"] == [{"FarmToken": []}], (path, method)
    assert "security" not in doc["paths"]["/health"]["get"]
    body = doc["paths"]["/api/submissions"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}


# 401 / 403 ------------------------------------------------------------------------------------------------

PROTECTED = [("GET", "/api/jobs"), ("GET", "/api/jobs/1"), ("GET", "/api/jobs/1/log"), ("POST", "/api/submissions"),
             ("POST", "/api/jobs/1/cancel"),
             ("GET", "/api/storage/sdists/x"), ("HEAD", "/api/storage/sdists/x"), ("PUT", "/api/storage/jobs/1/attempt-1.log")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_token_is_401(api: Api, method: str, path: str) -> None:
    resp = api.client.request(method, path, json={"requirement": "remote==1.0"} if method == "POST" else None)
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("header", ["Bearer farm_not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz",
                                    "Bearer " + hashlib.sha256(b"x").hexdigest()])
def test_wrong_token_is_401(api: Api, method: str, path: str, header: str) -> None:
    assert api.client.request(method, path, headers={"Authorization": header}).status_code == 401


def test_token_hash_itself_is_not_a_token(api: Api) -> None:
    """What farm.toml holds (the sha256) does not authenticate."""
    stored = hash_token(api.tokens["admin"])
    assert api.client.get("/api/jobs", headers={"Authorization": f"Bearer {stored}"}).status_code == 401


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/storage/sdists/x"), ("HEAD", "/api/storage/sdists/x"),
                                              ("PUT", "/api/storage/jobs/1/attempt-1.log")])
def test_submit_token_on_worker_endpoint_is_403(api: Api, method: str, path: str) -> None:
    before = storage_files(api)
    resp = api.client.request(method, path, content=b"x", headers={**api.h("submit"), SHA256_HEADER: hashlib.sha256(b"x").hexdigest()})
    assert resp.status_code == 403
    if method != "HEAD":
        assert "submit" in resp.json()["detail"]
    assert storage_files(api) == before


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/jobs"), ("GET", "/api/jobs/1"), ("GET", "/api/jobs/1/log"),
                                              ("POST", "/api/submissions"), ("POST", "/api/jobs/1/cancel")])
def test_worker_token_on_submit_endpoints_is_403(api: Api, method: str, path: str) -> None:
    before = submission_count()
    resp = api.client.request(method, path, headers=api.h("worker"),
                              json={"requirement": "remote==1.0"} if method == "POST" else None)
    assert resp.status_code == 403
    assert "worker" in resp.json()["detail"]
    assert submission_count() == before


def test_admin_allowed_everywhere(api: Api, tmp_path: Path) -> None:
    sdist = make_good(tmp_path / "in", "adminpkg", "1.0")
    resp = upload(api, sdist, role="admin")
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["jobs"][0]["id"]
    assert api.client.get("/api/jobs", headers=api.h("admin")).status_code == 200
    assert api.client.get(f"/api/jobs/{job_id}", headers=api.h("admin")).json()["name"] == "adminpkg"
    assert api.client.get(f"/api/jobs/{job_id}/log", headers=api.h("admin")).status_code == 200
    key = f"sdists/{hashlib.sha256(sdist.read_bytes()).hexdigest()[:2]}/{hashlib.sha256(sdist.read_bytes()).hexdigest()}/{sdist.name}"
    assert api.client.get(f"/api/storage/{key}", headers=api.h("admin")).content == sdist.read_bytes()
    cap = {CAPABILITY_HEADER: capability(job_id)}
    assert put(api, f"jobs/{job_id}/attempt-1.log", b"hello", role="admin", cap=cap).status_code == 201


# Submissions and jobs -----------------------------------------------------------------------------------


def test_upload_submission_jobs_log_and_worker_download(api: Api, tmp_path: Path) -> None:
    sdist = make_good(tmp_path / "in", "uploaded", "1.0")
    resp = upload(api, sdist)
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["name"], body["version"]) == ("uploaded", "1.0")
    assert body["jobs"] and all(j["state"] == "queued" for j in body["jobs"])
    job_id = body["jobs"][0]["id"]

    listed = api.client.get("/api/jobs", params={"submission": body["submission_id"]}, headers=api.h("submit")).json()
    assert [j["id"] for j in listed] == sorted((j["id"] for j in body["jobs"]), reverse=True)
    one = api.client.get(f"/api/jobs/{job_id}", headers=api.h("submit")).json()
    assert (one["id"], one["state"], one["name"], one["submission_id"]) == (job_id, "queued", "uploaded", body["submission_id"])
    assert api.client.get("/api/jobs/999999", headers=api.h("submit")).status_code == 404
    assert api.client.get("/api/jobs/999999/log", headers=api.h("submit")).status_code == 404
    assert "no log yet" in api.client.get(f"/api/jobs/{job_id}/log", headers=api.h("submit")).text

    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    key = f"sdists/{digest[:2]}/{digest}/{sdist.name}"
    got = api.client.get(f"/api/storage/{key}", headers=api.h("worker"))
    assert got.status_code == 200 and got.content == sdist.read_bytes()
    assert api.client.head(f"/api/storage/{key}", headers=api.h("worker")).headers["content-length"] == str(sdist.stat().st_size)
    assert not list((api.home / "tmp").glob("upload-*")), "the uploaded file is not left in tmp"


def test_requirement_submission(api: Api) -> None:
    resp = api.client.post("/api/submissions", json={"requirement": "remote==1.0"}, headers=api.h("submit"))
    assert resp.status_code == 201, resp.text
    assert (resp.json()["name"], resp.json()["version"]) == ("remote", "1.0")
    resp = api.client.post("/api/submissions", json={"requirement": "nosuchproject==1.0"}, headers=api.h("submit"))
    assert resp.status_code == 502 and "nosuchproject" in resp.json()["detail"]


@pytest.mark.parametrize("request_text", ["/etc/passwd", "../farm.toml", "~/x.tar.gz", "PATH.tar.gz", "farm.toml", "tmp"])
def test_requirement_that_is_a_path_is_refused(api: Api, request_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing on the server is read on behalf of a JSON request, even a file in the server's cwd:
    `farm.toml` and `tmp` exist there, yet they are only names of projects the upstream lacks."""
    monkeypatch.chdir(api.home)
    (api.home / "tmp").mkdir(exist_ok=True)
    before = submission_count()
    resp = api.client.post("/api/submissions", json={"requirement": request_text}, headers=api.h("submit"))
    assert resp.status_code in (422, 502), resp.text
    assert "no such file" not in resp.text and "directory" not in resp.text
    if request_text in ("farm.toml", "tmp"):
        assert resp.status_code == 502, resp.text  # looked up upstream as a project name, nothing read here
    assert submission_count() == before


def test_server_sdist_path_is_not_submitted(api: Api, tmp_path: Path) -> None:
    sdist = make_good(tmp_path / "server-side", "serverside", "1.0")
    before = submission_count()
    resp = api.client.post("/api/submissions", json={"requirement": str(sdist)}, headers=api.h("submit"))
    assert resp.status_code == 422
    assert submission_count() == before


def job_priority(job_id: int) -> int:
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.priority


def test_priority_reaches_the_jobs(api: Api, tmp_path: Path) -> None:
    sdist = make_good(tmp_path / "in", "urgentupload", "1.0")
    with open(sdist, "rb") as f:
        resp = api.client.post("/api/submissions", headers=api.h("submit"), data={"priority": "7"},
                               files={"file": (sdist.name, f, "application/octet-stream")})
    assert resp.status_code == 201, resp.text
    assert {job_priority(j["id"]) for j in resp.json()["jobs"]} == {7}
    resp = api.client.post("/api/submissions", json={"requirement": "remote==1.0", "priority": 9}, headers=api.h("submit"))
    assert resp.status_code == 201, resp.text
    assert {job_priority(j["id"]) for j in resp.json()["jobs"]} == {9}


@pytest.mark.parametrize("priority", ["10", "-1", "high", "1.5"])
def test_bad_priority_refused_and_nothing_stored(api: Api, tmp_path: Path, priority: str) -> None:
    before, files = submission_count(), storage_files(api)
    sdist = make_good(tmp_path / "in", "badprio", "1.0")
    with open(sdist, "rb") as f:
        resp = api.client.post("/api/submissions", headers=api.h("submit"), data={"priority": priority},
                               files={"file": (sdist.name, f, "application/octet-stream")})
    assert resp.status_code == 422 and "priority" in resp.text, resp.text
    resp = api.client.post("/api/submissions", json={"requirement": "remote==1.0", "priority": priority},
                           headers=api.h("submit"))
    assert resp.status_code == 422 and "priority" in resp.text, resp.text
    assert submission_count() == before and storage_files(api) == files


def test_cancel_over_the_api(api: Api, tmp_path: Path) -> None:
    """A queued job is cancelled; cancelling it again is 409 (it has ended), an unknown job 404."""
    resp = upload(api, make_good(tmp_path / "in", "tocancel", "1.0"))
    job_id = resp.json()["jobs"][0]["id"]
    done = api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.h("submit"))
    assert done.status_code == 200 and done.json()["detail"].startswith(f"job {job_id}: cancelled"), done.text
    assert api.client.get(f"/api/jobs/{job_id}", headers=api.h("submit")).json()["state"] == "cancelled"
    again = api.client.post(f"/api/jobs/{job_id}/cancel", headers=api.h("submit"))
    assert again.status_code == 409 and "already ended: cancelled" in again.json()["detail"]
    assert api.client.post("/api/jobs/999999/cancel", headers=api.h("submit")).status_code == 404


def test_remote_cli_client_submits_with_priority_and_cancels(api: Api, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote CLI's client against the app: priority and cancel travel; errors keep their kind."""
    from farm.cli.remote import ApiClient
    from farm.errors import StateError

    client = ApiClient("http://testserver", api.tokens["submit"], client=api.client)
    result = client.submit_file(make_good(tmp_path / "in", "remoteprio", "1.0"), priority=5)
    job_id = result["jobs"][0]["id"]
    assert job_priority(job_id) == 5
    assert client.cancel(job_id).startswith(f"job {job_id}: cancelled")
    with pytest.raises(StateError, match="already ended"):
        client.cancel(job_id)
    with pytest.raises(NotFound):
        client.cancel(999999)

    # `farm --server URL cancel`: the CLI through that client; an ended job is exit 6 (StateError)
    other = client.submit_file(make_good(tmp_path / "in2", "remotecancel", "1.0"))["jobs"][0]["id"]
    monkeypatch.setattr("farm.cli.remote.client_from_settings", lambda: client)
    monkeypatch.setenv("FARM_SERVER_URL", "http://testserver")
    reset_settings()
    try:
        assert farm.cli.main(["cancel", str(other)]) == 0
        assert farm.cli.main(["cancel", str(other)]) == StateError.exit_code
    finally:
        monkeypatch.delenv("FARM_SERVER_URL")
        reset_settings()
    assert api.client.get(f"/api/jobs/{other}", headers=api.h("submit")).json()["state"] == "cancelled"


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"json": {"requirement": "foo bar baz"}}, 422, "neither"),
    ({"json": {"requirement": "x==1", "extra": 1}}, 422, "extra"),
    ({"json": {}}, 422, "requirement"),
    ({"content": b"remote==1.0", "headers": {"Content-Type": "text/plain"}}, 415, "multipart"),
    ({"files": {"other": ("x.tar.gz", b"x")}}, 422, "file"),
    ({"files": {"file": ("notes.txt", b"x")}}, 422, "sdist"),
    ({"files": {"file": ("random-1.0.tar.gz", os.urandom(300))}}, 422, "archive|gzip|tar"),
])
def test_bad_submissions_refused_and_nothing_stored(api: Api, kwargs: dict, status: int, words: str) -> None:
    import re

    before, files = submission_count(), storage_files(api)
    headers = {**api.h("submit"), **kwargs.pop("headers", {})}
    resp = api.client.post("/api/submissions", headers=headers, **kwargs)
    assert resp.status_code == status, resp.text
    assert re.search(words, json.dumps(resp.json()), re.I), resp.text
    assert submission_count() == before
    assert storage_files(api) == files


def test_oversized_upload_refused(api: Api, tmp_path: Path) -> None:
    big = tmp_path / "big-1.0.tar.gz"
    big.write_bytes(os.urandom(api.settings.max_sdist_bytes // 1000))
    app = create_app(api.settings.model_copy(update={"max_sdist_bytes": 1000}))
    with TestClient(app) as client, open(big, "rb") as f:
        resp = client.post("/api/submissions", headers=api.h("submit"), files={"file": (big.name, f)})
    assert resp.status_code == 413


# Worker storage -----------------------------------------------------------------------------------------

BAD_KEYS = ["%2E%2E/x", "..%2Fx", "jobs/..%2F..%2Ffarm.toml", "jobs/1/..%2F..%2F..%2Ffarm.toml", "%2Fetc%2Fpasswd",
            "/etc/passwd", "jobs/1/.hidden", "jobs/1/.tmp-x", "jobs/%2E/1/x", "jobs//1/x", "jobs/1/a%5Cb", "jobs/1/a%00b"]


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_storage_key_traversal_refused(api: Api, key: str, method: str) -> None:
    (api.settings.storage / "jobs").mkdir(parents=True, exist_ok=True)
    before = storage_files(api)
    home_before = sorted(p.name for p in api.home.iterdir())
    headers = {**api.h("worker"), SHA256_HEADER: hashlib.sha256(b"evil").hexdigest()}
    resp = api.client.request(method, f"/api/storage/{key}", content=b"evil" if method == "PUT" else None,
                              headers=headers)
    assert resp.status_code in (400, 403, 404), (key, resp.status_code)
    assert resp.status_code != 404 or method == "GET"
    assert b"build_timeout" not in resp.content and b"root:" not in resp.content
    assert storage_files(api) == before
    assert sorted(p.name for p in api.home.iterdir()) == home_before


def test_storage_areas(api: Api, tmp_path: Path) -> None:
    """Reads below sdists/ and jobs/ only; writes only of a worker's results (not an sdist, not a stop marker)."""
    job, cap = live_job(api, tmp_path, "areas")
    for key in ("sdists/ab/abc/x-1.0.tar.gz", "index/simple/x/index.html", "jobs", f"jobs/{job}/stop.json",
                f"jobs/{job}/attempt-1/wheels/x.tar.gz", "jobs/x/attempt-1.log", f"jobs/{job}/attempt-1/wheels/sub/x.whl",
                f"jobs/{job}/wheels/s-1.0-py3-none-any.whl", "tmp/x.whl"):
        assert put(api, key, b"x", cap=cap).status_code == 403, key
    for key in (f"jobs/{job}/attempt-1.log", f"jobs/{job}/attempt-1/staged/s-1.0-py3-none-any.whl",
                f"jobs/{job}/attempt-1/wheels/s-1.0-py3-none-any.whl",
                f"jobs/{job}/attempt-1/wheels/s-1.0-py3-none-any.whl.provenance.json"):
        assert put(api, key, b"x", cap=cap).status_code == 201, key
    assert api.client.get("/api/storage/tmp/x", headers=api.h("worker")).status_code == 403
    assert api.client.get("/api/storage/sdists/none/x.tar.gz", headers=api.h("worker")).status_code == 404


def test_upload_sha256_checked_nothing_stored_on_mismatch(api: Api, tmp_path: Path) -> None:
    job, cap = live_job(api, tmp_path, "digests")
    key = f"jobs/{job}/attempt-1/wheels/demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    data = os.urandom(4096)
    before = storage_files(api)
    wrong = put(api, key, data, digest=hashlib.sha256(b"something else").hexdigest(), cap=cap)
    assert wrong.status_code == 422 and "mismatch" in wrong.json()["detail"]
    assert put(api, key, data, digest=None, cap=cap).status_code == 400
    assert put(api, key, data, digest="not-hex", cap=cap).status_code == 400
    assert storage_files(api) == before
    assert api.client.head(f"/api/storage/{key}", headers=api.h("worker")).status_code == 404
    assert not [p for p in (api.home / "tmp").iterdir() if p.name.startswith("upload-")]

    ok = put(api, key, data, cap=cap)
    assert ok.status_code == 201 and ok.json() == {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "size": 4096}
    assert (api.settings.storage / key).read_bytes() == data
    assert api.client.get(f"/api/storage/{key}", headers=api.h("worker")).content == data
    # A damaged re-upload does not replace the good file.
    assert put(api, key, b"damaged", digest=hashlib.sha256(data).hexdigest(), cap=cap).status_code == 422
    assert (api.settings.storage / key).read_bytes() == data


def test_http_storage_over_the_api(api: Api, tmp_path: Path) -> None:
    job, _ = live_job(api, tmp_path, "httpstore")
    store = HttpStorage("http://testserver", api.tokens["worker"], client=api.client).with_capability(capability(job))
    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    store.put_file(f"jobs/{job}/attempt-1/wheels/" + wheel.name, wheel)
    store.put_bytes(f"jobs/{job}/attempt-1/wheels/w.whl.provenance.json", b'{"a": 1}')
    assert (api.settings.storage / f"jobs/{job}/attempt-1/wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    assert store.exists(f"jobs/{job}/attempt-1/wheels/" + wheel.name) and not store.exists(f"jobs/{job}/attempt-1/wheels/nope.whl")
    assert store.read_bytes(f"jobs/{job}/attempt-1/wheels/w.whl.provenance.json") == b'{"a": 1}'
    got = store.get_file(f"jobs/{job}/attempt-1/wheels/" + wheel.name, tmp_path / "down" / "copy.whl")
    assert got.read_bytes() == wheel.read_bytes()
    assert store.local_path(f"jobs/{job}/x.log") is None
    with pytest.raises(NotFound):
        store.get_file(f"jobs/{job}/none.whl", tmp_path / "down" / "none.whl")
    assert not (tmp_path / "down" / "none.whl").exists()
    with pytest.raises(NotFound):
        store.read_bytes(f"jobs/{job}/none")
    with pytest.raises(InfrastructureFault):
        HttpStorage("http://testserver", "farm_wrong", client=api.client).put_bytes(f"jobs/{job}/attempt-1.log", b"x")
    with pytest.raises(InfrastructureFault):  # the worker token without the job's capability writes nothing
        HttpStorage("http://testserver", api.tokens["worker"], client=api.client).put_bytes(f"jobs/{job}/attempt-1.log",
                                                                                            b"x")
    with pytest.raises(InfrastructureFault):
        HttpStorage("http://testserver", api.tokens["submit"], client=api.client).get_file(
            f"jobs/{job}/attempt-1/wheels/" + wheel.name, tmp_path / "down" / "denied.whl")
    with pytest.raises(InfrastructureFault):
        HttpStorage("http://127.0.0.1:9", "x").read_bytes("jobs/1/x")  # nothing listens on port 9


def test_get_storage_chooses_http_only_for_remote_workers(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(farm.storage, "_owner", False)
    monkeypatch.setenv("FARM_SERVER_URL", "http://127.0.0.1:1")
    reset_settings()
    try:
        assert isinstance(get_storage(), HttpStorage)
        assert get_settings().verify_index_url == "http://127.0.0.1:1/simple/"
        monkeypatch.setenv("FARM_STORAGE_ROOT", str(api.settings.storage))
        reset_settings()
        assert isinstance(get_storage(), LocalStorage)
        monkeypatch.delenv("FARM_STORAGE_ROOT")
        monkeypatch.setattr(farm.storage, "_owner", True)  # the API and coordinator keep the storage
        reset_settings()
        assert isinstance(get_storage(), LocalStorage)
    finally:
        monkeypatch.delenv("FARM_SERVER_URL")
        reset_settings()


# farm token create ----------------------------------------------------------------------------------------


def test_token_create_appends_and_keeps_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    original = ('# my farm\nupstream_index = "https://example.invalid/simple/"  # mirror\n'
                '[verify_images]\nlinux-x86_64 = [{image = "v:1", pythons = ["cp312"]}]\n')
    (home / "farm.toml").write_text(original)
    monkeypatch.setenv("FARM_HOME", str(home))
    reset_settings()
    try:
        token = create_token(home, "ci-bot", "submit")  # farm.toml, for a farm set up from files
        assert token.startswith("farm_") and len(token) > 40
        text = (home / "farm.toml").read_text()
        assert text.startswith(original), "the existing text, comments included, is kept"
        assert token not in text
        doc = tomllib.loads(text)
        assert doc["upstream_index"] == "https://example.invalid/simple/"
        assert doc["verify_images"]["linux-x86_64"][0]["image"] == "v:1"
        assert doc["tokens"] == [{"name": "ci-bot", "role": "submit", "sha256": hash_token(token)}]
        second = create_token(home, "builder-1", "worker")
        reset_settings()
        assert [(t.name, t.role) for t in get_settings().tokens] == [("ci-bot", "submit"), ("builder-1", "worker")]
        assert get_settings().tokens[1].sha256 == hash_token(second)
        with pytest.raises(ConfigError, match="exists already"):
            create_token(home, "ci-bot", "admin")
    finally:
        reset_settings()
    with pytest.raises(ConfigError):
        create_token(home, "x", "root")
    with pytest.raises(ConfigError):
        create_token(home, "bad name!", "admin")
    with pytest.raises(SystemExit):
        farm.cli.parser().parse_args(["token", "create", "x", "--role", "root"])


def test_token_create_new_file_and_inline_tokens(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    token = create_token(fresh, "first", "admin")
    assert tomllib.loads((fresh / "farm.toml").read_text())["tokens"][0]["sha256"] == hash_token(token)
    assert (fresh / "farm.toml").stat().st_mode & 0o777 == 0o600
    inline = tmp_path / "inline"
    inline.mkdir()
    (inline / "farm.toml").write_text(f'engine = "native"\ntokens = [{{name = "a", role = "submit", sha256 = "{"0" * 64}"}}]\n')
    create_token(inline, "b", "worker")
    doc = tomllib.loads((inline / "farm.toml").read_text())
    assert doc["engine"] == "native" and [t["name"] for t in doc["tokens"]] == ["a", "b"]


# Never the database ----------------------------------------------------------------------------------------


def test_forbid_db_guard(tmp_path: Path) -> None:
    """With FARM_FORBID_DB set the database session module refuses to load; the worker's modules load."""
    env = {**os.environ, "FARM_FORBID_DB": "1", "FARM_HOME": str(tmp_path)}
    bad = subprocess.run([sys.executable, "-c", "import farm.db.session"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "FARM_FORBID_DB" in bad.stderr
    code = ("from farm.coordinator.app import WORKER_TASKS, get_app\n"
            "get_app(include=WORKER_TASKS).loader.import_default_modules()\n"
            "import farm.worker.task, farm.storage_http, farm.cli.remote, sys\n"
            "assert 'farm.db.session' not in sys.modules\n")
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
