"""Container images the farm builds itself, without a registry: `farm image build`.

    farm image build --suite bullseye            # build image wheel-farm/debian-bullseye:latest
    farm image build --suite bullseye --verify   # clean verification image ...-verify:latest

`cli_build(args)` is what `farm image build` calls with its parsed arguments (`suite`, `tag`,
`verify`; the options of `add_arguments` when present): it builds, prints the digest on stdout and
returns the exit code. `image_build(...)` is the same as a function, `main(argv)` as a program.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from farm.images.debootstrap import (
    DEFAULT_MIRROR,
    ImageResult,
    build_image,
    build_verify_image,
    default_cache_dir,
    default_tag,
)

__all__ = ["ImageResult", "add_arguments", "build_image", "build_verify_image", "cli_build", "default_ca_bundle",
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
                arch: str | None = None) -> ImageResult:
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
                   rebuild=rebuild, arch=arch)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, help="Debian suite: bullseye (glibc 2.31, cp39), bookworm (2.36, cp311), ...")
    parser.add_argument("--tag", help="image name[:tag]; default wheel-farm/debian-SUITE[-verify]:latest")
    parser.add_argument("--verify", action="store_true", help="the clean verification image (no compiler)")
    parser.add_argument("--ca-bundle", type=Path, help="CA bundle copied into the image (default: the system's)")
    parser.add_argument("--cache-dir", type=Path, help="root file system cache (default ~/.cache/wheel-farm)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror for debootstrap")
    parser.add_argument("--index-url", help="package index the image's tools come from (default: upstream_index)")
    parser.add_argument("--arch", help="Debian architecture (arm64); another than the host's runs under QEMU "
                        "(scripts/install-qemu.sh)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when an up-to-date image exists")


def cli_build(args: argparse.Namespace) -> int:
    """`farm image build`: build from parsed arguments, print the image digest on stdout."""
    result = image_build(suite=args.suite, tag=getattr(args, "tag", None), verify=getattr(args, "verify", False),
                         ca_bundle=getattr(args, "ca_bundle", None), cache_dir=getattr(args, "cache_dir", None),
                         mirror=getattr(args, "mirror", None) or DEFAULT_MIRROR,
                         index_url=getattr(args, "index_url", None), rebuild=getattr(args, "rebuild", False),
                         arch=getattr(args, "arch", None))
    print(f"{result.tag} {result.digest} pythons={','.join(result.pythons)}", file=sys.stderr)
    print(result.digest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm image build", description="Build a container image from Debian.")
    add_arguments(parser)
    return cli_build(parser.parse_args(argv))
