"""The import check tells a module that loaded but needs a package its wheel does not declare from a
broken one (ruamel.yaml.clib: its only module, the extension `_ruamel_yaml`, imports `ruamel.yaml`,
the package that depends on it).

Real sdists (setuptools, a C extension, made by `uv build`) built into wheels and verified on the host
(a fresh venv from the farm's index, then the imports):

- an extension whose init imports a top-level package nobody declares: verified, with the warning
  in the outcome (and its record) and in the log;
- the same in the clean verification container (bullseye, cp39) for a Python module, where a module
  importing a declared but missing dependency still fails, and so does an import of a module the
  wheel does not have (its own name missing is never "undeclared");
- bad cases still failing: an extension with an undefined symbol (its shared object does not load);
  an extension that imports a package the wheel declares (under a marker false here, so it is not
  installed): a declared dependency missing is a failure, not a warning.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.images import docker_host, verify_image_result  # noqa: F401
from tests.helpers.env import UPSTREAM, installer_env, uv_bin
from tests.helpers.sdists import make_sdist

pytestmark = [pytest.mark.slow, pytest.mark.network]

INIT = """
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    %(extern)s
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "%(mod)s", NULL, -1, NULL};
    PyMODINIT_FUNC PyInit_%(mod)s(void) {
        %(body)s
        return PyModule_Create(&module);
    }
    """
IMPORTS = 'PyObject *m = PyImport_ImportModule("%s"); if (m == NULL) return NULL; Py_DECREF(m);'


def _wheel(tmp: Path, name: str, mod: str, *, body: str = "", extern: str = "",
           dependencies: tuple[str, ...] = (), pure: str | None = None) -> Path:
    """A real wheel built from a real sdist: project `name`, whose only module is extension `mod` (or
    the Python module `mod` with source `pure`)."""
    proj = tmp / name
    proj.mkdir()
    deps = ", ".join(f"'{d}'" for d in dependencies)
    (proj / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.1.0"
        dependencies = [{deps}]

        [tool.setuptools]
        py-modules = [{f"'{mod}'" if pure is not None else ""}]
        """))
    if pure is not None:
        (proj / f"{mod}.py").write_text(pure)
    else:
        (proj / "setup.py").write_text(f"from setuptools import Extension, setup\n"
                                       f"setup(ext_modules=[Extension('{mod}', ['{mod}.c'])])\n")
        (proj / f"{mod}.c").write_text(textwrap.dedent(INIT % {"mod": mod, "body": body, "extern": extern}))
        (proj / "MANIFEST.in").write_text(f"include {mod}.c\n")
    sdist = make_sdist(proj, tmp / f"{name}-sdist")
    out = tmp / f"{name}-wheel"
    subprocess.run([uv_bin(), "build", "--wheel", "--no-config", "--out-dir", str(out), "--default-index", UPSTREAM,
                    str(sdist)], env=installer_env(), check=True, capture_output=True, timeout=600)
    return next(out.glob("*.whl"))


def _verify(tmp: Path, wheel: Path):  # type: ignore[no-untyped-def]
    from farm.config import Settings
    from farm.recipes.schema import Options
    from farm.worker import verify
    from farm.worker.platforms.base import Interpreter
    from farm.worker.sandbox import Unsandboxed, job_limits

    index = tmp / "index" / "simple"
    index.mkdir(parents=True, exist_ok=True)
    interp = Interpreter(tag=f"cp{sys.version_info[0]}{sys.version_info[1]}", path=Path(sys.executable),
                         version=sys.version_info[:2])
    log = io.StringIO()
    outcome = verify.verify_on_host(wheel=wheel, interp=interp, index_url=index.as_uri(), options=Options(),
                                    project=None, work=tmp / f"work-{wheel.name}", log=log, timeout=120,
                                    sandbox=Unsandboxed(), limits=job_limits(Settings(), Options()))
    return outcome, log.getvalue()


def test_an_extension_that_imports_an_undeclared_package_is_verified_with_a_warning(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "farmtest-clib", "_farmtest_clib", body=IMPORTS % "farmtest_parent.yaml")
    outcome, log = _verify(tmp_path, wheel)
    assert outcome.imports == ["_farmtest_clib"]
    assert "No module named 'farmtest_parent'" in log  # the plain import failed first
    warning = "_farmtest_clib loaded; it needs farmtest_parent, which the wheel does not declare"
    assert outcome.passed, outcome.detail
    assert outcome.warnings == [warning] and outcome.record()["warnings"] == [warning]
    assert f"warning: {warning}" in log


def test_an_extension_with_an_undefined_symbol_still_fails(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "farmtest-undef", "_farmtest_undef", extern="extern int farmtest_nowhere(void);",
                   body="if (farmtest_nowhere() < 0) return NULL;")
    outcome, log = _verify(tmp_path, wheel)
    assert not outcome.passed and outcome.warnings == []
    assert "undefined symbol: farmtest_nowhere" in outcome.detail


def test_an_extension_that_imports_a_declared_but_missing_dependency_still_fails(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path, "farmtest-decl", "_farmtest_decl", body=IMPORTS % "farmtest_absent",
                   dependencies=('farmtest-absent; python_version < "3"',))
    outcome, log = _verify(tmp_path, wheel)
    assert not outcome.passed and outcome.warnings == []
    assert "No module named 'farmtest_absent'" in outcome.detail


@pytest.mark.docker
def test_in_the_container_an_undeclared_import_warns_and_a_declared_missing_one_fails(  # type: ignore[no-untyped-def]
        tmp_path: Path, verify_image_result, docker_host: str) -> None:  # noqa: F811
    from farm.util.wheel import top_level_modules
    from farm.worker.verify_container import verify_in_container

    undeclared = _wheel(tmp_path, "farmtest-pureclib", "_farmtest_pureclib", pure="import farmtest_parent.yaml\n")
    declared = _wheel(tmp_path, "farmtest-puredecl", "_farmtest_puredecl", pure="import farmtest_absent\n",
                      dependencies=('farmtest-absent; python_version < "3"',))
    results = {}
    for wheel, imports in ((undeclared, top_level_modules(undeclared)), (declared, top_level_modules(declared)),
                           (undeclared, ["farmtest_pureclib"])):  # a module the wheel does not have
        log = io.StringIO()
        results[imports[0]] = (verify_in_container(wheel=wheel, dependency_wheels=[], image=verify_image_result.tag,
                                                   requires=[], imports=imports, test_command=None, project=None,
                                                   log=log, timeout=300, docker_host=docker_host), log)
    assert set(results) == {"_farmtest_pureclib", "_farmtest_puredecl", "farmtest_pureclib"}
    res, log = results["_farmtest_pureclib"]
    warning = "_farmtest_pureclib loaded; it needs farmtest_parent, which the wheel does not declare"
    assert res.passed and res.warnings == [warning], res.output
    assert f"warning: {warning}" in log.getvalue()
    res, log = results["_farmtest_puredecl"]
    assert not res.passed and res.warnings == []
    assert "No module named 'farmtest_absent'" in res.output
    res, log = results["farmtest_pureclib"]
    assert not res.passed and res.warnings == []
    assert "No module named 'farmtest_pureclib'" in res.output
