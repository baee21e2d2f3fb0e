"""Shared fixtures: an isolated FARM_HOME, a running embedded farm, installer environments that
ignore this machine's pip configuration, and real sdists made from small projects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from farm.util.cmd import clean_env
from tests.backends import C_SOURCE

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "wheel-farm"
UPSTREAM = "https://pypi.org/simple/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installer_env(**extra: str) -> dict[str, str]:
    """The environment for pip/uv in tests: no host pip.conf, find-links or extra indexes."""
    return clean_env(extra)


@pytest.fixture
def farm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh FARM_HOME for in-process use (settings, database, Celery app all reset)."""
    from farm.config import reset_settings
    from farm.coordinator.app import reset_app

    home = tmp_path / "farm"
    monkeypatch.setenv("FARM_HOME", str(home))
    reset_settings()
    reset_app()
    import farm.cli

    farm.cli._db_ready = False
    yield home
    reset_settings()
    reset_app()
    farm.cli._db_ready = False


class Farm:
    """A running `farm up` in its own FARM_HOME, driven through the real `farm` command."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.index_url = f"{self.url}/simple/"
        self.env = {**os.environ, "FARM_HOME": str(home)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "up", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("farm up did not answer within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def farm(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def running_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("farm-up") / "home", free_port())
    farm.start()
    yield farm
    farm.stop()


def pip_install_from(index_url: str, venv: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    """A fresh venv, then plain pip with only the farm's index."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--index-url", index_url, *packages],
                          env=installer_env(), capture_output=True, text=True, timeout=300)


def installed_and_run(index_url: str, tmp_path: Path, requirement: str, code: str) -> str:
    """pip-install `requirement` from `index_url` into a fresh venv, run `code` there; its stdout."""
    pip = pip_install_from(index_url, tmp_path / "venv", requirement)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def make_project(root: Path, name: str, *, version: str = "0.1.0", c_extension: bool = True,
                 dependencies: list[str] | None = None, body: str = "return a + b") -> Path:
    """A small setuptools project with a C extension module `<name>._native` exporting add()."""
    mod = name.replace("-", "_")
    proj = root / name
    (proj / mod).mkdir(parents=True)
    deps = ", ".join(f'"{d}"' for d in dependencies or [])
    (proj / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"
        requires-python = ">=3.8"
        dependencies = [{deps}]

        [tool.setuptools]
        packages = ["{mod}"]
        """))
    (proj / mod / "__init__.py").write_text("from ._native import add\n" if c_extension else f"def add(a, b):\n    {body}\n")
    if c_extension:
        (proj / "setup.py").write_text(textwrap.dedent(f"""
            from setuptools import Extension, setup
            setup(ext_modules=[Extension("{mod}._native", ["{mod}/_native.c"])])
            """))
        (proj / mod / "_native.c").write_text(C_SOURCE)
    return proj


def make_sdist(project: Path, out: Path) -> Path:
    """`uv build --sdist` of a project folder (a real PEP 517 sdist)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([uv_bin(), "build", "--sdist", "--no-config", "--out-dir", str(out), "--default-index", UPSTREAM,
                    str(project)], env=installer_env(), check=True, capture_output=True, timeout=300)
    return next(out.glob("*.tar.gz"))


def cached_sdist(requirement: str) -> Path:
    """A real sdist from the upstream index (sha256 checked), downloaded once into ~/.cache/wheel-farm/sdists.

    The farm's own upstream client finds and fetches it: `pip download --no-binary :all:` would
    also build the sdist's build dependencies from source just to read its metadata."""
    from farm.index.upstream import Upstream

    name, _, version = requirement.partition("==")
    folder = CACHE / "sdists"
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("*.tar.gz"):
        stem = path.name[: -len(".tar.gz")].lower().replace("_", "-")
        if stem == f"{name.lower().replace('_', '-')}-{version}":
            return path
    with Upstream(UPSTREAM) as upstream:
        return upstream.download(upstream.find_sdist(name, version), folder)


