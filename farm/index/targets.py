"""Upload the farm's wheels to other indexes (pypiserver, devpi, a PyPI-like service).

The protocol is twine's ("legacy" upload API, what `twine upload` speaks): one multipart POST per
file to the target's upload URL with HTTP Basic credentials, fields `:action=file_upload`,
`protocol_version=1`, the core metadata (name, version, metadata_version, summary, requires_python,
requires_dist, ...), `filetype=bdist_wheel`, `pyversion`, `sha256_digest`, `blake2_256_digest`, and
the file as `content`. A 409 (or a 400 saying the file exists) counts as "already there" when the
target lists the same sha256 under that file name.

With `index_url` configured, an upload is only reported done once the target's simple index lists
the file with the right sha256 (polled; pypi-simple parses the page).

Before a file is uploaded its sha256 is compared with the one the farm recorded when it published
it; a changed file (in storage or in a tree) is refused (`DigestMismatch`) and nothing is sent.

Configuration (farm.toml)::

    [upload_targets.internal]
    url = "http://127.0.0.1:8080/"             # pypiserver; devpi: http://HOST:3141/USER/INDEX/
    index_url = "http://127.0.0.1:8080/simple/" # devpi: http://HOST:3141/USER/INDEX/+simple/
    username = "farm"
    password_env = "FARM_INTERNAL_PASSWORD"     # or password = "..."
    channel = "stable"                          # promotions into stable upload here automatically
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from packaging.utils import canonicalize_name, parse_wheel_filename
from pypi_simple import ACCEPT_ANY, ProjectPage
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings, UploadTarget
from farm.db.models import Artifact, Upload, utcnow
from farm.errors import ConfigError, NotFound, UploadError
from farm.index.simple import wheel_metadata

if TYPE_CHECKING:
    from farm.index.channels import Layout

_MULTI = {"Classifier": "classifiers", "Requires-Dist": "requires_dist", "Provides-Extra": "provides_extra",
          "Project-URL": "project_urls", "Requires-External": "requires_external", "Dynamic": "dynamic",
          "License-File": "license_file", "Provides-Dist": "provides_dist", "Obsoletes-Dist": "obsoletes_dist"}
_SINGLE = {"Metadata-Version": "metadata_version", "Name": "name", "Version": "version", "Summary": "summary",
           "Home-page": "home_page", "Author": "author", "Author-email": "author_email", "License": "license",
           "Requires-Python": "requires_python", "Keywords": "keywords", "Platform": "platform",
           "Description-Content-Type": "description_content_type", "License-Expression": "license_expression"}


@dataclass
class UploadResult:
    target: str
    filename: str
    status: str  # uploaded | already there
    seconds: float
    listed: bool | None  # None: the target has no index_url to check


def get_target(settings: Settings, name: str) -> UploadTarget:
    try:
        return settings.upload_targets[name]
    except KeyError:
        known = ", ".join(sorted(settings.upload_targets)) or "none configured"
        raise ConfigError(f"no upload target {name!r} (upload_targets: {known})") from None


def _password(target: UploadTarget) -> str:
    if target.password_env:
        value = os.environ.get(target.password_env)
        if value is None:
            raise ConfigError(f"the upload password variable {target.password_env} is not set")
        return value
    return target.password


def form_fields(wheel: Path) -> dict[str, str | list[str]]:
    """The upload form of `wheel` (what twine sends), from its METADATA."""
    msg = email.parser.BytesParser().parsebytes(wheel_metadata(wheel))
    data = wheel.read_bytes()
    fields: dict[str, str | list[str]] = {
        ":action": "file_upload", "protocol_version": "1", "filetype": "bdist_wheel",
        "pyversion": wheel.name[:-4].split("-")[-3],
        "sha256_digest": hashlib.sha256(data).hexdigest(),
        "blake2_256_digest": hashlib.blake2b(data, digest_size=32).hexdigest(),
        "md5_digest": hashlib.md5(data, usedforsecurity=False).hexdigest(),
    }
    for header, key in _SINGLE.items():
        if msg.get(header) is not None:
            fields[key] = str(msg[header])
    for header, key in _MULTI.items():
        values = msg.get_all(header)
        if values:
            fields[key] = [str(v) for v in values]
    body = msg.get_payload()
    if isinstance(body, str) and body.strip():
        fields["description"] = body
    return fields


def upload_file(name: str, target: UploadTarget, wheel: Path, *, client: httpx.Client | None = None,
                timeout: float = 60) -> UploadResult:
    """POST one wheel to `target`; then, with `index_url`, wait until the target lists it."""
    fields = form_fields(wheel)
    own = client is None
    client = client or httpx.Client(timeout=timeout)
    start = time.perf_counter()
    try:
        with open(wheel, "rb") as fh:
            resp = client.post(target.url, data=fields, files={"content": (wheel.name, fh, "application/octet-stream")},
                               auth=(target.username, _password(target)) if target.username else None)
        text = resp.text[:300].strip()
        exists = resp.status_code == 409 or (resp.status_code == 400 and "exist" in text.lower())
        if resp.status_code in (401, 403):
            raise UploadError(f"{name}: {target.url} refused the credentials (HTTP {resp.status_code}): {text}")
        if not (resp.is_success or exists):
            raise UploadError(f"{name}: uploading {wheel.name} to {target.url} failed: HTTP {resp.status_code} {text}")
        listed = None
        if target.index_url:
            listed = wait_listed(client, target.index_url, wheel.name, str(fields["sha256_digest"]), timeout=timeout)
            if not listed:
                problem = "holds another file under that name" if exists else "does not list it"
                raise UploadError(f"{name}: {target.index_url} {problem} ({wheel.name}, sha256 {fields['sha256_digest']})")
        elif exists:
            raise UploadError(f"{name}: {target.url} already has {wheel.name} (HTTP {resp.status_code}); "
                              "configure index_url to compare it")
        return UploadResult(target=name, filename=wheel.name, status="already there" if exists else "uploaded",
                            seconds=time.perf_counter() - start, listed=listed)
    except httpx.HTTPError as exc:
        raise UploadError(f"{name}: cannot reach {target.url}: {exc}") from None
    finally:
        if own:
            client.close()


def listed_digest(client: httpx.Client, index_url: str, filename: str) -> str | None:
    """The sha256 the simple index at `index_url` lists for `filename` (None: not listed)."""
    project = canonicalize_name(parse_wheel_filename(filename)[0])
    url = index_url.rstrip("/") + f"/{project}/"
    resp = client.get(url, headers={"Accept": ACCEPT_ANY}, follow_redirects=True)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    ctype = resp.headers.get("content-type", "").split(";")[0].strip()
    if ctype == "application/vnd.pypi.simple.v1+json":
        page = ProjectPage.from_json_data(resp.json(), base_url=str(resp.url))
    else:
        page = ProjectPage.from_html(project, resp.content, base_url=str(resp.url),
                                     from_encoding=resp.charset_encoding)
    for pkg in page.packages:
        if pkg.filename == filename:
            return (pkg.digests or {}).get("sha256", "")
    return None


def wait_listed(client: httpx.Client, index_url: str, filename: str, sha256: str, *, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        got = listed_digest(client, index_url, filename)
        if got is not None:
            return got == sha256
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def publish_to(session: Session, settings: Settings, name: str, pin: str) -> list[UploadResult]:
    """Upload every live, unyanked wheel of NAME==VERSION (in the target's channel, if it names one)."""
    from farm.index.channels import layout
    from farm.index.promote import live_artifacts, parse_pin

    target = get_target(settings, name)
    project, version = parse_pin(pin)
    arts = [a for a in live_artifacts(session, project, version) if a.yanked is None]
    if target.channel is not None:
        arts = [a for a in arts if any(e.channel == target.channel for e in a.channels)]
    if not arts:
        where = f" in channel {target.channel}" if target.channel else ""
        raise NotFound(f"no unyanked wheel of {project}=={version}{where} to upload to {name}")
    lay = layout(settings)
    for a in arts:  # every file checked before the first is sent
        _checked_copy(lay, name, a)
    return [_upload_artifact(session, lay, name, target, a) for a in arts]


def on_promote(session: Session, settings: Settings, channel: str, arts: list[Artifact]) -> list[UploadResult]:
    """Upload freshly promoted wheels to every target bound to `channel`."""
    from farm.index.channels import layout

    lay = layout(settings)
    bound = [(name, target) for name, target in sorted(settings.upload_targets.items()) if target.channel == channel]
    for name, _target in bound:  # every file checked before the first is sent
        for a in arts:
            _checked_copy(lay, name, a)
    return [_upload_artifact(session, lay, name, target, a) for name, target in bound for a in arts]


def _checked_copy(lay: Layout, name: str, art: Artifact) -> Path:
    """The copy of `art` to upload to target `name`, its sha256 checked against the record."""
    from farm.index.channels import check_digest
    from farm.storage import get_storage

    paths = [lay.tree(t) / "files" / art.name / art.filename for t in lay.trees()]
    stored = get_storage().local_path(art.storage_key)
    wheel = next((p for p in [*paths, stored] if p is not None and p.is_file()), None)
    if wheel is None:
        raise NotFound(f"{art.filename}: no copy of the file is left (removed by gc?)")
    check_digest(wheel, art, f"upload it to {name}")
    return wheel


def _upload_artifact(session: Session, lay: Layout, name: str, target: UploadTarget, art: Artifact) -> UploadResult:
    wheel = _checked_copy(lay, name, art)
    result = upload_file(name, target, wheel)
    row = session.scalar(select(Upload).where(Upload.artifact_id == art.id, Upload.target == name))
    if row is None:
        session.add(Upload(artifact=art, target=name, url=target.url))
    else:
        row.uploaded_at, row.url = utcnow(), target.url
    session.flush()
    return result


__all__ = ["UploadError", "UploadResult", "form_fields", "on_promote", "publish_to", "upload_file"]
