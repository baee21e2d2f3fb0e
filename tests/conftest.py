"""Shared fixtures: an isolated FARM_HOME, a running embedded farm, installer environments that
ignore this machine's pip configuration, and real sdists made from small projects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

# The helpers live in tests/helpers/; these names stay importable from here for older imports.
from tests.helpers.env import (CACHE, ONE_PYTHON, ROOT, UPSTREAM, free_port, installed_and_run,  # noqa: F401
                               installer_env, pip_install_from, uv_bin)
from tests.helpers.farms import Farm
from tests.helpers.sdists import cached_sdist, make_project, make_sdist  # noqa: F401


@pytest.fixture
def farm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh FARM_HOME for in-process use (settings, database, Celery app all reset)."""
    from farm.config import reset_settings
    from farm.coordinator.app import reset_app

    home = tmp_path / "farm"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.setenv("FARM_PYTHONS", ONE_PYTHON)
    reset_settings()
    reset_app()
    import farm.cli

    farm.cli._db_ready = False
    yield home
    reset_settings()
    reset_app()
    farm.cli._db_ready = False


@pytest.fixture(scope="module")
def running_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = Farm(tmp_path_factory.mktemp("farm-up") / "home", free_port())
    farm.start()
    yield farm
    farm.stop()
