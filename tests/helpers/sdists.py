"""Small projects and real sdists: made with `uv build --sdist`, or downloaded once from upstream."""

from __future__ import annotations

import io
import subprocess
import tarfile
import textwrap
import warnings
import zipfile
from pathlib import Path

from farm.util.archive import Limits
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


LIMITS = Limits(max_bytes=10 << 20, max_unpacked_bytes=1 << 20, max_members=100)


def pkg_info(name: str = "foo", version: str = "1.0", requires_python: str | None = ">=3.9") -> bytes:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    return ("\n".join(lines) + "\n\nA project.\n").encode()


PYPROJECT = b'[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'


def F(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), mode
    return ti, data


def D(name: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    return ti, None


def L(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti, None


def sdist_members(top: str = "foo-1.0", name: str = "foo", version: str = "1.0", *, meta: bytes | None = None):
    return [
        D(top),
        F(f"{top}/PKG-INFO", pkg_info(name, version) if meta is None else meta),
        F(f"{top}/pyproject.toml", PYPROJECT),
        D(f"{top}/src"),
        F(f"{top}/src/{name.lower()}.py", b"print('hello')\n"),
        F(f"{top}/run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        L(f"{top}/src/README", "../pyproject.toml"),
    ]


def write_tar(path: Path, members, *, fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def Z(name: str, data: bytes = b"x", *, mode: int | None = None) -> tuple[zipfile.ZipInfo, bytes]:
    zi = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        zi.create_system = 3
        zi.external_attr = mode << 16
    return zi, data


def write_zip(path: Path, members) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the hostile cases
        for zi, data in members:
            zf.writestr(zi, data)
    return path


def make_good(folder: Path, name: str = "good", version: str = "1.0", *, requires_python: str | None = ">=3.9") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    top = f"{name}-{version}"
    return write_tar(folder / f"{top}.tar.gz",
                     sdist_members(top, name, version, meta=pkg_info(name, version, requires_python)))


def cached_wheel(requirement: str, python_version: str = "3.9") -> Path:
    """One wheel (no dependencies) of `requirement` for `python_version`, downloaded once into
    ~/.cache/wheel-farm/wheels: a build requirement for an upstream index cut down to what a test needs."""
    import sys

    dest = CACHE / "wheels" / canonical_folder(requirement, python_version)
    found = sorted(dest.glob("*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "--python-version", python_version, "--index-url", UPSTREAM, "--dest", str(dest), requirement],
                       env=installer_env(), check=True, timeout=300)
        found = sorted(dest.glob("*.whl"))
    return found[-1]


def canonical_folder(*parts: str) -> str:
    return "-".join("".join(c if c.isalnum() or c in ".-" else "_" for c in p) for p in parts)


ABI3_SETUP = textwrap.dedent("""
    from setuptools import Extension, setup
    setup(ext_modules=[Extension("{mod}._native", ["{mod}/_native.c"], py_limited_api=True{macros})])
    """)

# Tagged abi3 for 3.9 but calls PyUnicode_AsUTF8AndSize, part of the limited API only from 3.10 (the
# macro Py_LIMITED_API is left out, or the header would hide it): what an abi3 audit must refuse.
OUTSIDE_LIMITED_API = C_SOURCE.replace("static PyMethodDef", textwrap.dedent("""
    static PyObject *size(PyObject *self, PyObject *arg) {
        Py_ssize_t n;
        if (PyUnicode_AsUTF8AndSize(arg, &n) == NULL) return NULL;
        return PyLong_FromSsize_t(n);
    }
    static PyMethodDef""")).replace('{"add", add, METH_VARARGS, "add two integers"},',
                                    '{"add", add, METH_VARARGS, "add two integers"}, {"size", size, METH_O, "utf-8 size"},')


def make_abi3_project(root: Path, name: str, *, outside_limited_api: bool = False) -> Path:
    """`make_project`'s C extension built for the limited API of 3.9 (`Py_LIMITED_API`, an abi3 wheel
    tagged cp39-abi3); `outside_limited_api`: tagged so, but using a function 3.9's limited API lacks."""
    project = make_project(root, name)
    mod = name.replace("-", "_")
    macros = "" if outside_limited_api else ', define_macros=[("Py_LIMITED_API", "0x03090000")]'
    (project / "setup.py").write_text(ABI3_SETUP.format(mod=mod, macros=macros))
    (project / "setup.cfg").write_text("[bdist_wheel]\npy_limited_api = cp39\n")
    if outside_limited_api:
        (project / mod / "_native.c").write_text(OUTSIDE_LIMITED_API)
    return project
