"""The upstream index sdists come from: a PEP 503 simple index (HTML) or its PEP 691 JSON form.

`Upstream` asks for JSON and accepts HTML (whatever the server answers), parses project pages with
`pypi_simple`, and keeps each page in memory for the client's lifetime. Only sdists (`.tar.gz`,
`.zip`) are offered as files; wheels still count as versions that exist, so that "no such version"
and "that version has no sdist" are told apart.

    with Upstream("https://pypi.org/simple/") as up:
        f = up.best_sdist("pyyaml>=6", "3.11")
        path = up.download(f, work)            # sha256 checked against the index
"""

from __future__ import annotations

import email.message
import hashlib
import os
import re
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import httpx
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from pypi_simple import ACCEPT_JSON_PREFERRED, DistributionPackage, ProjectPage

from farm.errors import UpstreamError

__all__ = ["Upstream", "UpstreamFile"]

_PROJECT_NAME = re.compile(r"^[A-Z0-9]([A-Z0-9._-]*[A-Z0-9])?$", re.IGNORECASE)
_JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_HTML_TYPES = ("application/vnd.pypi.simple.v1+html", "text/html")
_CHUNK = 1 << 20
_SHOW_VERSIONS = 5


@dataclass(frozen=True, kw_only=True)
class UpstreamFile:
    project: str  # canonicalized
    version: str  # normalized
    filename: str
    url: str  # without the #sha256= fragment
    sha256: str | None
    requires_python: str | None
    yanked: bool
    upload_time: datetime | None = None  # PEP 700; None where the index does not say (HTML pages)


@dataclass
class _Page:
    sdists: list[UpstreamFile]
    versions: set[Version] = field(default_factory=set)  # of every file, wheels included


def _ssl_context() -> ssl.SSLContext:
    """The system trust store, or the one SSL_CERT_FILE / SSL_CERT_DIR name (a local CA, a proxy)."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    if cafile and not os.path.isfile(cafile):
        cafile = None
    if capath and not os.path.isdir(capath):
        capath = None
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    ctx = ssl.create_default_context()
    if not ctx.cert_store_stats().get("x509_ca"):  # pragma: no cover - hosts without a system store
        try:
            import certifi

            ctx.load_verify_locations(certifi.where())
        except ImportError:
            pass
    return ctx


class Upstream:
    """A client for one simple index. Not thread-safe; use one per thread."""

    def __init__(self, index_url: str, *, timeout: float = 30) -> None:
        self.index_url = index_url.rstrip("/") + "/"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,
            verify=_ssl_context(),
            headers={"User-Agent": "wheel-farm (+upstream sdist intake)"},
        )
        self._pages: dict[NormalizedName, _Page] = {}

    def __repr__(self) -> str:
        return f"Upstream({self.index_url!r})"

    # Lifetime ----------------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Queries -----------------------------------------------------------------------------------

    def project_files(self, name: str) -> list[UpstreamFile]:
        """Every sdist of the project, oldest version first. UpstreamError if the index lacks it."""
        return list(self._page(name).sdists)

    def find_sdist(self, name: str, version: str) -> UpstreamFile:
        """The sdist of exactly `name==version` (a yanked one too: it was asked for by version)."""
        try:
            wanted = Version(version)
        except InvalidVersion:
            raise UpstreamError(f"{version!r} is not a valid version (PEP 440)") from None
        page = self._page(name)
        matches = [f for f in page.sdists if Version(f.version) == wanted]
        if matches:
            return max(matches, key=lambda f: (not f.yanked, f.filename.endswith(".tar.gz")))
        if wanted in page.versions:
            raise UpstreamError(f"{name} {version} has no sdist on {self.index_url} (only built distributions)")
        newest = sorted(page.versions, reverse=True)[:_SHOW_VERSIONS]
        listed = ", ".join(str(v) for v in newest) if newest else "none"
        more = ", ..." if len(page.versions) > _SHOW_VERSIONS else ""
        raise UpstreamError(f"{name} has no version {version} on {self.index_url}; "
                            f"newest available: {listed}{more}")

    def best_sdist(self, requirement: str, python_version: str,
                   accept: Callable[[UpstreamFile], bool] | None = None) -> UpstreamFile | None:
        """The newest sdist satisfying `requirement` whose Requires-Python admits `python_version`.

        Prereleases only when the specifier names one; yanked files are skipped, except that an
        exact `==` pin may still select a yanked release when nothing else matches (PEP 592).
        `python_version` is compared as given ("3.11" is 3.11.0); markers and extras are ignored.
        `accept` (the intake policy) leaves out files it refuses. None when nothing fits.
        """
        try:
            req = Requirement(requirement)
        except InvalidRequirement as exc:
            raise UpstreamError(f"invalid requirement {requirement!r}: {exc}") from None
        if req.url:
            raise UpstreamError(f"requirement {requirement!r} is a direct URL, not something to find on an index")
        try:
            python = Version(python_version)
        except InvalidVersion:
            raise UpstreamError(f"{python_version!r} is not a valid Python version") from None
        spec = req.specifier
        pre = bool(spec.prereleases)
        fits = [f for f in self._page(req.name).sdists
                if spec.contains(Version(f.version), prereleases=pre) and _admits(f.requires_python, python)
                and (accept is None or accept(f))]
        candidates = [f for f in fits if not f.yanked] or (fits if _is_exact_pin(spec) else [])
        if not candidates:
            return None
        return max(candidates, key=lambda f: (Version(f.version), not f.yanked, f.filename.endswith(".tar.gz")))

    # Download ----------------------------------------------------------------------------------

    def download(self, file: UpstreamFile, dest_dir: Path) -> Path:
        """Stream `file` into `dest_dir/file.filename`, checking its sha256 against the index's.

        The bytes go to a temporary file in `dest_dir`, renamed into place only once the digest
        matches; on a mismatch (UpstreamError naming both digests) or any error it is removed.
        """
        name = file.filename
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise UpstreamError(f"refusing to download to the file name {name!r}")
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{name}.", suffix=".part")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    # identity: the bytes as stored, never a transfer-compressed variant
                    with self._client.stream("GET", file.url, headers={"Accept-Encoding": "identity"}) as resp:
                        if resp.status_code != 200:
                            raise UpstreamError(f"cannot download {file.url}: HTTP {resp.status_code}")
                        for chunk in resp.iter_raw(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                except httpx.HTTPError as exc:
                    raise UpstreamError(f"cannot download {file.url}: {exc}") from None
            got = digest.hexdigest()
            if file.sha256 is not None and got != file.sha256.lower():
                raise UpstreamError(f"{name}: sha256 mismatch: the index says {file.sha256.lower()}, "
                                    f"the downloaded file has {got}")
            final = dest_dir / name
            os.replace(tmp, final)
            return final
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    # Pages -------------------------------------------------------------------------------------

    def _page(self, name: str) -> _Page:
        if not _PROJECT_NAME.match(name or ""):
            raise UpstreamError(f"{name!r} is not a valid project name")
        key = canonicalize_name(name)
        page = self._pages.get(key)
        if page is None:
            page = self._pages[key] = self._fetch(name, key)
        return page

    def _fetch(self, name: str, key: NormalizedName) -> _Page:
        url = f"{self.index_url}{quote(key)}/"
        try:
            resp = self._client.get(url, headers={"Accept": ACCEPT_JSON_PREFERRED})
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach {url}: {exc}") from None
        if resp.status_code == 404:
            raise UpstreamError(f"project {name!r} is not on {self.index_url}")
        if resp.status_code != 200:
            raise UpstreamError(f"cannot read {url}: HTTP {resp.status_code}")
        header = email.message.Message()
        header["content-type"] = resp.headers.get("content-type", "text/html")
        ctype, charset = header.get_content_type(), header.get_param("charset")
        try:
            if ctype == _JSON_TYPE:
                parsed = ProjectPage.from_json_data(resp.json(), base_url=str(resp.url))
            elif ctype in _HTML_TYPES:
                parsed = ProjectPage.from_html(key, resp.content, base_url=str(resp.url),
                                               from_encoding=charset if isinstance(charset, str) else None)
            else:
                raise UpstreamError(f"{url} answered with {ctype!r}, not a simple-index page")
        except UpstreamError:
            raise
        except Exception as exc:  # a page pypi_simple cannot read: bad JSON, unsupported API version
            raise UpstreamError(f"cannot parse {url}: {exc}") from None
        return _build_page(key, parsed)


def _build_page(key: NormalizedName, parsed: ProjectPage) -> _Page:
    page = _Page(sdists=[])
    for v in parsed.versions or ():
        try:
            page.versions.add(Version(v))
        except InvalidVersion:
            pass
    for pkg in parsed.packages:
        sdist = _as_sdist(key, pkg)
        if sdist is not None:
            page.sdists.append(sdist)
            page.versions.add(Version(sdist.version))
            continue
        version = _version_of(key, pkg)
        if version is not None:
            page.versions.add(version)
    page.sdists.sort(key=lambda f: (Version(f.version), f.filename))
    return page


def _as_sdist(key: NormalizedName, pkg: DistributionPackage) -> UpstreamFile | None:
    if not pkg.filename.endswith((".tar.gz", ".zip")):
        return None
    try:
        name, version = parse_sdist_filename(pkg.filename)
    except InvalidSdistFilename:
        return None  # not NAME-VERSION with a PEP 440 version: a legacy or binary archive
    if name != key:
        return None
    rp = (pkg.requires_python or "").strip() or None
    return UpstreamFile(project=key, version=str(version), filename=pkg.filename, url=pkg.url,
                        sha256=pkg.digests.get("sha256"), requires_python=rp, yanked=pkg.is_yanked,
                        upload_time=pkg.upload_time)


def _version_of(key: NormalizedName, pkg: DistributionPackage) -> Version | None:
    if pkg.filename.endswith(".whl"):
        try:
            name, version, _, _ = parse_wheel_filename(pkg.filename)
        except InvalidWheelFilename:
            return None
        return version if name == key else None
    try:
        return Version(pkg.version) if pkg.version else None
    except InvalidVersion:
        return None


def _admits(requires_python: str | None, python: Version) -> bool:
    if not requires_python:
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True  # as installers do: an unreadable Requires-Python does not exclude the file


def _is_exact_pin(spec: SpecifierSet) -> bool:
    specs = list(spec)
    return len(specs) == 1 and specs[0].operator in ("==", "===") and not specs[0].version.endswith(".*")
