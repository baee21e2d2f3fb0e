"""CPythons compiled into the images (farm.images.pythons): bullseye's cp39 plus CPythons compiled in a
bullseye chroot from Debian's source packages (or a site's tarball), the same cached install tree in
the build and the verification image, and a C-extension sdist built for each through the farm's
container engine, tagged manylinux_2_31 or older, then installed and imported by each in the clean image.

Bad inputs covered without Docker: a source that is neither PACKAGE/SUITE nor a file, a tarball that is
not a CPython source tree (no patchlevel.h, not a tarball at all, CPython 2.7), --debian-pythons given a
path, a missing --python-source file.
The Docker tests compile one CPython (TEST_PYTHON_SOURCES) once; later runs find it in
~/.cache/wheel-farm/pythons.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.images import add_arguments, python_sources
from farm.images.pythons import DEFAULT_SOURCES, PythonSource, compiled_python, source_version
from tests.helpers.images import SUITE


def _source_tarball(path: Path, top: str, patchlevel: str | None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        members = {f"{top}/configure": b"#!/bin/sh\n"}
        if patchlevel is not None:
            members[f"{top}/Include/patchlevel.h"] = patchlevel.encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _patchlevel(major: int, minor: int, micro: int) -> str:
    return (f"#define PY_MAJOR_VERSION\t\t{major}\n#define PY_MINOR_VERSION\t\t{minor}\n"
            f"#define PY_MICRO_VERSION\t\t{micro}\n#define PY_VERSION \"{major}.{minor}.{micro}\"\n")


# Without Docker ----------------------------------------------------------------------------------
def test_sources_are_debian_packages_or_files(tmp_path: Path) -> None:
    assert PythonSource.parse("python3.13/trixie") == PythonSource(package="python3.13", suite="trixie")
    tarball = _source_tarball(tmp_path / "Python-3.12.8.tgz", "Python-3.12.8", _patchlevel(3, 12, 8))
    assert PythonSource.parse(str(tarball)) == PythonSource(path=tarball)
    with pytest.raises(FarmError, match="neither PACKAGE/SUITE"):
        PythonSource.parse("python3.13")  # no suite, and no such file
    with pytest.raises(FarmError, match="neither PACKAGE/SUITE"):
        PythonSource.parse(str(tmp_path / "missing.tgz"))
    # bookworm's 3.11, trixie's 3.13, sid's 3.14 by default
    assert [str(s) for s in DEFAULT_SOURCES] == ["python3.11/bookworm", "python3.13/trixie", "python3.14/sid"]


def test_source_version_reads_patchlevel_and_rejects_what_is_not_cpython3(tmp_path: Path) -> None:
    good = _source_tarball(tmp_path / "good.tgz", "Python-3.12.8", _patchlevel(3, 12, 8))
    assert source_version(good) == "3.12.8"
    with pytest.raises(FarmError, match="not a CPython source tarball"):
        source_version(_source_tarball(tmp_path / "other.tgz", "other-1.0", None))
    with pytest.raises(FarmError, match="not supported"):
        source_version(_source_tarball(tmp_path / "py27.tgz", "Python-2.7.18", _patchlevel(2, 7, 18)))
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(FarmError, match="not a readable tarball"):
        source_version(junk)


def test_cli_options_name_the_sources(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    tarball = _source_tarball(tmp_path / "Python-3.10.16.tgz", "Python-3.10.16", _patchlevel(3, 10, 16))
    default = python_sources(parser.parse_args(["--suite", "bullseye"]))
    assert default == list(DEFAULT_SOURCES)
    assert python_sources(parser.parse_args(["--suite", "bookworm"])) == []  # its own cp311 only
    chosen = python_sources(parser.parse_args(["--suite", "bullseye", "--debian-pythons", "python3.13/trixie",
                                               "--python-source", str(tarball)]))
    assert chosen == [PythonSource(package="python3.13", suite="trixie"), PythonSource(path=tarball.resolve())]
    assert python_sources(parser.parse_args(["--suite", "bullseye", "--debian-pythons", ""])) == []
    with pytest.raises(FarmError, match="takes PACKAGE/SUITE"):
        python_sources(parser.parse_args(["--suite", "bullseye", "--debian-pythons", str(tarball)]))
    with pytest.raises(FarmError, match="no such file"):
        python_sources(parser.parse_args(["--suite", "bullseye", "--python-source", str(tmp_path / "nope.tgz")]))


def test_a_bad_site_tarball_fails_before_anything_is_compiled(tmp_path: Path) -> None:
    bad = _source_tarball(tmp_path / "bad.tgz", "bad-1.0", None)
    with pytest.raises(FarmError, match="not a CPython source tarball"):
        compiled_python(PythonSource(path=bad), suite=SUITE, cache_dir=tmp_path / "cache", mirror="http://unused",
                        log=io.StringIO())
    assert not (tmp_path / "cache" / "rootfs").exists()
