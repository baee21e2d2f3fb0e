"""`HttpStorage`: the Storage protocol over the farm's API, for remote workers.

A remote worker has the broker URL, the server URL and a worker token, and nothing else: it reads
sdists and staged wheels with `GET /api/storage/{key}` and uploads wheels, logs and provenance
with `PUT /api/storage/{key}`, every upload carrying its sha256 (`X-Content-SHA256`) so the server
stores nothing that arrived damaged, and the storage capability of the job attempt it runs
(`X-Farm-Capability`, from the job's `JobSpec`; `with_capability`): the token alone writes nothing.
A missing key is `NotFound`; an object stored already with other bytes is `StorageConflict`
(objects are write-once). Transport errors and server errors (5xx, 429) are retried here, with
backoff, for `retry_for` seconds (`Settings.api_retry_seconds`): the API may be restarting or away
for minutes, and the worker holds its finished result on its own disk meanwhile, instead of throwing
the build away. What is still failing at the deadline is an `InfrastructureFault` that names the
real fault and how long it lasted. A request that is answered is never sent twice: uploads are
idempotent anyway (the same bytes under a key are accepted again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import httpx

from farm.errors import InfrastructureFault, NotFound
from farm.storage import StorageConflict
from farm.tokens import CAPABILITY_HEADER
from farm.util.hashing import sha256_file

SHA256_HEADER = "X-Content-SHA256"
_CHUNK = 1024 * 1024
_TRANSIENT = frozenset({429, 500, 502, 503, 504})
log = logging.getLogger(__name__)


class _Transient(Exception):
    """A fault worth another try (the connection, or the server's 5xx/429)."""


class HttpStorage:
    def __init__(self, base_url: str, token: str = "", *, client: httpx.Client | None = None,
                 timeout: float = 300.0, capability: str = "", retry_for: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = headers
        self._token = token
        self.capability = capability
        self.retry_for = retry_for
        self._sleep = sleep

    def with_capability(self, capability: str) -> HttpStorage:
        """The same storage (and connection pool), uploading with one job attempt's storage capability."""
        return HttpStorage(self.base_url, self._token, client=self._client, capability=capability,
                           retry_for=self.retry_for, sleep=self._sleep)

    def with_retry(self, seconds: float) -> HttpStorage:
        """The same storage, retrying transient faults for `seconds` (0: fail at the first one)."""
        return HttpStorage(self.base_url, self._token, client=self._client, capability=self.capability,
                           retry_for=seconds, sleep=self._sleep)

    def _patiently(self, what: str, attempt: Callable[[], httpx.Response]) -> httpx.Response:
        """`attempt()` until it is answered with no transient fault, or `retry_for` seconds have passed."""
        start = time.monotonic()
        delay, tries = 0.5, 0
        while True:
            tries += 1
            try:
                return attempt()
            except _Transient as exc:
                waited = time.monotonic() - start
                if waited + delay > self.retry_for:
                    tail = f" (for {waited:.0f} s, {tries} tries)" if tries > 1 else ""
                    raise InfrastructureFault("storage", f"{what}: {exc}{tail}") from exc.__cause__
                if tries == 1 or tries % 10 == 0:
                    log.warning("%s: %s; trying again for up to %.0f s more", what, exc, self.retry_for - waited)
                self._sleep(delay)
                delay = min(delay * 2, 5.0)  # back within 5 s of the API's return

    def _url(self, key: str) -> str:
        return f"{self.base_url}/api/storage/{quote(key, safe='/')}"

    def _request(self, method: str, key: str, *, content: Callable[[], bytes | Iterator[bytes]] | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        """One request, retried while transient; `content` makes the body afresh for each try."""

        def attempt() -> httpx.Response:
            try:
                resp = self._client.request(method, self._url(key), content=content() if content else None,
                                            headers={**self._headers, **(headers or {})})
            except httpx.TransportError as exc:
                raise _Transient(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
            except httpx.HTTPError as exc:
                raise InfrastructureFault("storage", f"{method} {key}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code in _TRANSIENT:
                raise _Transient(f"HTTP {resp.status_code}: {resp.text[:300]}")
            return resp

        resp = self._patiently(f"{method} {key}", attempt)
        if resp.status_code == 404:
            raise NotFound(f"not in storage: {key}")
        if resp.status_code == 409 and method == "PUT":
            raise StorageConflict(key, f"{method} {key}: HTTP 409: {resp.text[:500]}")
        if resp.status_code >= 400:
            raise InfrastructureFault("storage", f"{method} {key}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp

    def _upload_headers(self, digest: str) -> dict[str, str]:
        headers = {SHA256_HEADER: digest, "Content-Type": "application/octet-stream"}
        if self.capability:
            headers[CAPABILITY_HEADER] = self.capability
        return headers

    def put_file(self, key: str, path: Path) -> None:
        digest = sha256_file(path)
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    yield block

        self._request("PUT", key, content=chunks, headers={**self._upload_headers(digest), "Content-Length": str(size)})

    def put_bytes(self, key: str, data: bytes) -> None:
        self._request("PUT", key, content=lambda: data, headers=self._upload_headers(hashlib.sha256(data).hexdigest()))

    def get_file(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)

        def attempt() -> httpx.Response:  # each try writes the file from its start
            try:
                with open(tmp, "wb") as f, self._client.stream("GET", self._url(key), headers=self._headers) as resp:
                    if resp.status_code in _TRANSIENT:
                        resp.read()
                        raise _Transient(f"HTTP {resp.status_code}: {resp.text[:300]}")
                    if resp.status_code == 404:
                        raise NotFound(f"not in storage: {key}")
                    if resp.status_code >= 400:
                        resp.read()
                        raise InfrastructureFault("storage", f"GET {key}: HTTP {resp.status_code}: {resp.text[:500]}")
                    for block in resp.iter_bytes(_CHUNK):
                        f.write(block)
                    return resp
            except httpx.TransportError as exc:
                raise _Transient(f"{type(exc).__name__}: {exc or 'no answer'}") from exc
            except httpx.HTTPError as exc:
                raise InfrastructureFault("storage", f"GET {key}: {type(exc).__name__}: {exc}") from exc

        try:
            self._patiently(f"GET {key}", attempt)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def read_bytes(self, key: str) -> bytes:
        return self._request("GET", key).content

    def exists(self, key: str) -> bool:
        try:
            self._request("HEAD", key)
        except NotFound:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    @classmethod
    def shared(cls, base_url: str, token: str) -> HttpStorage:
        """One client (and connection pool) per server and token for the whole process."""
        return _shared(base_url, token)

    def close(self) -> None:
        self._client.close()


@lru_cache(maxsize=4)
def _shared(base_url: str, token: str) -> HttpStorage:
    from farm.config import get_settings

    return HttpStorage(base_url, token, retry_for=get_settings().api_retry_seconds)
