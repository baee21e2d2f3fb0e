"""Any PEP 517 backend: sdists made by meson-python, scikit-build-core, setuptools with Cython,
setuptools' legacy fallback (no pyproject.toml), hatchling, flit-core, pdm-backend and poetry-core,
plus real sdists from the upstream index that use them in ways no recipe prepares for (an in-tree
backend on `backend-path`, Cython under meson-python and pdm-backend, a bare setup.py). Each goes
through a real `farm up` with no recipe, is verified, published, installed by pip from the farm's
index and its compiled code called.

Nothing here is special-cased in the farm: the projects name no recipe and the farm is not told
which backend they use.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import backends
from tests.helpers.env import free_port, installed_and_run
from tests.helpers.farms import Farm
from tests.helpers.sdists import cached_sdist, make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("backends") / "home", free_port())
    f.env["FARM_RECIPES_DIRS"] = json.dumps([])
    f.start()
    yield f
    f.stop()


def _submit(farm: Farm, request: str) -> dict:
    res = farm.farm("submit", "--wait", "--timeout", "900", request)
    jobs = json.loads(farm.farm("status", "--json", "--limit", "500").stdout)
    assert res.returncode == 0, res.stdout + res.stderr + farm.farm("logs", str(jobs[0]["id"])).stdout[-4000:]
    return jobs[0]


def _wheels(farm: Farm, project: str) -> list[Path]:
    return sorted((farm.home / "index/files" / project).glob("*.whl"))


@pytest.mark.parametrize("backend", sorted(backends.COMPILED))
def test_compiled_project_from_each_backend(farm: Farm, tmp_path: Path, backend: str) -> None:
    name = f"farmtest-{backend}"
    mod = name.replace("-", "_")
    sdist = make_sdist(backends.COMPILED[backend](tmp_path, name), tmp_path / "dist")
    _submit(farm, str(sdist))
    (wheel,) = _wheels(farm, name)
    assert "-cp311-cp311-manylinux" in wheel.name, wheel.name
    assert any(n.startswith(f"{mod}/_native.") and n.endswith(".so") for n in zipfile.ZipFile(wheel).namelist())
    code = f"import {mod}, {mod}._native as n; assert n.__file__.endswith('.so'); print({mod}.add(40, 2))"
    assert installed_and_run(farm.index_url, tmp_path, name, code) == "42"


@pytest.mark.parametrize("backend", sorted(backends.PURE))
def test_pure_project_from_each_backend(farm: Farm, tmp_path: Path, backend: str) -> None:
    name = f"farmtest-{backend}"
    mod = name.replace("-", "_")
    _submit(farm, str(make_sdist(backends.PURE[backend](tmp_path, name), tmp_path / "dist")))
    (wheel,) = _wheels(farm, name)
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    assert installed_and_run(farm.index_url, tmp_path, name, f"import {mod}; print({mod}.add(1, 2))") == "3"


# Real sdists from the upstream index: (requirement, what their build uses, code run after pip install from the farm)
REAL = [
    pytest.param("cysignals==1.12.5", "import cysignals.signals as s; print(s.__file__.rsplit('.', 1)[1])",
                 id="meson-python+cython"),
    pytest.param("propcache==0.5.4", "import propcache._helpers_c as c; print(c.under_cached_property.__name__)",
                 id="in-tree-backend+cython"),
    pytest.param("editdistance==0.8.1", "import editdistance; print(editdistance.eval('banana', 'bahama'))",
                 id="pdm-backend+cython-cpp"),
    pytest.param("pyroaring==1.2.0", "from pyroaring import BitMap; print(len(BitMap(range(5)) | BitMap([9])))",
                 id="setup-py-only+cython-cpp"),
    pytest.param("ninja==1.13.2", "import ninja, os, subprocess; "
                 "print(subprocess.run([os.path.join(ninja.BIN_DIR, 'ninja'), '--version'], capture_output=True, text=True,"
                 " check=True).stdout.split('.git')[0].strip())", id="scikit-build-core+in-tree-backend+cmake-executable"),
]
EXPECTED = {"cysignals==1.12.5": "so", "propcache==0.5.4": "under_cached_property", "editdistance==0.8.1": "2",
            "pyroaring==1.2.0": "6",
            "ninja==1.13.2": "1.13.2"}


@pytest.mark.parametrize(("requirement", "code"), REAL)
def test_real_sdist_with_its_own_backend(farm: Farm, tmp_path: Path, requirement: str, code: str) -> None:
    name = requirement.partition("==")[0]
    job = _submit(farm, str(cached_sdist(requirement)))
    assert job["name"] == name and job["state"] == "succeeded"
    wheels = _wheels(farm, name)
    assert wheels and all("manylinux" in w.name for w in wheels), wheels
    out = installed_and_run(farm.index_url, tmp_path, requirement, code)
    assert out == EXPECTED[requirement]
