"""A remote worker's storage through an API that goes away and comes back (issue: faults).

A real HTTP server on a loopback port stands in for the API's storage routes: it is absent (the
port refuses connections), then answers 503 (a proxy in front of a restarting API), then stores
the upload. `HttpStorage` keeps the request and delivers it once the server is back, within
`retry_for`; past that deadline it raises an `InfrastructureFault` naming the real fault and how
long it lasted. A 404 or 409 is an answer, not a fault: never retried.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farm.errors import InfrastructureFault, NotFound
from farm.storage import StorageConflict
from farm.storage_http import SHA256_HEADER, HttpStorage
from tests.helpers.env import free_port


class _Store(BaseHTTPRequestHandler):
    objects: dict[str, bytes] = {}
    puts: list[str] = []
    unavailable = 0  # answer this many requests with 503 first

    def _key(self) -> str:
        return self.path.removeprefix("/api/storage/")

    def _busy(self) -> bool:
        if type(self).unavailable > 0:
            type(self).unavailable -= 1
            self.send_response(503)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"restart")
            return True
        return False

    def do_PUT(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self._busy():
            return
        key = self._key()
        if hashlib.sha256(data).hexdigest() != self.headers[SHA256_HEADER]:
            self.send_response(400)
        elif key in self.objects and self.objects[key] != data:
            self.send_response(409)
        else:
            self.objects[key] = data
            self.puts.append(key)
            self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if self._busy():
            return
        data = self.objects.get(self._key())
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    def log_message(self, *args: object) -> None:
        pass


class _Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.httpd: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Store)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    _Store.objects, _Store.puts, _Store.unavailable = {}, [], 0
    srv = _Server(free_port())
    yield srv
    srv.stop()


def test_an_upload_waits_for_the_api_and_is_delivered_once(server: _Server, tmp_path: Path) -> None:
    wheel = tmp_path / "w-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel bytes" * 100_000)
    store = HttpStorage(f"http://127.0.0.1:{server.port}", "t", retry_for=60)
    threading.Timer(2.0, server.start).start()  # the API is down for 2 s, then up
    _Store.unavailable = 1  # and answers 503 once while it starts
    t0 = time.monotonic()
    store.put_file("jobs/1/attempt-1/wheels/w.whl", wheel)
    assert time.monotonic() - t0 >= 2.0
    assert _Store.puts == ["jobs/1/attempt-1/wheels/w.whl"]
    assert _Store.objects["jobs/1/attempt-1/wheels/w.whl"] == wheel.read_bytes()
    got = store.get_file("jobs/1/attempt-1/wheels/w.whl", tmp_path / "back" / "w.whl")
    assert got.read_bytes() == wheel.read_bytes()


def test_a_download_waits_for_the_api(server: _Server, tmp_path: Path) -> None:
    _Store.objects["sdists/x.tar.gz"] = b"sdist"
    store = HttpStorage(f"http://127.0.0.1:{server.port}", "t", retry_for=60)
    threading.Timer(1.5, server.start).start()
    assert store.get_file("sdists/x.tar.gz", tmp_path / "x.tar.gz").read_bytes() == b"sdist"
    assert store.read_bytes("sdists/x.tar.gz") == b"sdist"
    assert not list(tmp_path.glob(".tmp-*"))


def test_past_the_deadline_the_fault_is_named_and_nothing_is_left(server: _Server, tmp_path: Path) -> None:
    store = HttpStorage(f"http://127.0.0.1:{server.port}", "t", retry_for=1.5)
    with pytest.raises(InfrastructureFault) as err:
        store.put_bytes("jobs/1/attempt-1/x.log", b"log")
    assert "PUT jobs/1/attempt-1/x.log: ConnectError" in str(err.value) and "tries)" in str(err.value)
    with pytest.raises(InfrastructureFault, match="GET sdists/y.tar.gz: ConnectError"):
        store.get_file("sdists/y.tar.gz", tmp_path / "y.tar.gz")
    assert not list(tmp_path.iterdir())
    immediate = store.with_retry(0)
    t0 = time.monotonic()
    with pytest.raises(InfrastructureFault):
        immediate.read_bytes("jobs/1/stop.json")
    assert time.monotonic() - t0 < 1.0


def test_answers_are_not_retried(server: _Server, tmp_path: Path) -> None:
    server.start()
    store = HttpStorage(f"http://127.0.0.1:{server.port}", "t", retry_for=60)
    t0 = time.monotonic()
    with pytest.raises(NotFound):
        store.read_bytes("nothing")
    store.put_bytes("k", b"a")
    with pytest.raises(StorageConflict):
        store.put_bytes("k", b"b")
    assert time.monotonic() - t0 < 2.0 and _Store.puts == ["k"]
