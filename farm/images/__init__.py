"""Container images the farm builds itself, without a registry: `farm image build`.

    farm image build --suite bullseye            # build image wheel-farm/debian-bullseye:latest
    farm image build --suite bullseye --verify   # clean verification image ...-verify:latest
    farm image build --suite bullseye --python-source Python-3.12.8.tgz   # one more compiled CPython

Both carry the suite's python3, its CPython 2.7 where it has one (bullseye and older; `--no-python2`
leaves it out), and the CPythons compiled from `--debian-pythons` (for bullseye by
default python3.11/bookworm, python3.13/trixie, python3.14/sid; other suites none) and `--python-source`
tarballs (farm.images.pythons; each compiled once and cached).

`cli_build(args)` is what `farm image build` calls with its parsed arguments (`suite`, `tag`,
`verify`; the options of `add_arguments` when present): it builds, prints the digest on stdout and
returns the exit code. `image_build(...)` is the same as a function, `main(argv)` as a program.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from farm.errors import FarmError
from farm.util.emulation import emulated

from farm.images.debootstrap import (
    DEFAULT_MIRROR,
    ImageResult,
    build_image,
    build_verify_image,
    default_cache_dir,
    default_tag,
)
from farm.images.pythons import DEFAULT_SOURCES, PythonSource, default_sources

__all__ = ["DEFAULT_SOURCES", "ImageResult", "PythonSource", "add_arguments", "build_image", "build_verify_image", "cli_build", "default_ca_bundle",
           "default_tag", "image_build", "main"]


def default_ca_bundle() -> Path:
    """The CA bundle copied into images: $FARM_CA_BUNDLE, $SSL_CERT_FILE, the system's, or certifi's."""
    for var in ("FARM_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var) and Path(os.environ[var]).is_file():
            return Path(os.environ[var])
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(path).is_file():
            return Path(path)
    import certifi

    return Path(certifi.where())


def image_build(*, suite: str, tag: str | None = None, verify: bool = False, docker_host: str | None = None,
                ca_bundle: Path | None = None, cache_dir: Path | None = None, mirror: str = DEFAULT_MIRROR,
                index_url: str | None = None, rebuild: bool = False, log: TextIO | None = None,
                arch: str | None = None, python_sources: Sequence[PythonSource] | None = None,
                python2: bool | None = None) -> ImageResult:
    """Build (or find up to date) the build image, or with `verify` the verification image, of a suite.

    Defaults: docker_host and index_url from the farm's settings (`docker_host`, `upstream_index`),
    the CA bundle from `default_ca_bundle()`, the cache in ~/.cache/wheel-farm.
    """
    if docker_host is None or index_url is None:
        from farm.config import get_settings

        settings = get_settings()
        docker_host = settings.docker_host if docker_host is None else docker_host
        index_url = settings.upstream_index if index_url is None else index_url
    builder = build_verify_image if verify else build_image
    return builder(suite=suite, tag=tag, ca_bundle=ca_bundle or default_ca_bundle(),
                   cache_dir=cache_dir or default_cache_dir(), log=log or sys.stderr,
                   docker_host=docker_host or None, mirror=mirror, index_url=index_url.rstrip("/"),
                   rebuild=rebuild, arch=arch, python_sources=python_sources, python2=python2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, help="Debian suite: bullseye (glibc 2.31, cp39), bookworm (2.36, cp311), ...")
    parser.add_argument("--tag", help="image name[:tag]; default wheel-farm/debian-SUITE[-verify]:latest")
    parser.add_argument("--verify", action="store_true", help="the clean verification image (no compiler)")
    parser.add_argument("--ca-bundle", type=Path, help="CA bundle copied into the image (default: the system's)")
    parser.add_argument("--cache-dir", type=Path, help="root file system cache (default ~/.cache/wheel-farm)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for debootstrap and the CPython source packages (deb-src)")
    parser.add_argument("--index-url", help="package index the image's tools come from (default: upstream_index)")
    parser.add_argument("--arch", help="Debian architecture (arm64); another than the host's runs under QEMU "
                        "(scripts/install-qemu.sh)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when an up-to-date image exists")
    parser.add_argument("--debian-pythons", metavar="PKG/SUITE,...",
                        help="Debian source packages of the CPythons compiled into the image (bullseye's default: "
                             f"{','.join(map(str, DEFAULT_SOURCES))}; other suites: none; '' for none)")
    parser.add_argument("--python-source", action="append", default=[], type=Path, metavar="FILE",
                        help="a CPython source tarball (Python-3.12.8.tgz) compiled into the image too; repeatable")
    parser.add_argument("--free-threaded", metavar="X.Y,...", default="",
                        help="also compile the free-threaded build (PEP 703, cp314t in /opt/python/cp314-cp314t) "
                             "of these versions' sources (3.13 or later)")
    parser.add_argument("--python2", action=argparse.BooleanOptionalAction, default=None,
                        help="the suite's CPython 2.7 in /opt/python/cp27-cp27, for sdists that still declare it "
                             "(default: where the suite has it, bullseye and older, for the host's architecture)")


def python_sources(args: argparse.Namespace) -> list[PythonSource]:
    """The CPython sources `--debian-pythons` and `--python-source` name (FarmError for a bad one)."""
    debian = getattr(args, "debian_pythons", None)
    if debian is None:  # none compiled by default for another architecture (farm/images/arch.py)
        arch = getattr(args, "arch", None)
        debian = "" if arch and emulated(arch) else ",".join(map(str, default_sources(args.suite)))
    names = [n for n in debian.split(",") if n.strip()]
    sources = []
    for name in names:
        source = PythonSource.parse(name)
        if source.path is not None:
            raise FarmError(f"--debian-pythons takes PACKAGE/SUITE (python3.13/trixie), not {name!r}")
        sources.append(source)
    for path in getattr(args, "python_source", None) or []:
        if not Path(path).is_file():
            raise FarmError(f"--python-source {path}: no such file")
        sources.append(PythonSource(path=Path(path).resolve()))
    wanted = [v.strip().removesuffix("t") for v in (getattr(args, "free_threaded", None) or "").split(",") if v.strip()]
    threaded = []
    for version in wanted:
        matching = [s for s in sources if s.minor_version() == version]
        if not matching:
            raise FarmError(f"--free-threaded {version}: no CPython source of that version is compiled in "
                            f"(the sources: {', '.join(map(str, sources)) or 'none'})")
        threaded.append(replace(matching[0], free_threaded=True))
    return sources + threaded


def cli_build(args: argparse.Namespace) -> int:
    """`farm image build`: build from parsed arguments, print the image digest on stdout."""
    result = image_build(suite=args.suite, tag=getattr(args, "tag", None), verify=getattr(args, "verify", False),
                         ca_bundle=getattr(args, "ca_bundle", None), cache_dir=getattr(args, "cache_dir", None),
                         mirror=getattr(args, "mirror", None) or DEFAULT_MIRROR,
                         index_url=getattr(args, "index_url", None), rebuild=getattr(args, "rebuild", False),
                         arch=getattr(args, "arch", None), python_sources=python_sources(args),
                         python2=getattr(args, "python2", None))
    print(f"{result.tag} {result.digest} pythons={','.join(result.pythons)}", file=sys.stderr)
    print(result.digest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm image build", description="Build a container image from Debian.")
    add_arguments(parser)
    return cli_build(parser.parse_args(argv))
