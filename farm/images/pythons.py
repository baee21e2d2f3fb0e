"""CPythons compiled inside a suite's root file system, for images that carry more than the suite's own.

A source is a Debian source package of some suite (`python3.13/trixie`: its upstream tarball, the
`.orig.tar.xz`, fetched with `apt-get source --download-only` through a private apt configuration
whose only lines are `deb-src MIRROR SUITE main`) or any CPython source tarball a site provides. Debian's
patches are not applied: the result is a plain upstream CPython like manylinux's.

Each is compiled once in a chroot of the image's suite (`./configure --prefix=/opt/python/cpXY-cpXY`,
static, no PGO, no tests; `make -j$(nproc)`; `make altinstall`) and the install tree is cached as a
tarball keyed by the source's digest, the suite and the build script
(~/.cache/wheel-farm/pythons/SUITE-cpXY-KEY.tar). Build and verification images both unpack that
same tree, so a rebuild, a second image or the verification image reuses it. A source may also be
compiled as CPython's free-threaded build (`free_threaded`, `--free-threaded X.Y`: cp314t in
/opt/python/cp314-cp314t). With `--mirror` pointing
at a local mirror (sources included), fetching works offline; a site tarball needs nothing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from farm.errors import FarmError, InfrastructureFault
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.locks import host_lock
from farm.util.python_tags import PythonTag

# What configure needs for the standard library's C modules (ssl, ctypes, sqlite3, bz2, lzma, readline,
# curses, dbm, uuid) on top of the build image's compiler. The runtime libraries are those bullseye's
# own python3 already pulls in, so build and verification images need nothing more.
BUILD_DEPENDS = ["libssl-dev", "zlib1g-dev", "libffi-dev", "libbz2-dev", "liblzma-dev", "libsqlite3-dev",
                 "libreadline-dev", "uuid-dev", "libgdbm-dev", "libncurses-dev", "xz-utils", "pkg-config"]
# Modules a compiled CPython must import, or the build failed quietly (configure skips what it lacks).
REQUIRED_MODULES = ("ssl", "zlib", "ctypes", "sqlite3", "bz2", "lzma", "readline", "uuid", "hashlib")

# Run inside the chroot with /bin/sh. Receives PREFIX, VERSION (X.Y) and the source at /tmp/python-src.
_COMPILE = r"""
set -eu
export LC_ALL=C.UTF-8 HOME=/root
mkdir -p /tmp/python-build
tar -xf /tmp/python-src -C /tmp/python-build --strip-components=1
cd /tmp/python-build
./configure --prefix="$PREFIX" --with-ensurepip=install --disable-test-modules >/tmp/configure.log 2>&1 \
    || { tail -n 60 /tmp/configure.log; exit 1; }
make -j"${JOBS:-$(nproc)}" >/tmp/make.log 2>&1 || { tail -n 80 /tmp/make.log; exit 1; }
make altinstall COMPILEALL_OPTS=-j0 >/tmp/install.log 2>&1 || { tail -n 80 /tmp/install.log; exit 1; }
rm -rf "$PREFIX/lib/python$VERSION/test" "$PREFIX/share/man"
ln -sf "python$VERSION" "$PREFIX/bin/python3"
ln -sf "python$VERSION" "$PREFIX/bin/python"
ln -sf "pip$VERSION" "$PREFIX/bin/pip3"
ln -sf "pip$VERSION" "$PREFIX/bin/pip"
"$PREFIX/bin/python" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$VERSION'.split('.'))), sys.version"
"$PREFIX/bin/python" -c "import __MODULES__"
"$PREFIX/bin/python" -m pip --version
tar --numeric-owner -C / -cf /tmp/python-tree.tar "${PREFIX#/}"
""".replace("__MODULES__", ", ".join(REQUIRED_MODULES))

# The free-threaded build of a source (PEP 703, 3.13 and later): `--disable-gil`, its programs and its
# library folder named with the ABI flag (python3.14t, lib/python3.14t), installed as manylinux does
# (/opt/python/cp314-cp314t), with /opt/python/cp314t-cp314t beside it for what addresses an image's
# Pythons as /opt/python/TAG-TAG (the image setup script). Derived from _COMPILE rather than written into
# it, so that the cache keys of the GIL builds stay what they were.
_COMPILE_FREE_THREADED = _COMPILE.replace(
    './configure --prefix="$PREFIX"', './configure --prefix="$PREFIX" --disable-gil').replace(
    "python$VERSION", "python${VERSION}t").replace(
    '"$PREFIX/bin/python" -m pip --version\n',
    '"$PREFIX/bin/python" -m pip --version\n'
    '"$PREFIX/bin/python" -c "import sys; assert not sys._is_gil_enabled(), \'the GIL is enabled\'"\n'
    'link="${PREFIX%-*}t-${PREFIX##*-}"\n'  # /opt/python/cp314-cp314t -> /opt/python/cp314t-cp314t
    'ln -sfn "${PREFIX##*/}" "$link"\n').replace(
    'tar --numeric-owner -C / -cf /tmp/python-tree.tar "${PREFIX#/}"',
    'tar --numeric-owner -C / -cf /tmp/python-tree.tar "${PREFIX#/}" "${link#/}"')
assert _COMPILE_FREE_THREADED.count("--disable-gil") == 1 and "sys._is_gil_enabled" in _COMPILE_FREE_THREADED

_DEBIAN_SOURCE = re.compile(r"^(python[23]\.\d+)/([a-z-]+)$")


@dataclass(frozen=True)
class PythonSource:
    """A CPython source: a Debian source package of a suite, or a tarball file (one of the two)."""

    package: str = ""  # python3.13
    suite: str = ""  # trixie
    path: Path | None = None
    free_threaded: bool = False  # compiled with --disable-gil (cp314t), 3.13 and later

    @classmethod
    def parse(cls, text: str) -> PythonSource:
        """`python3.13/trixie` (a Debian source package), else the path of a CPython source tarball."""
        m = _DEBIAN_SOURCE.match(text.strip())
        if m:
            return cls(package=m.group(1), suite=m.group(2))
        path = Path(text).expanduser()
        if not path.is_file():
            raise FarmError(f"CPython source {text!r} is neither PACKAGE/SUITE (python3.13/trixie) nor a file")
        return cls(path=path.resolve())

    def __str__(self) -> str:
        name = str(self.path) if self.path else f"{self.package}/{self.suite}"
        return f"{name} (free-threaded)" if self.free_threaded else name

    def minor_version(self) -> str:
        """`3.13`: from the Debian package's name, or the tarball's Include/patchlevel.h."""
        if self.path is None:
            return self.package.removeprefix("python")
        return ".".join(source_version(self.path).split(".")[:2])


# What `farm image build --suite bullseye` compiles by default: Debian's current CPythons the suites'
# source lists reach. (No current suite has 3.10 or 3.12: a site adds them with --python-source FILE.)
# Other suites carry their own python3 only unless told (--debian-pythons).
DEFAULT_SOURCES = (PythonSource(package="python3.11", suite="bookworm"),
                   PythonSource(package="python3.13", suite="trixie"),
                   PythonSource(package="python3.14", suite="sid"))
SUITE_DEFAULTS: dict[str, tuple[PythonSource, ...]] = {"bullseye": DEFAULT_SOURCES}


def default_sources(suite: str) -> tuple[PythonSource, ...]:
    return SUITE_DEFAULTS.get(suite, ())


@dataclass(frozen=True)
class CompiledPython:
    tag: str  # cp313, cp314t
    version: str  # 3.13.5
    tree: Path  # tarball of /opt/python/cpXY-cpXY (cpXY-cpXYt)
    key: str  # source digest, suite and build script
    reused: bool = False


def source_tarball(source: PythonSource, *, cache_dir: Path, mirror: str, log: TextIO) -> Path:
    """The source tarball: the site's file, or the Debian source package's upstream tarball, kept in
    cache_dir/sources and downloaded only when no file there has the sha256 that the suite's signed
    Sources index names."""
    if source.path is not None:
        if not source.path.is_file():
            raise FarmError(f"CPython source {source.path} does not exist")
        return source.path
    # apt-get refuses a second process on the same lists ("Could not get lock"): image builds on this
    # host (a build and a verification image at once, or two sites' images) take turns.
    with host_lock(cache_dir / "apt" / "farm.lock"):
        return _debian_source_tarball(source, cache_dir=cache_dir, mirror=mirror, log=log)


def _debian_source_tarball(source: PythonSource, *, cache_dir: Path, mirror: str, log: TextIO) -> Path:
    apt = cache_dir / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    signed = f"[signed-by={keyring}] " if keyring.is_file() else ""
    sources = apt / f"{source.suite}.list"
    sources.write_text(f"deb-src {signed}{mirror} {source.suite} main\n")
    options = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent",
               f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
               "-oDir::State::status=/var/lib/dpkg/status", "-oAPT::Sandbox::User=root",
               "-oAcquire::Languages=none", "-oAPT::Get::Only-Source=true"]
    env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    wanted = f"{source.package}/{source.suite}"
    try:
        run(["apt-get", *options, "update"], env=env, log=log, timeout=900)
        uris = run(["apt-get", *options, "source", "--print-uris", wanted], env=env, timeout=300).output
    except (CommandFailed, FileNotFoundError) as exc:
        raise InfrastructureFault("image", f"the Debian source package {source} could not be found "
                                           f"on {mirror}: {exc}") from exc
    # 'URI' NAME SIZE SHA256:HEX, one line per file of the source package
    origs = [line.split()[1:] for line in uris.splitlines()
             if line.startswith("'") and ".orig.tar." in line and not line.split()[1].endswith(".asc")]
    if len(origs) != 1 or not origs[0][2].startswith("SHA256:"):
        raise InfrastructureFault("image", f"{source} has no single upstream tarball with a SHA256: {origs}")
    name, sha256 = origs[0][0], origs[0][2].removeprefix("SHA256:")
    target = _mkdir(cache_dir / "sources") / name
    if target.is_file() and _file_digest(target) == sha256:
        log.write(f"{source}: {target} (cached, sha256 as in the suite's Sources)\n")
        return target
    download = Path(tempfile.mkdtemp(prefix="python-source-", dir=_mkdir(cache_dir / "work")))
    try:
        try:
            run(["apt-get", *options, "source", "--download-only", wanted], env=env, log=log, timeout=1800,
                cwd=download)
        except (CommandFailed, FileNotFoundError) as exc:
            raise InfrastructureFault("image", f"the Debian source package {source} could not be fetched "
                                               f"from {mirror}: {exc}") from exc
        if _file_digest(download / name) != sha256:
            raise InfrastructureFault("image", f"{name}: its sha256 is not the one the suite's Sources index names")
        shutil.move(download / name, target)
        return target
    finally:
        shutil.rmtree(download, ignore_errors=True)


def source_version(tarball: Path) -> str:
    """X.Y.Z from the tarball's Include/patchlevel.h; FarmError when it is not a CPython source tree."""
    try:
        with tarfile.open(tarball) as tar:
            for member in tar:
                parts = member.name.split("/")
                if len(parts) == 3 and parts[1:] == ["Include", "patchlevel.h"] and member.isfile():
                    text = tar.extractfile(member).read().decode("ascii", "replace")  # type: ignore[union-attr]
                    break
            else:
                raise FarmError(f"{tarball.name} is not a CPython source tarball (no TOP/Include/patchlevel.h)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FarmError(f"{tarball.name} is not a readable tarball: {exc}") from exc
    fields = dict(re.findall(r"#define\s+(PY_(?:MAJOR|MINOR|MICRO)_VERSION)\s+(\d+)", text))
    if len(fields) != 3:
        raise FarmError(f"{tarball.name}: Include/patchlevel.h has no version")
    version = f"{fields['PY_MAJOR_VERSION']}.{fields['PY_MINOR_VERSION']}.{fields['PY_MICRO_VERSION']}"
    if fields["PY_MAJOR_VERSION"] != "3" or int(fields["PY_MINOR_VERSION"]) < 8:
        raise FarmError(f"{tarball.name}: CPython {version} is not supported (3.8 or later)")
    return version


def compiled_python(source: PythonSource, *, suite: str, cache_dir: Path, mirror: str, log: TextIO,
                    rootfs: Path | None = None, jobs: int | None = None) -> CompiledPython:
    """The install tree of `source` compiled for `suite`, from the cache or compiled now in a chroot of
    the suite's build root file system with BUILD_DEPENDS (`rootfs`: that tarball, made when None).
    `jobs`: make's parallel jobs (default the core count; more gets a larger share of a busy machine)."""
    tarball = source_tarball(source, cache_dir=cache_dir, mirror=mirror, log=log)
    version = source_version(tarball)
    major, minor = version.split(".")[:2]
    if source.free_threaded and (int(major), int(minor)) < (3, 13):
        raise FarmError(f"{source}: CPython {version} has no free-threaded build (3.13 or later)")
    python = PythonTag("cp", int(major), int(minor), threaded=source.free_threaded)
    tag, script = python.abi, _COMPILE_FREE_THREADED if source.free_threaded else _COMPILE
    digest = _file_digest(tarball)
    key = hashlib.sha256(f"{digest}\0{suite}\0{script}\0{' '.join(BUILD_DEPENDS)}".encode()).hexdigest()
    target = _mkdir(cache_dir / "pythons") / f"{suite}-{tag}-{key[:16]}.tar"
    if target.is_file():
        log.write(f"CPython {version} for {suite}: {target} (cached)\n")
        return CompiledPython(tag=tag, version=version, tree=target, key=key, reused=True)
    if rootfs is None:
        from farm.images.debootstrap import PACKAGES, rootfs_tarball

        rootfs = rootfs_tarball(suite=suite, packages=[*PACKAGES["build"], *BUILD_DEPENDS], cache_dir=cache_dir,
                                mirror=mirror, log=log)
    from farm.images.debootstrap import chroot_run, untar

    work = Path(tempfile.mkdtemp(prefix=f"python-{tag}-{suite}-", dir=_mkdir(cache_dir / "work")))
    try:
        root = work / "root"
        root.mkdir()
        untar(rootfs, root, log)
        shutil.copyfile(tarball, root / "tmp" / "python-src")
        log.write(f"compiling CPython {version} ({source}) for {suite} into /opt/python/{python.install_dir}\n")
        log.flush()
        env = {"PREFIX": f"/opt/python/{python.install_dir}", "VERSION": f"{major}.{minor}",
               **({"JOBS": str(jobs)} if jobs else {})}
        chroot_run(root, script, env=env,
                   log=log, what=f"compiling CPython {version} for {suite}")
        partial = target.with_name(target.name + f".{work.name}.partial")
        shutil.move(root / "tmp" / "python-tree.tar", partial)
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CompiledPython(tag=tag, version=version, tree=target, key=key)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
