"""`HttpStorage`: the Storage protocol over the farm's API, for remote workers.

A remote worker has the broker URL, the server URL and a worker token, and nothing else: it reads
sdists and staged wheels with `GET /api/storage/{key}` and uploads wheels, logs and provenance
with `PUT /api/storage/{key}`, every upload carrying its sha256 (`X-Content-SHA256`) so the server
stores nothing that arrived damaged, and the storage capability of the job attempt it runs
(`X-Farm-Capability`, from the job's `JobSpec`; `with_capability`): the token alone writes nothing.
Transport and server errors are infrastructure faults (retried); a missing key is `NotFound`; an
object stored already with other bytes is `StorageConflict` (objects are write-once).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
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


class HttpStorage:
    def __init__(self, base_url: str, token: str = "", *, client: httpx.Client | None = None,
                 timeout: float = 300.0, capability: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(timeout=timeout)
        self._headers = headers
        self._token = token
        self.capability = capability

    def with_capability(self, capability: str) -> HttpStorage:
        """The same storage (and connection pool), uploading with one job attempt's storage capability."""
        return HttpStorage(self.base_url, self._token, client=self._client, capability=capability)

    def _url(self, key: str) -> str:
        return f"{self.base_url}/api/storage/{quote(key, safe='/')}"

    def _request(self, method: str, key: str, *, content: bytes | Iterator[bytes] | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            resp = self._client.request(method, self._url(key), content=content,
                                        headers={**self._headers, **(headers or {})})
        except httpx.HTTPError as exc:
            raise InfrastructureFault("storage", f"{method} {key}: {type(exc).__name__}: {exc}") from exc
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

        self._request("PUT", key, content=chunks(), headers={**self._upload_headers(digest), "Content-Length": str(size)})

    def put_bytes(self, key: str, data: bytes) -> None:
        self._request("PUT", key, content=data, headers=self._upload_headers(hashlib.sha256(data).hexdigest()))

    def get_file(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    with self._client.stream("GET", self._url(key), headers=self._headers) as resp:
                        if resp.status_code == 404:
                            raise NotFound(f"not in storage: {key}")
                        if resp.status_code >= 400:
                            resp.read()
                            raise InfrastructureFault("storage", f"GET {key}: HTTP {resp.status_code}: "
                                                      f"{resp.text[:500]}")
                        for block in resp.iter_bytes(_CHUNK):
                            f.write(block)
                except httpx.HTTPError as exc:
                    raise InfrastructureFault("storage", f"GET {key}: {type(exc).__name__}: {exc}") from exc
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
    return HttpStorage(base_url, token)
