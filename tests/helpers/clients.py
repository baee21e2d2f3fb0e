"""Installer clients for the index tests: pip and uv in their own virtual environments, with an
environment that ignores this machine's configuration."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from farm.util.cmd import clean_env, run
from tests.helpers.env import CACHE


CLIENTS = CACHE / "clients"


UV = Path(sys.executable).parent / "uv"


UPSTREAM = "https://pypi.org/simple/"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env({"UV_CACHE_DIR": str(tmp_path / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
                      "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1", **extra})


def _client_env() -> dict[str, str]:
    """For installing the clients themselves (from the upstream index, through the shared cache)."""
    return clean_env({"UV_CACHE_DIR": str(CLIENTS / "uv-cache"), "UV_PYTHON_DOWNLOADS": "never"})


def tool_venv(name: str, *requirements: str) -> Path:
    """A venv with `requirements` installed, kept in the cache; its bin folder."""
    venv = CLIENTS / "venvs" / name
    marker = venv / ".farm-requirements"
    if not (marker.is_file() and marker.read_text() == " ".join(requirements)):
        shutil.rmtree(venv, ignore_errors=True)
        env = _client_env()
        run([UV, "venv", "--quiet", "--python", sys.executable, venv], env=env, timeout=300)
        run([UV, "pip", "install", "--quiet", "--python", venv / "bin" / "python", "--default-index", UPSTREAM,
             *requirements], env=env, timeout=600)
        marker.write_text(" ".join(requirements))
    return venv / "bin"


def pip_venv(folder: Path, pip: str) -> Path:
    """A fresh venv holding exactly `pip` (a requirement); its python."""
    env = _client_env()
    run([UV, "venv", "--quiet", "--python", sys.executable, folder], env=env, timeout=300)
    python = folder / "bin" / "python"
    run([UV, "pip", "install", "--quiet", "--python", python, "--default-index", UPSTREAM, pip], env=env, timeout=600)
    return python
