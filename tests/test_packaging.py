"""The project's own wheel: built with `uv build`, installed with `pip install --no-deps --target`,
it carries the built-in recipes (farm.recipes.builtin, from the top-level recipes/), the dashboard's
templates and static files, the migrations and the self-test sample; `farm recipe check` run from
that copy lists the built-in recipes from inside it. Also: every package under farm/ is in the
wheel's package list, requires-python is what the code needs, and the worker READMEs install the
farm from its wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_listed_and_recipes_map_to_the_builtin_package() -> None:
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "farm").rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert found <= listed, f"packages missing from pyproject.toml [tool.setuptools] packages: {found - listed}"
    assert listed - found == {"farm.recipes.builtin"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"farm.recipes.builtin": "recipes"}


def test_requires_python_admits_only_pythons_with_extraction_filters() -> None:
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert "3.11.4" in spec and "3.12.0" in spec
    assert "3.11.3" not in spec and "3.10.12" not in spec


def test_worker_readmes_install_the_farm_from_its_wheel() -> None:
    readmes = [ROOT / "workers" / platform / "README.md" for platform in ("linux", "macos", "windows")]
    for readme in readmes:
        text = readme.read_text()
        assert "wheel_farm-" in text and ".whl" in text, readme
        assert "uv build --wheel" in text, readme
    # nowhere an install from an index that has no wheel-farm
    for doc in [*(ROOT / "workers").glob("*/README.md"), *(ROOT / "docs").glob("workers-*.md"),
                *(ROOT / "workers").glob("*/*.ps1")]:
        assert "pip install wheel-farm" not in doc.read_text(), doc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into with --no-deps --target)."""
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    uv = Path(sys.executable).parent / "uv"
    build = subprocess.run([str(uv) if uv.exists() else "uv", "build", "--wheel", "--out-dir", str(out), str(ROOT)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel, = out.glob("wheel_farm-*.whl")
    target = tmp_path_factory.mktemp("target")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                          str(wheel)], capture_output=True, text=True, env=env, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return wheel, target


def test_the_wheel_holds_recipes_templates_migrations_and_the_sample(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (ROOT / "recipes").iterdir():
        if recipe.suffix in (".toml", ".json"):
            assert f"farm/recipes/builtin/{recipe.name}" in names, recipe.name
    for folder in ("web/templates", "web/static", "db/migrations/versions", "resources"):
        for file in (ROOT / "farm" / folder).iterdir():
            if file.is_file() and not file.name.endswith(".pyc"):
                assert f"farm/{folder}/{file.name}" in names, file
    for file in (ROOT / "farm" / "db" / "migrations").iterdir():  # env.py, script.py.mako
        if file.is_file():
            assert f"farm/db/migrations/{file.name}" in names, file


def test_recipe_check_from_the_installed_copy_lists_its_builtin_recipes(installed: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    _, target = installed
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PYTHONPATH=str(target), FARM_HOME=str(tmp_path / "home"))
    probe = subprocess.run([sys.executable, "-c", "import farm, farm.config as c; print(farm.__file__); "
                            "print(c.builtin_recipe_dir())"], capture_output=True, text=True, env=env, cwd=tmp_path)
    farm_file, builtin = probe.stdout.split()
    assert Path(farm_file).is_relative_to(target)  # the installed copy, not the checkout
    assert Path(builtin) == target / "farm" / "recipes" / "builtin"
    result = subprocess.run([sys.executable, "-m", "farm.cli", "recipe", "check"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = ", ".join(sorted(p.stem for p in (ROOT / "recipes").glob("*.toml")))
    assert f"{target / 'farm' / 'recipes' / 'builtin'} (built-in): {expected}\n" in result.stdout
    assert result.stdout.endswith("recipes ok\n")
    assert not (tmp_path / "home").exists()  # checking recipes creates no farm


def test_recipe_check_refuses_a_copy_without_builtin_recipes(installed: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    _, target = installed
    broken = tmp_path / "broken"
    shutil.copytree(target / "farm", broken / "farm")
    for recipe in (broken / "farm" / "recipes" / "builtin").glob("*.toml"):
        recipe.unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(PYTHONPATH=str(broken), FARM_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-m", "farm.cli", "recipe", "check"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    from farm.errors import RecipeError

    assert result.returncode == RecipeError.exit_code, result
    assert "no built-in recipe here" in result.stderr
