"""`farm verify` from anywhere: a wheel by URL (or a local file) against its signed provenance, with
nothing but the farm's public key. No farm, no `farm.toml`, no database is read or made.

What can be checked from the outside, each check as in farm.provenance.verify:

signature     the wheel's `.provenance` document (the JSON page's `provenance` link, else
              `<wheel URL>.provenance`) verifies with the given key; its PEP 740 and DSSE forms agree
subject       the sha256 of the wheel's bytes, fetched now, is the signed subject's (and the page's
              listed sha256, when the wheel was found through an index page)
sdist         the sdist the statement names (externalParameters.source) is listed by the upstream
              index the statement names (internalParameters.upstreamIndex) with the signed sha256,
              and its bytes, downloaded, have it. When that index or the file cannot be reached the
              check is a warning (skipped), not a failure: the farm may build from an index this
              machine cannot see. A listing or a file with another digest is a failure.
verification  the statement records that the wheel passed the farm's verification (an uploaded
              wheel, which the farm did not build, has none: skipped, with the uploader's name)

Targets: `http(s)://…/<wheel>.whl` (a `#sha256=` fragment is dropped), a local wheel file (its
`.provenance` beside it, or `--provenance FILE|URL`), or an index URL with NAME==VERSION: every wheel
of that version its JSON page lists.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from farm.errors import FarmError, NotFound, SigningError, UpstreamError
from farm.provenance import sign, statement
from farm.provenance.verify import Check, Report, _check_subject, _check_verification, _read_json

JSON_PAGE = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 16


def is_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https")


def _client(timeout: float) -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True,
                        headers={"User-Agent": "wheel-farm verify"})


def _get(client: httpx.Client, url: str, what: str, **kw: Any) -> httpx.Response:
    try:
        r = client.get(url, **kw)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"cannot fetch {what} {url}: {exc}") from exc
    if r.status_code == 404:
        raise NotFound(f"{what} {url}: 404 Not Found")
    if r.status_code != 200:
        raise UpstreamError(f"{what} {url}: HTTP {r.status_code}")
    return r


@contextmanager
def _downloaded(client: httpx.Client, url: str, filename: str) -> Iterator[Path]:
    """The file at `url` in a temporary folder under its own name (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="farm-verify-") as tmp:
        path = Path(tmp) / filename
        try:
            with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise NotFound(f"{url}: HTTP {r.status_code}") if r.status_code == 404 else \
                        UpstreamError(f"{url}: HTTP {r.status_code}")
                with path.open("wb") as fh:
                    for chunk in r.iter_bytes(_CHUNK):
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot fetch {url}: {exc}") from exc
        yield path


def wheels_of(index_url: str, pin: str, *, timeout: float = 30) -> list[tuple[str, str | None, str | None]]:
    """The wheels of NAME==VERSION on the index at `index_url` (a `/simple/` URL): (wheel URL, the
    page's sha256, the page's provenance URL) each. `NotFound` when it lists none."""
    name, sep, version = pin.partition("==")
    if not sep:
        raise FarmError(f"{pin!r}: give NAME==VERSION with an index URL")
    project = canonicalize_name(name.strip())
    try:
        wanted = Version(version.strip())
    except InvalidVersion:
        raise FarmError(f"{version!r} is not a valid version (PEP 440)") from None
    page_url = index_url.rstrip("/") + f"/{quote(project)}/"
    with _client(timeout) as client:
        r = _get(client, page_url, "the project page", headers={"Accept": JSON_PAGE})
    try:
        files = json.loads(r.content)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(f"{page_url}: not a PEP 691 JSON page ({exc!r})") from exc
    found = []
    for f in files:
        try:
            _, v, _, _ = parse_wheel_filename(f["filename"])
        except (InvalidWheelFilename, KeyError, TypeError):
            continue
        if v == wanted:
            url = urljoin(page_url, f["url"]).split("#", 1)[0]
            prov = f.get("provenance")
            found.append((url, (f.get("hashes") or {}).get("sha256"), urljoin(page_url, prov) if prov else None))
    if not found:
        raise NotFound(f"{page_url} lists no wheel of {project} {wanted}")
    return found


def verify_url(wheel_url: str, *, keys: dict[str, Ed25519PublicKey], provenance: str | None = None,
               listed_sha256: str | None = None, offline: bool = False, timeout: float = 60) -> Report:
    """Fetch the wheel at `wheel_url` and its provenance (`provenance`, else `<wheel_url>.provenance`),
    and check them; never raises for what it finds, only reports."""
    wheel_url = wheel_url.split("#", 1)[0]
    filename = Path(urlsplit(wheel_url).path).name
    report = Report(wheel=f"{filename} ({wheel_url})")
    with _client(timeout) as client:
        try:
            doc_url = provenance or wheel_url + sign.SUFFIX
            doc, origin = _document(client, doc_url)
        except FarmError as exc:
            report.checks.append(Check("signature", False, str(exc)))
            return report
        try:
            with _downloaded(client, wheel_url, filename) as wheel:
                _check_all(report, wheel, doc, origin, keys=keys, client=client, offline=offline,
                           listed_sha256=listed_sha256)
        except FarmError as exc:
            report.checks.append(Check("wheel", False, f"cannot fetch the wheel: {exc}"))
    return report


def verify_file(wheel: Path, *, keys: dict[str, Ed25519PublicKey], provenance: str | None = None,
                offline: bool = False, timeout: float = 60) -> Report:
    """A local wheel file against its provenance (`provenance` as a path or URL, else beside it)."""
    wheel = Path(wheel)
    report = Report(wheel=wheel.name)
    if not wheel.is_file():
        report.checks.append(Check("wheel", False, f"{wheel}: no such file"))
        return report
    with _client(timeout) as client:
        try:
            where = provenance or str(wheel.with_name(wheel.name + sign.SUFFIX))
            doc, origin = _document(client, where) if is_url(where) else (_read_json(Path(where)), where)
        except (FarmError, OSError) as exc:
            report.checks.append(Check("signature", False, f"no provenance document: {exc}"))
            return report
        _check_all(report, wheel, doc, origin, keys=keys, client=client, offline=offline)
    return report


def _document(client: httpx.Client, url: str) -> tuple[dict[str, Any], str]:
    r = _get(client, url, "the provenance document")
    try:
        return json.loads(r.content), url
    except ValueError as exc:
        raise SigningError(f"{url}: not JSON: {exc}") from exc


def _check_all(report: Report, wheel: Path, doc: dict[str, Any], origin: str, *, keys: dict[str, Ed25519PublicKey],
               client: httpx.Client, offline: bool, listed_sha256: str | None = None) -> None:
    try:
        verified = sign.verify_provenance(doc, keys)
    except FarmError as exc:
        report.checks.append(Check("signature", False, str(exc)))
        return
    report.checks.append(Check("signature", True, f"signed by the key {verified.keyid[:16]} (ed25519, DSSE); "
                                                  f"provenance from {origin}"))
    stmt = verified.statement
    subject = _check_subject(wheel, stmt)
    if subject.ok and listed_sha256 is not None and listed_sha256.lower() != statement.subject(stmt)[1]:
        subject = Check("subject", False, f"the index page lists sha256 {listed_sha256}, the signed subject is "
                                          f"{statement.subject(stmt)[1]}")
    report.checks.append(subject)
    report.checks.append(check_sdist_upstream(stmt, client=client, offline=offline))
    report.checks.append(_uploaded_verification(stmt) or _check_verification(stmt))


def _uploaded_verification(stmt: dict[str, Any]) -> Check | None:
    build = (stmt.get("predicate") or {}).get("buildDefinition") or {}
    upload = (build.get("externalParameters") or {}).get("upload")
    if upload is None:
        return None
    return Check("verification", None, f"not built or verified by the farm: uploaded by "
                                       f"{upload.get('uploadedBy', '?')} into {upload.get('channel', '?')}")


def check_sdist_upstream(stmt: dict[str, Any], *, client: httpx.Client, offline: bool) -> Check:
    """The statement's sdist against the upstream index it names: its listing, then its bytes."""
    try:
        build = stmt["predicate"]["buildDefinition"]
        params = build["externalParameters"]
    except (KeyError, TypeError):
        return Check("sdist", False, "the signed statement has no build definition")
    if "upload" in params and "source" not in params:
        return Check("sdist", None, "an uploaded wheel: the statement names no sdist (not built here)")
    try:
        src = params["source"]
        name, filename, digest = src["name"], src["filename"], src["digest"]["sha256"]
    except (KeyError, TypeError):
        return Check("sdist", False, "the signed statement does not name its sdist (name, file name, digest)")
    if offline:
        return Check("sdist", None, f"not checked (--offline): {filename} sha256 {digest[:16]}")
    upstream = (build.get("internalParameters") or {}).get("upstreamIndex")
    if not upstream:
        return Check("sdist", None, f"warning: the statement names no upstream index for {filename}; not checked")
    from farm.index.upstream import Upstream

    try:
        with Upstream(upstream, timeout=client.timeout.read or 30) as up:
            listed = next((f for f in up.project_files(name) if f.filename == filename), None)
    except FarmError as exc:
        return Check("sdist", None, f"warning: cannot reach {filename} on {upstream} ({exc}); the sdist was not checked")
    if listed is None:
        return Check("sdist", None, f"warning: {upstream} does not list {filename} (sha256 {digest[:16]}); "
                                    "the sdist was not checked (a file submitted to the farm directly is listed nowhere)")
    if listed.sha256 and listed.sha256.lower() != digest:
        return Check("sdist", False, f"{upstream} lists {filename} with sha256 {listed.sha256}, the signed statement "
                                     f"has {digest}")
    try:
        r = client.get(listed.url)
        if r.status_code != 200:
            raise UpstreamError(f"HTTP {r.status_code}")
    except (httpx.HTTPError, UpstreamError) as exc:
        if listed.sha256:
            return Check("sdist", True, f"{upstream} lists {filename} with the signed sha256 {digest[:16]} "
                                        f"(warning: the file itself could not be fetched: {exc})")
        return Check("sdist", None, f"warning: cannot fetch {listed.url} ({exc}); the sdist was not checked")
    actual = hashlib.sha256(r.content).hexdigest()
    if actual != digest:
        return Check("sdist", False, f"{listed.url} has sha256 {actual}, the signed statement has {digest}: "
                                     "the sdist upstream is not the one the wheel was built from")
    return Check("sdist", True, f"{filename} from {upstream}: sha256 {digest[:16]} is the signed one")
