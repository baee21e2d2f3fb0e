"""The test environment: repository paths, free loopback ports, and pip/uv runs that ignore this
machine's pip configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from farm.util.cmd import clean_env


ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path.home() / ".cache" / "wheel-farm"
UPSTREAM = "https://pypi.org/simple/"
# The farm builds for every CPython a worker finds; tests build for the one running them unless
# they ask for a matrix (tests/test_matrix.py), so each sdist is one job as before.
ONE_PYTHON = json.dumps([sys.executable])
# ... and a worker runs one job at a time unless the test asks for more (farm worker --jobs; the
# default, one per core, would run the suite's jobs two at a time on a two-core machine).
ONE_JOB = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installer_env(**extra: str) -> dict[str, str]:
    """The environment for pip/uv in tests: no host pip.conf, find-links or extra indexes."""
    return clean_env(extra)


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


def base_env(**extra: str) -> dict[str, str]:
    """This environment without FARM_* settings, one Python for native workers (each sdist is one job,
    as the tests expect; the matrix has its own tests), and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_PYTHONS"] = ONE_PYTHON
    env["FARM_WORKER_JOBS"] = ONE_JOB
    env.update(extra)
    return env
