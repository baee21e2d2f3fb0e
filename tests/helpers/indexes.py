"""Static upstream indexes on 127.0.0.1 for the intake, upstream and index tests: a folder served with
HTML and PEP 691 JSON pages (StaticIndex, _Handler), and the farm's own ASGI app served by uvicorn
(_Server)."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import uvicorn

from tests.helpers.sdists import pkg_info, sdist_members, write_tar


JSON_TYPE = "application/vnd.pypi.simple.v1+json"


class _Handler(SimpleHTTPRequestHandler):
    """Static files; a folder's index.json is served instead of index.html when JSON is accepted."""

    requests: list[tuple[str, str]]

    def send_head(self):  # type: ignore[no-untyped-def]
        self.requests.append((self.path, self.headers.get("Accept", "")))
        folder = self.translate_path(self.path)
        page = os.path.join(folder, "index.json")
        if self.path.endswith("/") and JSON_TYPE in self.headers.get("Accept", "") and os.path.isfile(page):
            body = Path(page).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", JSON_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return io.BytesIO(body)
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server:
    """uvicorn serving an app on 127.0.0.1 in a thread, recording every requested path."""

    def __init__(self, app: object) -> None:
        self.paths: list[str] = []

        async def recording(scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] == "http":
                self.paths.append(scope["path"])
            await app(scope, receive, send)  # type: ignore[operator]

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the index server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple/"


class StaticIndex:
    """A static upstream index in a folder, served until stop(): each project page is written both as
    PEP 503 HTML (simple/<project>/index.html) and as PEP 691 JSON (index.json, with PEP 700 upload
    times when given), the JSON one served when the client accepts it; the files are in files/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "simple").mkdir(parents=True)
        (root / "files").mkdir()
        self.requests: list[tuple[str, str]] = []
        self._links: dict[str, list[str]] = {}
        self._files: dict[str, list[dict[str, object]]] = {}
        handler = type("Handler", (_Handler,), {"requests": self.requests})

        def make(*args: object, **kwargs: object) -> _Handler:
            return handler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), make)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._running = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple/"
        self.files_url = self.url.removesuffix("simple/") + "files/"

    def add(self, project: str, filename: str, data: bytes, *, digest: str | None = "auto",
            uploaded: dt.datetime | None = None, requires_python: str | None = None) -> str | None:
        """Serve `data` as `filename` of `project`; the link carries `digest` (default: the true sha256)
        and `requires_python` (PEP 503's data-requires-python) when given, and, on the JSON page, the
        upload time `uploaded` (none if not given)."""
        (self.root / "files" / filename).write_bytes(data)
        if digest == "auto":
            digest = hashlib.sha256(data).hexdigest()
        fragment = f"#sha256={digest}" if digest else ""
        rp = f' data-requires-python="{html.escape(requires_python)}"' if requires_python else ""
        self._links.setdefault(project, []).append(f'<a href="../../files/{filename}{fragment}"{rp}>{filename}</a><br/>')
        entry: dict[str, object] = {"filename": filename, "url": f"../../files/{filename}",
                                    "hashes": {"sha256": digest} if digest else {}}
        if requires_python:
            entry["requires-python"] = requires_python
        if uploaded is not None:
            entry["upload-time"] = uploaded.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._files.setdefault(project, []).append(entry)
        folder = self.root / "simple" / project
        folder.mkdir(exist_ok=True)
        (folder / "index.html").write_text("<!DOCTYPE html>\n<html><body>\n" + "\n".join(self._links[project])
                                           + "\n</body></html>\n")
        (folder / "index.json").write_text(json.dumps({"meta": {"api-version": "1.1"}, "name": project,
                                                       "files": self._files[project]}))
        return digest

    def stop(self) -> None:
        if self._running:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._running = False


def tar_bytes(folder: Path, filename: str, members: list) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar(folder / filename, members).read_bytes()


def populate(index: StaticIndex, scratch: Path) -> None:
    """remote 1.0 (good), remote 2.0 (listed with a wrong sha256), remote 3.0 (a wheel only),
    liar 1.0 (its PKG-INFO says `other`), nohash 1.0 (listed without a sha256)."""
    index.add("remote", "remote-1.0.tar.gz", tar_bytes(scratch, "remote-1.0.tar.gz",
                                                       sdist_members("remote-1.0", "remote", "1.0")))
    index.add("remote", "remote-2.0.tar.gz", tar_bytes(scratch, "remote-2.0.tar.gz",
                                                       sdist_members("remote-2.0", "remote", "2.0")),
              digest=hashlib.sha256(b"what the index claims").hexdigest())
    index.add("remote", "remote-3.0-py3-none-any.whl", b"not really a wheel")
    index.add("liar", "liar-1.0.tar.gz", tar_bytes(scratch, "liar-1.0.tar.gz",
                                                   sdist_members("liar-1.0", "liar", "1.0",
                                                                 meta=pkg_info("other", "1.0"))))
    index.add("nohash", "nohash-1.0.tar.gz", tar_bytes(scratch, "nohash-1.0.tar.gz",
                                                       sdist_members("nohash-1.0", "nohash", "1.0")), digest=None)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[StaticIndex]:
    idx = StaticIndex(tmp_path / "upstream")
    populate(idx, tmp_path / "upstream-build")
    yield idx
    idx.stop()
