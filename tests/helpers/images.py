"""Image builds for the container tests: the Docker host (skipped without one), the build and verify
images built once per session, and running commands in them.

`build_image_result`/`verify_image_result` carry bullseye's own CPythons only (cp39, which every
container test uses, and cp27, offered only where a test asks: `container_env(python2=True)`); `pythons_images` carry one CPython compiled into them as well (TEST_PYTHON_SOURCES:
compiling one costs minutes, so the tests carry one where `farm image build` compiles three),
cached in ~/.cache/wheel-farm/pythons like any site's."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.images import default_ca_bundle
from farm.images.debootstrap import ImageResult, build_image, build_verify_image
from farm.images.pythons import PythonSource


CACHE = Path(os.environ.get("FARM_TEST_CACHE", Path.home() / ".cache" / "wheel-farm"))


SUITE = "bullseye"
TEST_PYTHON_SOURCES = (PythonSource(package="python3.13", suite="trixie"),)
PYTHONS_TAG = "wheel-farm/debian-bullseye-pythons"


def docker_host_or_skip() -> str:
    """The engine the Docker tests use, or a skip that says how to start it."""
    from farm.containers import docker_answers

    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        pytest.skip('DOCKER_HOST is not set: start the private engine with eval "$(scripts/docker-up.sh)"')
    reason = docker_answers(host)
    if reason:
        pytest.skip(f"the Docker engine does not answer: {reason}")
    return host


def image_builder_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (debootstrap, chroot)")
    for tool in ("debootstrap", "unshare", "tar"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/docker-up.sh installs debootstrap)")


class _Log(io.StringIO):
    """Keeps the image build's log for the failure report and echoes it for `pytest -s`."""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        return super().write(text)


def container_env(docker_host: str, build: ImageResult, verify: ImageResult, *,
                  platform: str = "linux-x86_64", python2: bool = False) -> dict[str, str]:
    """A farm's settings for the container path: the cibuildwheel engine on `docker_host`, `build` as
    the build image and `verify` as the verification image of `platform`, with the Pythons each
    carries; CPython 2.7 only with `python2` (bullseye's images carry it: a site that does not want
    cp27 jobs leaves it out of the images' `pythons` so, and the other tests' sdists build for Python 3)."""
    def offered(image: ImageResult) -> list[str]:
        return [p for p in image.pythons if python2 or p != "cp27"]

    return {
        "FARM_ENGINE": "cibuildwheel",
        "FARM_DOCKER_HOST": docker_host,
        "FARM_IMAGES": json.dumps({platform: [{"image": build.tag, "pythons": offered(build)}]}),
        "FARM_VERIFY_IMAGES": json.dumps({platform: [{"image": verify.tag, "pythons": offered(verify)}]}),
    }


@pytest.fixture(scope="module")
def docker_host() -> str:
    return docker_host_or_skip()


@pytest.fixture(scope="module")
def build_image_result(docker_host: str) -> ImageResult:
    image_builder_or_skip()
    return build_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                       docker_host=docker_host, python_sources=())


@pytest.fixture(scope="module")
def verify_image_result(docker_host: str) -> ImageResult:
    image_builder_or_skip()
    return build_verify_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                              docker_host=docker_host, python_sources=())


def pythons_image_pair(docker_host: str) -> tuple[ImageResult, ImageResult]:
    """The build and verification images with bullseye's cp39 and TEST_PYTHON_SOURCES compiled in."""
    image_builder_or_skip()
    kw = dict(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, docker_host=docker_host,
              python_sources=TEST_PYTHON_SOURCES, python2=False)  # 2.7 is tested with the plain images
    return (build_image(tag=f"{PYTHONS_TAG}:test", log=_Log(), **kw),  # type: ignore[arg-type]
            build_verify_image(tag=f"{PYTHONS_TAG}-verify:test", log=_Log(), **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pythons_images(docker_host: str) -> tuple[ImageResult, ImageResult]:
    return pythons_image_pair(docker_host)


@pytest.fixture(scope="module")
def client(docker_host: str) -> Iterator[object]:
    from farm.containers import docker_client

    c = docker_client(docker_host)
    yield c
    c.close()


def run_in(client, image: str, script: str, *, network: str = "none", user: str | None = None) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    from farm.containers import Container

    with Container(client, image, network=network, user=user) as box:  # type: ignore[arg-type]
        result = box.call(["sh", "-c", script], check=False, timeout=120)
    return result.exit_code, result.output
