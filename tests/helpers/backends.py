"""Small projects with C extensions (or none) for each PEP 517 backend the farm must handle.

Every maker writes a project folder whose module `<import name>` exports add(a, b); the sdist is
then made by the backend itself (`uv build --sdist`), so what the farm receives is exactly what
that backend publishes. meson-python makes its sdists with `meson dist`, which needs a git
checkout, so its project is committed to a throwaway repository first.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

C_SOURCE = textwrap.dedent("""
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    static PyObject *add(PyObject *self, PyObject *args) {
        long a, b;
        if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
        return PyLong_FromLong(a + b);
    }
    static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "add two integers"}, {NULL, NULL, 0, NULL}};
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};
    PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
    """)

PURE_SOURCE = "def add(a, b):\n    return a + b\n"


def _project_table(name: str) -> str:
    return textwrap.dedent(f"""
        [project]
        name = "{name}"
        version = "0.1.0"
        description = "a test project"
        requires-python = ">=3.8"
        """)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip() if rel.endswith((".toml", ".build", ".txt", ".py")) else text)
    return root


def meson_python(root: Path, name: str) -> Path:
    mod = name.replace("-", "_")
    proj = _write(root / name, {
        "pyproject.toml": '[build-system]\nrequires = ["meson-python>=0.15"]\nbuild-backend = "mesonpy"\n'
                          + _project_table(name),
        "meson.build": f"""
            project('{name}', 'c', version: '0.1.0')
            py = import('python').find_installation(pure: false)
            py.extension_module('_native', 'src/{mod}/_native.c', install: true, subdir: '{mod}')
            py.install_sources('src/{mod}/__init__.py', subdir: '{mod}')
            """,
        f"src/{mod}/__init__.py": "from ._native import add\n",
        f"src/{mod}/_native.c": C_SOURCE,
    })
    git = ["git", "-c", "user.name=farm", "-c", "user.email=farm@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(proj)], check=True)
    subprocess.run([*git, "-C", str(proj), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(proj), "commit", "-q", "-m", "project"], check=True)
    return proj


def scikit_build_core(root: Path, name: str) -> Path:
    mod = name.replace("-", "_")
    return _write(root / name, {
        "pyproject.toml": '[build-system]\nrequires = ["scikit-build-core>=0.10"]\n'
                          'build-backend = "scikit_build_core.build"\n' + _project_table(name),
        "CMakeLists.txt": f"""
            cmake_minimum_required(VERSION 3.15...3.31)
            project(${{SKBUILD_PROJECT_NAME}} LANGUAGES C)
            find_package(Python COMPONENTS Interpreter Development.Module REQUIRED)
            Python_add_library(_native MODULE src/{mod}/_native.c WITH_SOABI)
            install(TARGETS _native DESTINATION {mod})
            """,
        f"src/{mod}/__init__.py": "from ._native import add\n",
        f"src/{mod}/_native.c": C_SOURCE,
    })


def setuptools_cython(root: Path, name: str) -> Path:
    mod = name.replace("-", "_")
    return _write(root / name, {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=64", "cython>=3"]\n'
                          'build-backend = "setuptools.build_meta"\n' + _project_table(name)
                          + f'\n[tool.setuptools]\npackages = ["{mod}"]\n',
        "setup.py": f"""
            from Cython.Build import cythonize
            from setuptools import Extension, setup
            setup(ext_modules=cythonize([Extension("{mod}._native", ["{mod}/_native.pyx"])]))
            """,
        "MANIFEST.in": f"include {mod}/*.pyx\n",
        f"{mod}/__init__.py": "from ._native import add\n",
        f"{mod}/_native.pyx": "def add(long a, long b):\n    return a + b\n",
    })


def legacy_setup_py(root: Path, name: str) -> Path:
    """No pyproject.toml at all: the PEP 517 fallback (setuptools' legacy backend) must build it."""
    mod = name.replace("-", "_")
    return _write(root / name, {
        "setup.py": f"""
            from setuptools import Extension, setup
            setup(name="{name}", version="0.1.0", packages=["{mod}"],
                  ext_modules=[Extension("{mod}._native", ["{mod}/_native.c"])])
            """,
        f"{mod}/__init__.py": "from ._native import add\n",
        f"{mod}/_native.c": C_SOURCE,
    })


def _pure(requires: str, backend: str, extra: str = "") -> Callable[[Path, str], Path]:
    def make(root: Path, name: str) -> Path:
        mod = name.replace("-", "_")
        return _write(root / name, {
            "pyproject.toml": f'[build-system]\nrequires = ["{requires}"]\nbuild-backend = "{backend}"\n'
                              + _project_table(name) + extra.format(mod=mod),
            f"src/{mod}/__init__.py": PURE_SOURCE,
        })

    return make


hatchling = _pure("hatchling>=1.18", "hatchling.build", '\n[tool.hatch.build.targets.wheel]\npackages = ["src/{mod}"]\n')
flit_core = _pure("flit_core>=3.9", "flit_core.buildapi")
pdm_backend = _pure("pdm-backend>=2.1", "pdm.backend")
poetry_core = _pure("poetry-core>=2.0", "poetry.core.masonry.api",
                    '\n[tool.poetry]\npackages = [{{ include = "{mod}", from = "src" }}]\n')

COMPILED = {"meson-python": meson_python, "scikit-build-core": scikit_build_core,
            "setuptools-cython": setuptools_cython, "legacy-setup-py": legacy_setup_py}
PURE = {"hatchling": hatchling, "flit-core": flit_core, "pdm-backend": pdm_backend, "poetry-core": poetry_core}
