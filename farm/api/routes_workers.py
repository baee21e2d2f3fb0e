"""Storage for remote workers (role `worker`): download sdists and staged wheels, upload results.

Keys are relative POSIX paths below the farm's storage: no absolute paths, no `..`, no hidden
components. Reads are limited to `sdists/` and `jobs/`; writes to what a worker produces
(`jobs/N/attempt-K.log`, and below `jobs/N/attempt-K/`: `wheels/*.whl` with their `.provenance.json`
and `staged/*.whl`: farm.storage.result_key),
so a worker token can neither replace an sdist nor write the coordinator's stop markers. Every upload carries `X-Content-SHA256`; it is written to a temporary file,
hashed, and stored only if the digest matches, so a damaged upload leaves nothing behind.

A token alone writes nothing. Every upload also shows the storage capability of the job attempt it
belongs to (`X-Farm-Capability`: the coordinator makes one per attempt and sends it in the job's
`JobSpec`, farm/tokens.py), and is accepted only
- for that job's keys, and of the attempt logs only that attempt's (else 403),
- while that attempt is the job's current one and the job runs (queued or a worker's step; else
  409: a finished, cancelled, replaced or published attempt's objects are final),
- if the object does not exist yet: objects are write-once. The same bytes again are answered 200
  (an upload retried), other bytes 409. The one exception is the attempt's own log, which a retry of
  the same attempt uploads again while the attempt runs: it is replaced, until the attempt ends.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from farm.api.auth import Principal, app_settings, require
from farm.db.states import RUNNING, JobState
from farm.storage import LocalStorage, StorageConflict, result_key
from farm.storage_http import SHA256_HEADER
from farm.tokens import CAPABILITY_HEADER, check_capability
from farm.util.hashing import sha256_file

router = APIRouter(prefix="/api/storage", tags=["worker storage"])
worker = Depends(require("worker"))
READABLE = ("sdists", "jobs")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LIVE = frozenset({JobState.QUEUED.value, *(s.value for s in RUNNING)})  # states in which a worker uploads


def check_key(key: str, *, write: bool = False) -> str:
    """The key if it is a clean relative path in an allowed area; else 400 (malformed: also control
    characters and parts longer than a file name may be) or 403 (area)."""
    rel = PurePosixPath(key)
    if (not key or len(key) > 1024 or not key.isprintable() or "\\" in key or rel.is_absolute() or str(rel) != key
            or any(p in ("..", ".") or p.startswith(".") or len(p.encode()) > 255 for p in rel.parts)):
        raise HTTPException(400, f"bad storage key {key!r}")
    if write and result_key(key) is None:
        raise HTTPException(403, f"storage key {key!r} is not a worker's result (a job's log, wheel, provenance "
                            "or staged wheel)")
    if rel.parts[0] not in READABLE or len(rel.parts) < 2:
        raise HTTPException(403, f"storage key {key!r} is outside {'/, '.join(READABLE)}/")
    return key


def _storage(request: Request) -> LocalStorage:
    # The API keeps the storage: always the local folder, never HttpStorage (that would be itself).
    return LocalStorage(app_settings(request).storage)


def _file(request: Request, key: str) -> Path:
    try:
        path = _storage(request)._path(check_key(key))
    except ValueError:
        raise HTTPException(400, f"bad storage key {key!r}") from None
    if not path.is_file():
        raise HTTPException(404, f"not in storage: {key}")
    return path


def check_writer(settings_home: Path, key: str, capability: str) -> tuple[int, int]:
    """(job id, attempt) whose capability allows writing `key` now; else 403 (not this key's) or 409 (over)."""
    if not capability:
        raise HTTPException(403, f"an upload needs the storage capability of its job attempt ({CAPABILITY_HEADER}, "
                            "sent with the job)")
    held = check_capability(settings_home, capability)
    if held is None:
        raise HTTPException(403, f"{CAPABILITY_HEADER} is not a storage capability of this farm")
    job_id, attempt = held
    owner = result_key(key)
    if owner is None or owner.job_id != job_id or owner.attempt != attempt:
        raise HTTPException(403, f"the storage capability of job {job_id} attempt {attempt} does not cover {key}")
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as session:
        job = session.get(Job, job_id)
        state, current = (job.state, job.attempt) if job is not None else ("unknown", None)
    if current != attempt or state not in _LIVE:
        raise HTTPException(409, f"attempt {attempt} of job {job_id} is over (the job is {state}, attempt {current}); "
                            "its storage objects are final")
    return job_id, attempt


@router.get("/{key:path}", summary="Download a stored object (sdist, staged wheel)",
            response_class=FileResponse)
def get_object(key: str, request: Request, who: Principal = worker) -> FileResponse:
    return FileResponse(_file(request, key), media_type="application/octet-stream")


@router.head("/{key:path}", summary="Does the object exist")
def head_object(key: str, request: Request, who: Principal = worker) -> Response:
    path = _file(request, key)
    return Response(headers={"Content-Length": str(path.stat().st_size)}, media_type="application/octet-stream")


@router.put("/{key:path}", status_code=201,
            summary="Upload a wheel, log or provenance record of a job attempt (needs X-Content-SHA256 and "
                    "X-Farm-Capability); write-once",
            responses={200: {"description": "the same bytes were stored already"},
                       409: {"description": "stored already with other bytes, or the attempt is over"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "parameters": [{"name": SHA256_HEADER, "in": "header", "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                               {"name": CAPABILITY_HEADER, "in": "header", "required": True,
                                "schema": {"type": "string"}}]})
async def put_object(key: str, request: Request, who: Principal = worker) -> JSONResponse:
    check_key(key, write=True)
    settings = app_settings(request)
    await run_in_threadpool(check_writer, settings.home, key, request.headers.get(CAPABILITY_HEADER, ""))
    replace = result_key(key).log  # type: ignore[union-attr]  # the live attempt's own log
    expected = (request.headers.get(SHA256_HEADER) or "").lower()
    if not _HEX64.match(expected):
        raise HTTPException(400, f"an upload needs the header {SHA256_HEADER}: the hex sha256 of the body")
    limit = settings.max_unpacked_bytes
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise HTTPException(400, f"Content-Length {length[:50]!r} is not a number")
    if length is not None and int(length) > limit:
        raise HTTPException(413, f"larger than {limit} bytes")
    storage = _storage(request)
    try:
        path = storage._path(key)
    except ValueError:
        raise HTTPException(400, f"bad storage key {key!r}") from None
    existed = not replace and path.is_file()
    if existed and await run_in_threadpool(sha256_file, path) != expected:  # refused before the body is read
        raise HTTPException(409, f"{key} is stored already with other content; stored objects are write-once")
    tmp_root = settings.home / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_root, prefix="upload-")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            async for block in request.stream():
                size += len(block)
                if size > limit:
                    raise HTTPException(413, f"larger than {limit} bytes")
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise HTTPException(422, f"sha256 mismatch: the body has {digest.hexdigest()}, the header says {expected}; "
                                "nothing stored")
        try:
            storage.put_file(key, Path(tmp), replace=replace)
        except StorageConflict as exc:  # another upload of the key won the race with other bytes
            raise HTTPException(409, str(exc)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return JSONResponse({"key": key, "sha256": expected, "size": size}, status_code=200 if existed else 201)
