"""The legacy upload API, per channel: `POST /<channel>/legacy/` (what twine and `uv publish` speak).

    twine upload --repository-url http://HOST:PORT/<channel>/legacy/ -u __token__ -p TOKEN dist/*
    uv publish --publish-url http://HOST:PORT/<channel>/legacy/ -u __token__ -p TOKEN dist/*

As warehouse's `forklift/legacy.py`: a multipart form with `:action=file_upload`, `protocol_version=1`,
`name`, `version`, `filetype` (`sdist` or `bdist_wheel`), the file as `content`, and optional
`sha256_digest`, `md5_digest`, `blake2_256_digest` that must match it. The token goes as the HTTP
Basic password (user `__token__`), role `upload` (or `admin`), for this channel. Answers: 200 with
a line of text; 400 with the reason (`File already exists: ...` for a taken file name, as on PyPI);
401 with `WWW-Authenticate: Basic` without a valid token; 403 for a token that may not upload here;
404 for a name that is no channel. A refused upload leaves nothing stored.

An sdist becomes a submission (farm/coordinator/submit.py): built, verified and published into
the first channel with provenance, like any other. A wheel is checked and published as it is
(farm/coordinator/uploaded.py), "uploaded by" the token's name.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from packaging.utils import canonicalize_name, canonicalize_version
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from farm.api.auth import BASIC_REALM, Principal, Refused, app_settings, authorize, identify, secret_from_header
from farm.config import Settings
from farm.errors import FarmError

router = APIRouter(tags=["uploads"])

_DIGESTS = {"sha256_digest": "sha256", "md5_digest": "md5", "blake2_256_digest": "blake2b"}


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(f"{status} {message}\n" if status != 200 else f"{message}\n", status_code=status,
                             headers=headers)


@router.post("/{channel}/legacy/", summary="Upload a distribution (the legacy upload API, as twine speaks it)")
@router.post("/{channel}/legacy", include_in_schema=False)
async def upload(channel: str, request: Request) -> PlainTextResponse:
    settings = app_settings(request)
    from farm.index.channels import layout

    if channel not in layout(settings).channels:
        return _text(404, f"no channel {channel!r} takes uploads here")
    secret = secret_from_header(request.headers.get("authorization"))
    try:
        who = await run_in_threadpool(identify, settings, secret, request.app.state)
        authorize(who, "upload", channel)
    except Refused as exc:
        headers = {"WWW-Authenticate": BASIC_REALM} if exc.status == 401 else None
        return _text(exc.status, exc.detail, headers)
    limit = settings.max_sdist_bytes
    try:
        form = await request.form(max_files=1, max_fields=200, max_part_size=1024 * 1024)
    except Exception as exc:  # noqa: BLE001 - starlette raises its own errors for malformed multipart bodies
        return _text(400, f"the upload is not a multipart form: {exc}")
    try:
        action = form.get(":action")
        if action != "file_upload":
            return _text(400, f"Invalid value for :action: {action!r}; only file_upload is supported")
        if (form.get("protocol_version") or "1") != "1":
            return _text(400, "Unknown protocol version")
        content = form.get("content")
        if not isinstance(content, UploadFile) or not content.filename:
            return _text(400, "Upload payload does not have a file (the form field content)")
        filename = content.filename
        if "/" in filename or "\\" in filename or filename.startswith(".") or not filename.isprintable():
            return _text(400, f"Invalid file name {filename!r}")
        filetype = form.get("filetype")
        if filetype not in ("sdist", "bdist_wheel"):
            return _text(400, f"Invalid value for filetype: {filetype!r}; this index takes sdist and bdist_wheel")
        is_wheel = filename.endswith(".whl")
        if is_wheel != (filetype == "bdist_wheel"):
            return _text(400, f"Invalid file extension for filetype {filetype}: {filename}")
        tmp_root = settings.home / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=tmp_root, prefix="upload-"))
        try:
            path = folder / filename
            hashes = {algo: hashlib.new(algo, digest_size=32) if algo == "blake2b" else hashlib.new(algo)
                      for algo in _DIGESTS.values()}
            size = 0
            with open(path, "wb") as out:
                while chunk := await content.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        return _text(400, f"File too large: more than {limit} bytes")
                    for h in hashes.values():
                        h.update(chunk)
                    out.write(chunk)
            for field, algo in _DIGESTS.items():
                given = str(form.get(field) or "").strip().lower()
                if given and given != hashes[algo].hexdigest():
                    return _text(400, f"The digest supplied ({field}) does not match a digest calculated from the "
                                      "uploaded file")
            problem = _name_problem(filename, str(form.get("name") or ""), str(form.get("version") or ""))
            if problem:
                return _text(400, problem)
            try:
                if is_wheel:
                    line = await run_in_threadpool(_publish_wheel, settings, path, channel, who)
                else:
                    line = await run_in_threadpool(_submit_sdist, settings, path, channel, who)
            except FarmError as exc:
                return _text(400, str(exc))
            return _text(200, line)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        await form.close()


def _name_problem(filename: str, name: str, version: str) -> str | None:
    """The form's `name` and `version` must be those of the file (twine and uv send them from METADATA)."""
    from packaging.utils import parse_sdist_filename, parse_wheel_filename

    try:
        fname, fversion = (parse_wheel_filename(filename)[:2] if filename.endswith(".whl")
                           else parse_sdist_filename(filename))
    except ValueError as exc:
        return f"Invalid file name {filename!r}: {exc}"
    if name and canonicalize_name(name) != fname:
        return f"the form's name {name!r} is not the file's project {fname!r}"
    if version and canonicalize_version(version) != canonicalize_version(fversion):
        return f"the form's version {version!r} is not the file's version {fversion}"
    return None


def _publish_wheel(settings: Settings, path: Path, channel: str, who: Principal) -> str:
    from farm.coordinator.uploaded import publish_upload
    from farm.db.session import session_scope

    with session_scope() as session:
        art, new = publish_upload(session, settings, path, channel=channel, uploader=who.name)
        return (f"published {art.filename} in {channel}, uploaded by {who.name}" if new
                else f"{art.filename} is published already (the same bytes); nothing changed")


def _submit_sdist(settings: Settings, path: Path, channel: str, who: Principal) -> str:
    from sqlalchemy import select

    from farm.coordinator.submit import submit
    from farm.db.models import Source
    from farm.db.session import session_scope
    from farm.index.simple import already_exists
    from farm.util.hashing import sha256_file

    digest = sha256_file(path)
    with session_scope() as session:
        taken = session.scalar(select(Source).where(Source.filename == path.name, Source.sha256 != digest).limit(1))
        if taken is not None:
            raise already_exists(path.name, taken.filename, taken.sha256, f"the sdist of source #{taken.id}")
    done = submit(str(path), settings=settings, kind="upload", from_file=True)
    jobs = ", ".join(f"{job_id} ({build_id})" for job_id, build_id, _state in done.jobs)
    return (f"submitted {done.name} {done.version} as submission {done.submission_id}, uploaded by {who.name}; "
            f"jobs {jobs}; its wheels are published into the first channel when built and verified")
