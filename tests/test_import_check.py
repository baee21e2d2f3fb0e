"""The default import check: what a wheel's RECORD says it installs, not its `top_level.txt`.

The synthetic wheels cover the layouts (extension modules with each ABI suffix, namespace packages,
`.data/platlib`, private and test modules); the real one is a setuptools project whose extension is
declared top-level but built into its package (a custom `build_ext`), so that its `top_level.txt`
names a module that does not exist: built through a running farm with no recipe, it is verified by
importing its package, and the provenance says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest

from farm.util.wheel import top_level_modules
from tests.helpers.backends import C_SOURCE
from tests.helpers.env import UPSTREAM, free_port, installer_env, uv_bin
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_sdist


def _wheel(tmp: Path, files: dict[str, str], *, top_level: str | None = None, record: bool = True,
           unlisted: tuple[str, ...] = ()) -> Path:
    """A wheel with these files; RECORD lists them all (but `unlisted`, which are only in the zip)."""
    path = tmp / "demo-1.0-cp312-cp312-linux_x86_64.whl"
    info = "demo-1.0.dist-info"
    files = {**files, f"{info}/METADATA": "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\n"}
    if top_level is not None:
        files[f"{info}/top_level.txt"] = top_level
    rows = []
    for name, body in files.items():
        if name not in unlisted:
            digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(body)}")
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
        if record:
            zf.writestr(f"{info}/RECORD", "\n".join([*rows, f"{info}/RECORD,,"]) + "\n")
    return path


def test_packages_modules_and_extension_modules_with_their_abi_suffix_stripped(tmp_path: Path) -> None:
    w = _wheel(tmp_path, {
        "pkg/__init__.py": "", "pkg/_native.cpython-312-x86_64-linux-gnu.so": "",
        "single.py": "", "fast.cpython-312-x86_64-linux-gnu.so": "", "stable.abi3.so": "",
        "win.cp312-win_amd64.pyd": "", "legacy.so": "", "pypyext.pypy310-pp73-x86_64-linux-gnu.so": "",
        "libhelper.so": "",  # a shared library, not a module
        "demo.libs/libz-1234.so.1": "", "pkg/__pycache__/x.cpython-312.pyc": "", "share.txt": "",
    }, top_level="pkg\n_native\n")  # stale: _native lives in pkg
    assert top_level_modules(w) == ["fast", "legacy", "pkg", "pypyext", "single", "stable", "win"]


def test_record_decides_not_the_zip_listing_or_top_level_txt(tmp_path: Path) -> None:
    w = _wheel(tmp_path, {"real/__init__.py": "", "ghost/__init__.py": ""}, top_level="gone\n", unlisted=("ghost/__init__.py",))
    assert top_level_modules(w) == ["real"]
    without = tmp_path / "norecord"
    without.mkdir()
    assert top_level_modules(_wheel(without, {"real/__init__.py": ""}, record=False)) == ["real"]


def test_private_test_and_setup_modules_are_skipped_while_something_public_is_left(tmp_path: Path) -> None:
    w = _wheel(tmp_path, {
        "pkg/__init__.py": "", "_pkg_version.py": "", "_distutils_hack/__init__.py": "",
        "_speedups.cpython-312-x86_64-linux-gnu.so": "",  # compiled: loaded too, after the public ones
        "tests/__init__.py": "", "test_pkg.py": "", "pkg_tests/__init__.py": "", "examples/demo.py": "",
        "setup.py": "", "conftest.py": "", "__editable___demo_finder.py": "", "not-a-module.py": "",
    })
    assert top_level_modules(w) == ["pkg", "_speedups"]
    only_private = tmp_path / "private"
    only_private.mkdir()
    assert top_level_modules(_wheel(only_private, {"_only/__init__.py": "", "_other.py": ""})) == ["_only", "_other"]


def test_namespace_packages_import_what_they_hold(tmp_path: Path) -> None:
    w = _wheel(tmp_path, {
        "google/protobuf/__init__.py": "", "google/protobuf/_upb.abi3.so": "",
        "google/_upb/_message.abi3.so": "",  # private beside a public package: the extension is kept
        "azure/core/mgmt/__init__.py": "",  # nested namespaces
        "data/only.txt": "",  # no code: not a module at all
    })
    assert top_level_modules(w) == ["azure.core.mgmt", "google.protobuf"]


def test_data_purelib_and_platlib_install_into_site_packages(tmp_path: Path) -> None:
    w = _wheel(tmp_path, {"demo-1.0.data/platlib/plat/__init__.py": "", "demo-1.0.data/purelib/pure.py": "",
                          "demo-1.0.data/scripts/tool": "", "demo-1.0.data/headers/x.h": ""})
    assert top_level_modules(w) == ["plat", "pure"]


def _stale_project(root: Path, name: str) -> Path:
    """A setuptools project whose extension is declared as top-level `_native` but whose build_ext puts it
    into the package (as several real projects do): setuptools writes `_native` into top_level.txt."""
    mod = name.replace("-", "_")
    proj = root / name
    (proj / mod).mkdir(parents=True)
    (proj / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.1.0"

        [tool.setuptools]
        packages = ["{mod}"]
        """))
    (proj / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import Extension, setup
        from setuptools.command.build_ext import build_ext


        class into_package(build_ext):
            def get_ext_fullpath(self, ext_name):
                return super().get_ext_fullpath("{mod}." + ext_name)


        setup(ext_modules=[Extension("_native", ["{mod}/_native.c"])], cmdclass={{"build_ext": into_package}})
        """))
    (proj / mod / "_native.c").write_text(C_SOURCE)
    (proj / mod / "__init__.py").write_text("from ._native import add\n")
    return proj


@pytest.mark.slow
@pytest.mark.network
def test_real_wheel_with_a_stale_top_level_txt_is_verified_by_its_package(tmp_path: Path) -> None:
    name = "farmtest-stale-top"
    mod = name.replace("-", "_")
    proj = _stale_project(tmp_path, name)
    subprocess.run([uv_bin(), "build", "--wheel", "--no-config", "--out-dir", str(tmp_path / "w"), "--default-index",
                    UPSTREAM, str(proj)], env=installer_env(), check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "w").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        stale = zf.read(f"{mod}-0.1.0.dist-info/top_level.txt").decode().split()
        assert "_native" in stale and not any(n.startswith("_native") for n in zf.namelist())
    assert top_level_modules(wheel) == [mod]

    farm = Farm(tmp_path / "home", free_port())
    farm.env["FARM_RECIPES_DIRS"] = json.dumps([])
    farm.start()
    try:
        res = farm.farm("submit", "--wait", "--timeout", "900", str(make_sdist(proj, tmp_path / "dist")))
        assert res.returncode == 0, res.stdout + res.stderr + farm.farm("logs", "1").stdout[-4000:]
    finally:
        farm.stop()
    (built,) = (farm.home / "index/files" / name).glob("*.whl")
    statement = json.loads((built.parent / f"{built.name}.provenance.json").read_text())
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["imports"] == [mod]
