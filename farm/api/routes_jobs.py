"""Submissions and jobs (role `submit`): submit an sdist upload or a requirement, list jobs, read logs, cancel.

Ids in paths and queries are bounded to the database's integer columns (`ROW_ID_MAX`), so an id no row
can have is a 422, never a database error; bodies that are not what they say are 400, 413 or 422.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from farm.api.auth import Principal, app_settings, require
from farm.config import Settings
from farm.coordinator.submit import SDIST_SUFFIXES, submit
from farm.db.session import session_scope
from farm.errors import NotFound
from farm.status import job_log, jobs_done, list_jobs

router = APIRouter(prefix="/api", tags=["jobs"])
submitter = Depends(require("submit"))
_FORM_SLACK = 64 * 1024  # multipart framing around the file
_JSON_LIMIT = 64 * 1024  # a requirement and a priority
ROW_ID_MAX = 2**31 - 1  # ids are INTEGER columns (PostgreSQL: 32 bits)
JobId = Annotated[int, PathParam(ge=1, le=ROW_ID_MAX, description="a job id")]


class RequirementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requirement: str = Field(min_length=1, max_length=500, examples=["pyyaml==6.0.2"])
    priority: int = Field(0, ge=0, le=9, description="higher is built first when workers are busy")
    rebuild: str | None = Field(None, min_length=1, max_length=500,
                                description="build again with the next wheel build tag, for this reason")


class RequirementItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requirement: str = Field(min_length=1, max_length=500)
    sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=list, max_length=64)
    origin: str = Field("", max_length=1000)


class RequirementsRequest(BaseModel):
    """A requirements file, read by the client (farm/cli/requirements.py): its requirements with their
    markers and --hash digests; markers are evaluated here, for this farm's targets."""

    model_config = ConfigDict(extra="forbid")
    request: str = Field(min_length=1, max_length=1000, description="the file as the client named it")
    items: list[RequirementItem] = Field(min_length=1, max_length=2000)
    priority: int = Field(0, ge=0, le=9)
    rebuild: str | None = Field(None, min_length=1, max_length=500)


class JobRef(BaseModel):
    id: int
    build_id: str
    state: str


class SubmissionOut(BaseModel):
    submission_id: int
    name: str
    version: str
    jobs: list[JobRef]


_SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the sdist (.tar.gz or .zip)"},
        "priority": {"type": "integer", "minimum": 0, "maximum": 9, "default": 0},
        "rebuild": {"type": "string", "minLength": 1, "maxLength": 500}}}},
    "application/json": {"schema": RequirementRequest.model_json_schema()},
}}}


@router.post("/submissions", status_code=201, response_model=SubmissionOut, openapi_extra=_SUBMIT_BODY,
             summary="Submit an sdist (multipart field `file`) or a requirement (JSON {\"requirement\": ...})")
async def create_submission(request: Request, who: Principal = submitter) -> SubmissionOut:
    settings = app_settings(request)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return await _submit_upload(request, settings)
    if ctype.startswith("application/json"):
        try:
            body = RequirementRequest.model_validate_json(await _small_body(request, _JSON_LIMIT))
        except ValidationError as exc:  # without the input: it may be bytes that are not text
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise HTTPException(422, errors) from None
        req = body.requirement.strip()
        # A requirement, never a path on the server (and no answer that tells whether one exists).
        if req.startswith(("/", ".", "~")) or req.endswith(SDIST_SUFFIXES):
            raise HTTPException(422, f"{req!r} is not a requirement like NAME==VERSION; upload files as multipart")
        result = await run_in_threadpool(submit, req, settings=settings, from_file=False, priority=body.priority,
                                         rebuild=body.rebuild)
        return _out(result)
    raise HTTPException(415, "send multipart/form-data with a `file` field, or JSON {\"requirement\": \"NAME==VERSION\"}")


class RequirementsOut(BaseModel):
    submission_id: int
    sources: list[SubmissionOut]
    skipped: list[str]


@router.post("/submissions/requirements", status_code=201, response_model=RequirementsOut,
             summary="Submit a requirements file as one submission (its requirements, markers and sha256 hashes)")
async def create_requirements_submission(body: RequirementsRequest, request: Request,
                                         who: Principal = submitter) -> RequirementsOut:
    from farm.cli.requirements import Item
    from farm.coordinator.submit import submit_many

    settings = app_settings(request)
    for i in body.items:
        r = i.requirement.strip()
        if r.startswith(("/", ".", "~")) or r.endswith(SDIST_SUFFIXES):
            raise HTTPException(422, f"{r!r} is not a requirement like NAME==VERSION; upload files as multipart")
    items = [Item(request=i.requirement.strip(), from_file=False, sha256=frozenset(i.sha256), origin=i.origin)
             for i in body.items]
    result = await run_in_threadpool(submit_many, items, settings=settings, request=body.request,
                                     priority=body.priority, rebuild=body.rebuild)
    return RequirementsOut(submission_id=result.sources[0].submission_id,
                           sources=[_out(r) for r in result.sources], skipped=result.skipped)


async def _submit_upload(request: Request, settings: Settings) -> SubmissionOut:
    limit = settings.max_sdist_bytes
    length = request.headers.get("content-length")
    if length is None:
        raise HTTPException(411, "an upload needs a Content-Length")
    if not length.isdigit():
        raise HTTPException(400, f"Content-Length {length[:50]!r} is not a number")
    if int(length) > limit + _FORM_SLACK:
        raise HTTPException(413, f"the sdist is larger than max_sdist_bytes ({limit})")
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise HTTPException(422, "the multipart body needs one file field named `file`")
        priority = _priority(form.get("priority", "0"))
        rebuild = form.get("rebuild")
        if rebuild is not None and (not isinstance(rebuild, str) or not rebuild.strip() or len(rebuild) > 500):
            raise HTTPException(422, "rebuild: the reason for the rebuild, 1 to 500 characters")
        filename = PurePosixPath(upload.filename.replace("\\", "/")).name
        if (not filename.endswith(SDIST_SUFFIXES) or filename.startswith(".") or len(filename) > 200
                or not filename.isprintable()):
            raise HTTPException(422, f"{upload.filename!r} is not an sdist file name (.tar.gz or .zip)")
        tmp_root = settings.home / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=tmp_root, prefix="upload-"))
        try:
            path = folder / filename
            size = 0
            with open(path, "wb") as out:
                while block := await upload.read(1024 * 1024):
                    size += len(block)
                    if size > limit:
                        raise HTTPException(413, f"the sdist is larger than max_sdist_bytes ({limit})")
                    out.write(block)
            result = await run_in_threadpool(submit, str(path), settings=settings, from_file=True, priority=priority,
                                             rebuild=rebuild)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        await form.close()
    return _out(result)


async def _small_body(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for block in request.stream():
        data += block
        if len(data) > limit:
            raise HTTPException(413, f"a JSON request has at most {limit} bytes")
    return bytes(data)


def _priority(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit() and 0 <= int(value) <= 9:
        return int(value)
    raise HTTPException(422, f"priority must be an integer from 0 to 9, not {value!r}")


def _out(result: Any) -> SubmissionOut:
    return SubmissionOut(submission_id=result.submission_id, name=result.name, version=result.version,
                         jobs=[JobRef(id=i, build_id=b, state=s) for i, b, s in result.jobs])


@router.get("/jobs", summary="Jobs, newest first, with state and step durations")
def jobs(submission: int | None = Query(None, ge=1, le=ROW_ID_MAX), limit: int = Query(50, ge=1, le=1000),
         active: bool = False, who: Principal = submitter) -> list[dict[str, Any]]:
    with session_scope() as session:
        return [v.as_dict() for v in list_jobs(session, submission=submission, limit=limit, active_only=active)]


@router.get("/jobs/{job_id}", summary="One job")
def job(job_id: JobId, who: Principal = submitter) -> dict[str, Any]:
    from farm.db.models import Job
    from farm.recipes.suggest import for_job

    with session_scope() as session:
        _, views = jobs_done(session, [job_id])
        if not views:
            raise HTTPException(404, f"no job {job_id}")
        # the system packages the farm found for it, as a recipe (farm/recipes/suggest.py)
        return {**views[0].as_dict(), "suggested_recipe": for_job(session.get(Job, job_id))}


@router.get("/jobs/{job_id}/log", response_class=PlainTextResponse, summary="A job's log, every attempt")
def log(job_id: JobId, who: Principal = submitter) -> str:
    with session_scope() as session:
        try:
            return job_log(session, job_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job that has not ended (nothing of it is published)")
def cancel_job(job_id: JobId, request: Request, who: Principal = submitter) -> dict[str, str]:
    from farm.coordinator.reconcile import cancel

    return {"detail": cancel(job_id, app_settings(request))}
