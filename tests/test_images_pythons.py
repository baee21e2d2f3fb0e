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
import json
import io
import re
import tarfile
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.images import add_arguments, python_sources
from farm.images.pythons import DEFAULT_SOURCES, PythonSource, compiled_python, source_version
from tests.helpers.concurrency import at_once
from tests.helpers.env import free_port
from tests.helpers.farms import Farm
from tests.helpers.images import (  # noqa: F401 - fixtures
    CACHE, SUITE, TEST_PYTHON_SOURCES, client, container_env, docker_host, pythons_images, run_in)
from tests.helpers.sdists import make_project, make_sdist


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


def test_free_threaded_builds_are_asked_for_by_version(tmp_path: Path) -> None:
    """`--free-threaded 3.14` compiles the 3.14 source a second time with --disable-gil (cp314t); a
    version no source has, or one before 3.13, is refused before anything is fetched or compiled."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    t314 = _source_tarball(tmp_path / "Python-3.14.2.tgz", "Python-3.14.2", _patchlevel(3, 14, 2)).resolve()
    t312 = _source_tarball(tmp_path / "Python-3.12.8.tgz", "Python-3.12.8", _patchlevel(3, 12, 8)).resolve()
    base = ["--suite", "bullseye", "--debian-pythons", "python3.13/trixie", "--python-source", str(t314)]
    chosen = python_sources(parser.parse_args([*base, "--free-threaded", "3.14t,3.13"]))
    assert chosen == [PythonSource(package="python3.13", suite="trixie"), PythonSource(path=t314),
                      PythonSource(path=t314, free_threaded=True),
                      PythonSource(package="python3.13", suite="trixie", free_threaded=True)]
    assert str(chosen[2]).endswith("Python-3.14.2.tgz (free-threaded)")
    with pytest.raises(FarmError, match="--free-threaded 3.12: no CPython source of that version"):
        python_sources(parser.parse_args([*base, "--free-threaded", "3.12"]))
    with pytest.raises(FarmError, match="3.12.8 has no free-threaded build"):
        compiled_python(PythonSource(path=t312, free_threaded=True), suite=SUITE, cache_dir=tmp_path / "cache",
                        mirror="http://unused", log=io.StringIO())
    assert not (tmp_path / "cache" / "rootfs").exists()


def test_the_free_threaded_compile_script_differs_from_the_gil_build_only_where_it_must() -> None:
    """The GIL builds keep their script (and so their cached trees); the free-threaded one configures
    --disable-gil, names python3.14t, checks that the GIL is off, and installs as manylinux does."""
    from farm.images.pythons import _COMPILE, _COMPILE_FREE_THREADED

    assert "--disable-gil" not in _COMPILE and "${VERSION}t" not in _COMPILE
    added = [line for line in _COMPILE_FREE_THREADED.splitlines() if line not in _COMPILE.splitlines()]
    assert any("--disable-gil" in line for line in added)
    assert any('ln -sf "python${VERSION}t" "$PREFIX/bin/python"' == line for line in added)
    assert any("sys._is_gil_enabled()" in line for line in added)
    assert added[-1].startswith("tar ") and added[-1].endswith('"${link#/}"')


def test_a_bad_site_tarball_fails_before_anything_is_compiled(tmp_path: Path) -> None:
    bad = _source_tarball(tmp_path / "bad.tgz", "bad-1.0", None)
    with pytest.raises(FarmError, match="not a CPython source tarball"):
        compiled_python(PythonSource(path=bad), suite=SUITE, cache_dir=tmp_path / "cache", mirror="http://unused",
                        log=io.StringIO())
    assert not (tmp_path / "cache" / "rootfs").exists()


# With Docker ---------------------------------------------------------------------------------------
@pytest.mark.network
def test_two_image_builds_fetch_a_debian_source_at_once(tmp_path: Path) -> None:
    """Found by a run where two image builds on one host met: apt-get refused the second one's
    `update` ('Could not get lock .../apt/lists/lock'), which failed its image. Two at once now take
    turns and both get the tarball, with the sha256 the suite's Sources index names."""
    import shutil

    from farm.images.debootstrap import DEFAULT_MIRROR
    from farm.images.pythons import source_tarball

    cache = tmp_path / "cache"
    for sub in ("apt/lists", "sources"):  # what this host already fetched (the test only needs the locking)
        if (CACHE / sub).is_dir():
            shutil.copytree(CACHE / sub, cache / sub, ignore=shutil.ignore_patterns("lock", "partial"))

    def fetch() -> Path:
        return source_tarball(TEST_PYTHON_SOURCES[0], cache_dir=cache, mirror=DEFAULT_MIRROR, log=io.StringIO())

    got, failed = at_once(fetch, 2, timeout=1800)
    assert not failed, failed
    assert len(got) == 2 and got[0] == got[1] and source_version(got[0]).startswith("3.13.")


@pytest.mark.docker
@pytest.mark.slow
def test_compiled_python_in_build_and_verify_images(pythons_images, client) -> None:  # type: ignore[no-untyped-def]
    build, verify = pythons_images
    assert build.pythons == verify.pythons == ["cp39", "cp313"]
    for result in (build, verify):
        labels = client.images.get(result.tag).attrs["Config"]["Labels"]
        assert labels["farm.pythons"] == "cp39,cp313" and labels["farm.suite"] == SUITE
    probe = ("set -e; ldd --version | head -1; /opt/python/cp313-cp313/bin/python -c "
             "'import sys, ssl, sqlite3, ctypes, lzma; print(sys.version_info[:2], sys.prefix)'; "
             "sha256sum /opt/python/cp313-cp313/bin/python3.13")
    digests = []
    for result in (build, verify):
        code, out = run_in(client, result.tag, probe, user="farm" if result is verify else None)
        assert code == 0, out
        assert "GLIBC 2.31" in out and "(3, 13) /opt/python/cp313-cp313" in out, out
        digests.append(re.search(r"^([0-9a-f]{64}) ", out, re.M).group(1))  # type: ignore[union-attr]
    assert digests[0] == digests[1]  # one compiled tree in both images
    code, out = run_in(client, verify.tag, "command -v gcc cc make", user="farm")
    assert code != 0, f"the verify image has a compiler: {out}"


@pytest.mark.docker
@pytest.mark.slow
def test_compiled_python_is_cached(pythons_images) -> None:  # type: ignore[no-untyped-def]
    log = io.StringIO()
    again = compiled_python(TEST_PYTHON_SOURCES[0], suite=SUITE, cache_dir=CACHE,
                            mirror="http://deb.debian.org/debian", log=log)
    assert again.reused and again.tag == "cp313" and again.tree.parent == CACHE / "pythons"
    assert "(cached)" in log.getvalue() and "compiling" not in log.getvalue()


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.network
def test_c_extension_built_for_each_image_python_and_imported_in_the_clean_image(  # type: ignore[no-untyped-def]
        pythons_images, client, docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    build, verify = pythons_images
    farm = Farm(tmp_path_factory.mktemp("image-pythons") / "home", free_port())
    farm.env.update(container_env(docker_host, build, verify))
    work = tmp_path_factory.mktemp("imagec")
    project = make_project(work, "imagepyc")
    sdist = make_sdist(project, work / "dist")
    farm.start()
    try:
        res = farm.farm("submit", "--wait", "--timeout", "1500", str(sdist))
        assert res.returncode == 0, res.stdout + res.stderr
        wheels = sorted(p.name for p in (farm.home / "index/files/imagepyc").glob("*.whl"))
        assert [w.split("-")[2] for w in wheels] == ["cp313", "cp39"], wheels
        for wheel in wheels:  # manylinux_2_31 or older: installs on any glibc 2.31 system
            platforms = wheel[:-len(".whl")].split("-")[-1].split(".")
            glibcs = [tuple(map(int, m.groups())) for p in platforms if (m := re.match(r"manylinux_(\d+)_(\d+)_", p))]
            assert glibcs and max(glibcs) <= (2, 31), wheel
        # Each Python of the clean image installs its wheel from the farm's index and imports it.
        script = "set -e; " + "; ".join(
            f"/opt/python/{t}-{t}/bin/python -m venv /tmp/{t} && /tmp/{t}/bin/python -m pip install -q "
            f"--index-url {farm.index_url} imagepyc && (cd /tmp && /tmp/{t}/bin/python -c "
            "'import sys, imagepyc; print(sys.version_info[:2], imagepyc.add(2, 3))')"
            for t in ("cp313",)) + "; python3 -m venv /tmp/cp39 && /tmp/cp39/bin/python -m pip install -q " \
            f"--index-url {farm.index_url} imagepyc && (cd /tmp && /tmp/cp39/bin/python -c " \
            "'import sys, imagepyc; print(sys.version_info[:2], imagepyc.add(2, 3))')"
        code, out = run_in(client, verify.tag, script, network="host", user="farm")
        assert code == 0, out
        assert "(3, 13) 5" in out and "(3, 9) 5" in out, out

        # A pure sdist: one job, its wheel verified in the clean image on the oldest and the newest
        # Python, each on its own interpreter (not twice on the image's python3, the oldest).
        pure = make_sdist(make_project(work, "imagepure", c_extension=False), work / "dist-pure")
        res = farm.farm("submit", "--wait", "--timeout", "900", str(pure))
        assert res.returncode == 0, res.stdout + res.stderr
        job = next(j for j in json.loads(farm.farm("status", "--json").stdout) if j["name"] == "imagepure")
        verifying = farm.farm("logs", str(job["id"])).stdout.split("===== verifying")[1]
        assert "for Python 3.9" in verifying and "for Python 3.13" in verifying, verifying
        assert "/opt/python/cp313-cp313/bin/python" in verifying.split("for Python 3.13")[1], verifying
    finally:
        farm.stop()
