"""Images made from Debian root file systems: the build image cibuildwheel uses, the clean verify image.

The Docker tests need the private engine (`eval "$(scripts/docker-up.sh)"`), root and debootstrap.
The first run makes the root file systems (about 60-80 s each, cached in ~/.cache/wheel-farm/rootfs);
later runs find the images up to date.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from farm.images import debootstrap, default_ca_bundle, default_tag, image_build, main
from farm.images.debootstrap import ImageResult, PACKAGES, build_image
from tests.helpers.images import (  # noqa: F401 - fixtures
    CACHE, SUITE, _Log, build_image_result, client, docker_host, run_in, verify_image_result)


# Without Docker ----------------------------------------------------------------------------------
def test_default_tags() -> None:
    assert default_tag("bullseye", "build") == "wheel-farm/debian-bullseye:latest"
    assert default_tag("bookworm", "verify") == "wheel-farm/debian-bookworm-verify:latest"


def test_renamed_libraries_by_suite() -> None:
    from farm.images.debootstrap import suite_packages

    assert "libglib2.0-0" in suite_packages(PACKAGES["verify"], "bullseye")
    assert "libglib2.0-0t64" in suite_packages(PACKAGES["verify"], "trixie")
    assert "libglib2.0-0" not in suite_packages(PACKAGES["verify"], "trixie")


def test_verify_image_has_no_compiler_or_dev_packages() -> None:
    assert {"gcc", "g++", "make", "libc6-dev", "python3-dev", "pkg-config"} <= set(PACKAGES["build"])
    assert not {p for p in PACKAGES["verify"] if p in ("gcc", "g++", "make") or p.endswith("-dev")}
    assert {"python3", "python3-venv"} <= set(PACKAGES["verify"])


def test_setup_script_ignores_host_pip_configuration() -> None:
    script = debootstrap._SETUP
    assert "PIP_CONFIG_FILE=/dev/null" in script and "unset PIP_FIND_LINKS" in script
    assert "/opt/python/cp39-cp39/bin/python" in script  # cibuildwheel's helper interpreter


def test_missing_ca_bundle_is_reported(tmp_path: Path) -> None:
    from farm.errors import FarmError

    with pytest.raises(FarmError, match="CA bundle"):
        build_image(suite=SUITE, ca_bundle=tmp_path / "none.crt", cache_dir=tmp_path, log=io.StringIO())


def test_cli_entry_reports_a_missing_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from farm.errors import InfrastructureFault

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("FARM_DOCKER_HOST", raising=False)
    monkeypatch.setenv("FARM_HOME", str(tmp_path))
    from farm.config import reset_settings

    reset_settings()
    try:
        with pytest.raises(InfrastructureFault, match="no Docker engine configured"):
            main(["--suite", SUITE, "--ca-bundle", str(default_ca_bundle()), "--cache-dir", str(tmp_path)])
    finally:
        reset_settings()
    # before fetching or compiling any of bullseye's default CPythons
    assert not {"apt", "sources", "pythons", "rootfs"} & {p.name for p in tmp_path.iterdir()}


# With Docker ---------------------------------------------------------------------------------------
@pytest.mark.docker
@pytest.mark.slow
def test_build_image_layout(build_image_result: ImageResult, client) -> None:  # type: ignore[no-untyped-def]
    result = build_image_result
    assert result.tag == "wheel-farm/debian-bullseye:latest"
    assert result.digest.startswith("sha256:")
    assert result.pythons == ["cp27", "cp39"]  # bullseye's own CPythons: 2.7 (for sdists that declare it) and 3.9
    labels = client.images.get(result.tag).attrs["Config"]["Labels"]
    assert labels["farm.pythons"] == "cp27,cp39" and labels["farm.suite"] == "bullseye"
    assert labels["farm.kind"] == "build" and labels["farm.family"] == "apt"
    code, out = run_in(client, result.tag, """
        set -e
        test -x /opt/python/cp39-cp39/bin/python
        /opt/python/cp39-cp39/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 9)'
        /opt/python/cp39-cp39/bin/python -m pip --version
        /opt/python/cp39-cp39/bin/python -m build --version
        auditwheel --version; patchelf --version; uv --version
        command -v which tar bash gcc make
        /opt/python/cp27-cp27/bin/python -c 'import sys; assert sys.version_info[:2] == (2, 7) and sys.maxunicode > 65535'
        test -e /usr/include/python2.7/Python.h
        test -s "$SSL_CERT_FILE" && test "$PIP_CERT" = "$SSL_CERT_FILE"
        ldd --version | head -1
    """)
    assert code == 0, out
    assert "auditwheel" in out and "uv " in out and "GLIBC 2.31" in out


@pytest.mark.docker
@pytest.mark.slow
def test_verify_image_is_clean(verify_image_result: ImageResult, client) -> None:  # type: ignore[no-untyped-def]
    result = verify_image_result
    assert result.tag == "wheel-farm/debian-bullseye-verify:latest"
    assert result.pythons == ["cp27", "cp39"]
    labels = client.images.get(result.tag).attrs["Config"]["Labels"]
    assert labels["farm.kind"] == "verify" and labels["farm.user"] == "farm"
    code, out = run_in(client, result.tag, "for t in gcc cc make auditwheel; do command -v $t && exit 1; done; "
                                           "test ! -e /usr/include/python3.9/Python.h; "
                                           "test ! -e /usr/include/python2.7/Python.h; "
                                           "/opt/python/cp27-cp27/bin/python -c 'import ssl, zlib'", user="farm")
    assert code == 0, f"the verify image has build tools: {out}"
    code, out = run_in(client, result.tag, "id -un && python3 -m venv /tmp/v && /tmp/v/bin/python -c 'import ssl'",
                       user="farm")
    assert code == 0 and out.startswith("farm"), out
    # The libraries auditwheel leaves out of a manylinux wheel (its policy's whitelist: every system is
    # assumed to have them) are there, so such a wheel imports; libGL is the known exception.
    import importlib.resources
    import json

    policies = json.loads((importlib.resources.files("auditwheel") / "policy" / "manylinux-policy.json").read_text())
    whitelist = next(p["lib_whitelist"] for p in policies if p["name"] == "manylinux_2_31")
    left_out = ("libGL.", "libnsl.")
    needed = sorted(lib for lib in whitelist if not lib.startswith(left_out))
    code, out = run_in(client, result.tag, "for l in " + " ".join(needed) + "; do ldconfig -p | grep -q \"$l \" || "
                       "echo missing $l; done", user="farm")
    assert code == 0 and "missing" not in out, out


@pytest.mark.docker
@pytest.mark.slow
def test_rebuild_is_skipped_when_inputs_are_unchanged(build_image_result: ImageResult, docker_host: str) -> None:
    log = io.StringIO()
    again = image_build(suite=SUITE, docker_host=docker_host, cache_dir=CACHE, index_url="https://pypi.org/simple",
                        log=log, python_sources=())
    assert again.reused and again.digest == build_image_result.digest, log.getvalue()
    assert "up to date" in log.getvalue()


@pytest.mark.docker
@pytest.mark.slow
def test_root_file_system_is_cached(build_image_result: ImageResult) -> None:
    def tarball(log: io.StringIO) -> Path:
        return debootstrap.rootfs_tarball(suite=SUITE, packages=PACKAGES["build"], cache_dir=CACHE,
                                          mirror=debootstrap.DEFAULT_MIRROR, log=log)

    first = tarball(_Log())  # made here only if the image was reused from an earlier cache
    log = io.StringIO()
    assert tarball(log) == first and first.is_file() and first.parent == CACHE / "rootfs"
    assert "(cached)" in log.getvalue() and "debootstrap" not in log.getvalue()
