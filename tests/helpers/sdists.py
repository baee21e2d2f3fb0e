"""Small projects and real sdists: made with `uv build --sdist`, or downloaded once from upstream."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.helpers.backends import C_SOURCE
from tests.helpers.env import CACHE, UPSTREAM, installer_env, uv_bin


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


