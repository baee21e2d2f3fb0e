"""The recipes in recipes/ built and verified for real through the container path.

One `farm up` (engine cibuildwheel, the bullseye build and verification images, as in
tests/test_e2e_containers.py) gets each package's real sdist from the upstream index. For each: the
wheel is published with a manylinux tag, the system library the recipe installs is grafted into
`<package>.libs/`, its provenance says it passed verification in the clean container (no network),
and a fresh environment in the verification image installs it from the farm's index with plain pip
and runs the recipe's test command. Runtime dependencies (cffi's pycparser) are left to the farm,
which builds them from their sdists.

pyyaml, cffi and psycopg2 run with the suite (about 1 minute each on 2 cores). lxml (about 4 minutes
of compiling) and pillow only run when asked for:

    .venv/bin/pytest -m recipes_all tests/test_recipes_integration.py     # all five

Timings of the last full run are in docs/workers-linux.md, "Recipe integration runs".
`FARM_RECIPES_REPORT=FILE` writes each package's result and durations there as JSON lines.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.env import ROOT, free_port
from tests.helpers.farms import Farm
from tests.helpers.images import build_image_result, container_env, client, docker_host, run_in, verify_image_result  # noqa: F401
from tests.helpers.sdists import cached_sdist


pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network, pytest.mark.recipes_all]


@dataclass(frozen=True)
class Case:
    requirement: str
    libs: tuple[str, ...]  # prefixes of files expected in <project>.libs/
    in_suite: bool = True  # False: only with -m recipes_all

    @property
    def name(self) -> str:
        return self.requirement.partition("==")[0]


CASES = [
    Case("pyyaml==6.0.2", ("libyaml",)),
    Case("cffi==1.17.1", ("libffi",)),
    Case("psycopg2==2.9.10", ("libpq",)),
    # 5.4.0 is the last 5.x; it needs libxml2 >= 2.7 (bullseye has 2.9.10) and ships its C sources.
    Case("lxml==5.4.0", ("libxml2", "libxslt", "libexslt"), in_suite=False),
    # zlib (libz.so.1) is in the manylinux policy's allowed libraries, so only libjpeg is grafted;
    # the recipe's test command checks that zlib works.
    Case("pillow==11.3.0", ("libjpeg",), in_suite=False),
]


@pytest.fixture(scope="module")
def recipe_farm(tmp_path_factory: pytest.TempPathFactory, docker_host: str,  # noqa: F811
                build_image_result, verify_image_result) -> Iterator[Farm]:  # noqa: F811
    f = Farm(tmp_path_factory.mktemp("recipes") / "home", free_port())
    f.env.update(container_env(docker_host, build_image_result, verify_image_result))
    f.start()
    yield f
    f.stop()


def _selected_explicitly(config: pytest.Config) -> bool:
    return "recipes_all" in (config.getoption("markexpr") or "") or os.environ.get("FARM_RECIPES_ALL") == "1"


def _report(record: dict[str, object]) -> None:
    path = os.environ.get("FARM_RECIPES_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_recipe_builds_and_verifies(case: Case, recipe_farm: Farm, client, verify_image_result,  # noqa: F811
                                    request: pytest.FixtureRequest) -> None:
    if not case.in_suite and not _selected_explicitly(request.config):
        pytest.skip(f"{case.name}: long build, run with -m recipes_all (see the module docstring)")
    sdist = cached_sdist(case.requirement)
    start = time.monotonic()
    res = recipe_farm.farm("submit", "--wait", "--quiet", "--timeout", "1500", str(sdist), timeout=1600)
    seconds = time.monotonic() - start
    status = json.loads(recipe_farm.farm("status", "--json", "--limit", "20").stdout or "[]")
    jobs = [j for j in status if j["name"] in (case.name, "pycparser")]
    record = {"requirement": case.requirement, "returncode": res.returncode, "seconds": round(seconds, 1),
              "jobs": [{k: j[k] for k in ("name", "version", "state", "steps", "wheels", "error")} for j in jobs]}
    _report(record)
    assert res.returncode == 0, res.stdout + res.stderr + json.dumps(jobs, indent=1)

    wheels = sorted((recipe_farm.home / "index/files" / case.name).glob("*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    assert "-cp39-cp39-manylinux" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for lib in case.libs:
        assert any(n.startswith(f"{case.name}.libs/{lib}") for n in names), (lib, [n for n in names if ".libs/" in n])

    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True, verification
    assert verification["annotations"]["environment"].startswith("container:")
    assert "network=none" in verification["annotations"]["environment"]

    # A fresh environment in the clean image: plain pip from the farm's index only, then the recipe's test.
    test_command = tomllib.loads((ROOT / "recipes" / f"{case.name}.toml").read_text())["test-command"]
    code, out = run_in(client, verify_image_result.tag, network="host", script=(
        "export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 && python3 -m venv /tmp/v && "
        f"/tmp/v/bin/pip install -q --index-url {recipe_farm.index_url} {case.requirement} && cd /tmp && "
        + test_command.replace("{python}", "/tmp/v/bin/python")))
    assert code == 0, out
    print(f"{case.requirement}: submit to published {seconds:.1f} s; {wheel.name}; "
          f"libs {sorted({n.split('/')[1] for n in names if n.startswith(case.name + '.libs/') and n.count('/') == 1 and not n.endswith('/')})}")


def test_cffi_dependency_was_built_by_the_farm(recipe_farm: Farm) -> None:
    """cffi needs pycparser at runtime: the farm built it (pure Python) from its sdist in the build image."""
    files = sorted((recipe_farm.home / "index/files/pycparser").glob("*.whl"))
    if not files:
        pytest.skip("the cffi case did not run")
    assert files[0].name.endswith("-py3-none-any.whl")
    statement = json.loads(Path(f"{files[0]}.provenance.json").read_text())
    tools = statement["predicate"]["runDetails"]["builder"]["version"]
    assert tools.get("build-frontend") == "pip" and "image" in tools, tools
