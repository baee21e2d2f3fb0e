"""Real third-party index servers on 127.0.0.1 for tests and bench/index.py: pypiserver and
devpi-server, each in its own folder, started as child processes and stopped by their pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class PypiServer:
    """`pypi-server run` on a folder; uploads need `username`/`password` (an htpasswd file)."""

    def __init__(self, folder: Path, *, username: str = "farm", password: str = "s3cret-pypiserver",
                 server: str = "auto") -> None:
        self.folder, self.username, self.password, self.server = Path(folder), username, password, server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.index_url = self.url + "simple/"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PypiServer:
        from passlib.apache import HtpasswdFile

        packages = self.folder / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        ht = HtpasswdFile(str(self.folder / "htpasswd"), new=True)
        ht.set_password(self.username, self.password)
        ht.save()
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "pypi-server"), "run", "-i", "127.0.0.1", "-p", str(self.port), "-P",
                 str(self.folder / "htpasswd"), "-a", "update", "--disable-fallback", "--server", self.server,
                 str(packages)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self.index_url, self.proc, log)
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


class DevpiServer:
    """`devpi-server --offline-mode` with user `username` owning the index `username/dev` (no bases)."""

    def __init__(self, folder: Path, *, username: str = "farm", password: str = "s3cret-devpi",
                 index: str = "dev") -> None:
        self.folder, self.username, self.password, self.index = Path(folder), username, password, index
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}/"
        self.url = f"{self.root_url}{username}/{index}/"  # the upload URL
        self.index_url = f"{self.url}+simple/"
        self.proc: subprocess.Popen[bytes] | None = None

    def _client(self, *args: str) -> None:
        r = subprocess.run([str(BIN / "devpi"), "--clientdir", str(self.folder / "client"), *args],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"devpi {' '.join(args)}: {r.stdout}{r.stderr}")

    def __enter__(self) -> DevpiServer:
        serverdir = self.folder / "server"
        root_password = "root-" + self.password
        if not (serverdir / ".serverversion").exists():
            subprocess.run([str(BIN / "devpi-init"), "--serverdir", str(serverdir), "--root-passwd", root_password],
                           check=True, capture_output=True, timeout=120)
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "devpi-server"), "--offline-mode", "--host", "127.0.0.1", "--port", str(self.port),
                 "--serverdir", str(serverdir)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self.root_url + "+api", self.proc, log)
        self._client("use", self.root_url)
        self._client("login", "root", "--password", root_password)
        try:
            self._client("user", "-c", self.username, f"password={self.password}", "email=farm@example.invalid")
        except RuntimeError as exc:
            if "exists" not in str(exc):
                raise
        self._client("login", self.username, "--password", self.password)
        try:
            self._client("index", "-c", self.index, "bases=", "volatile=False")
        except RuntimeError as exc:
            if "exists" not in str(exc):
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)
