"""The wheels a container build installs, prepared by the farm so that the build container has no network.

1. On the worker host, no package code: the declared `[build-system] requires` (after the recipe's
   `build-requires`) are resolved for the target (its Python version, markers and manylinux or
   musllinux tags: `uv pip compile --only-binary :all: --python-version --python-platform`) and
   downloaded as wheels (`pip download --only-binary :all: --no-deps` with the target's tags), from
   the job's upstream index with the host's pip/uv configuration removed.
2. Package code, in a short-lived container of the build image (no network, no capabilities,
   memory and process limits, uid 65534), only when the offline build misses a requirement (most
   backends add nothing): a venv from the image's interpreter gets the wheels of 1 installed
   offline, then `get_requires_for_build_wheel` runs (pyproject_hooks' `_in_process.py`, driven by
   pypa/build's `ProjectBuilder`); what it adds (cmake, ninja, wheel...) is downloaded as in 1 and
   the build runs again. The answer is remembered per sdist, image, recipe and front end.

The folder (`WHEELS_IN_CONTAINER`) is mounted read-only into the build container and is the only
place its front end installs from. A requirement without a wheel for the target fails the job.

Sharing: the jobs of a matrix ask for the same build requirements, often for the same target (a pure
`setuptools` for every Python). A resolution and its wheels are kept on the worker host
(`FARM_HOME/cache/build-wheels`, keyed by the requirements, the target, the index and the as-of date)
and reused by later jobs for `build_wheels_shared_seconds`; a job that finds another resolving the
same key waits for it instead of resolving too. Another target (the next Python) resolves for itself,
but a pinned wheel this host already downloaded from the same index that fits the target (a pure
`setuptools`) is taken from `cache/build-wheels/files` instead of downloaded again. Each job gets its
own copy (no link into the shared folder), each file's sha256 checked. `prune` keeps the folder from
growing: once an hour a job removes the resolutions past their window and the stored wheels no job
took for 30 days.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from farm.containers import Container, ContainerCommandFailed, Limits
from farm.errors import InfrastructureFault, PackageFailure
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.locks import host_lock
from farm.util.python_tags import PythonTag
from farm.worker import build_requires
from farm.worker.build_requires import checked
from farm.worker.engines.base import BuildContext
from farm.worker.platforms.linux import LinuxPlatform, container_platform, parse_libc

WHEELS_IN_CONTAINER = "/farm/build-wheels"
NO_WHEEL = "the build requirements cannot be installed from the index as wheels"
NOBODY = "65534:65534"
_BOX = "/tmp/farm"
_ENV = f"{_BOX}/env"
_SRC = f"{_BOX}/src"
_HOOKS = f"{_BOX}/hooks"
# Output of a resolver or installer that says the requirement itself is the problem (else: the index or network).
_PACKAGE_SIDE = ("No solution found", "no usable wheels", "not found in the package registry", "Failed to parse",
                 "No matching distribution", "Could not find a version", "is not a valid", "Invalid requirement")


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where the build requirements are installed: an interpreter of the image and its platform tags."""

    python: str  # "3.9"
    implementation: str  # "cp"
    abi: str | None  # "cp39", "cp313t"; None: pip's default for the version
    platforms: tuple[str, ...]  # pip's --platform values, best first
    resolver: str | None  # uv's --python-platform; None: no uv target for this architecture

    def describe(self) -> str:
        return f"{self.abi or self.implementation + self.python} {self.platforms[0]}"

    @property
    def abis(self) -> list[str]:
        """The ABIs its wheels may have (pip's `--abi`): its own, abi3 (not on a free-threaded build,
        PEP 703), none; nothing when `abi` is None (pip's default)."""
        if not self.abi:
            return []
        return [self.abi, "none"] if self.abi.endswith("t") else [self.abi, "abi3", "none"]


@dataclass(kw_only=True)
class Wheelhouse:
    path: Path
    declared: list[str]
    dynamic: list[str] = field(default_factory=list)
    target: Target | None = None
    probed: bool = False  # the backend's hook was asked (or its answer was known)
    as_of: build_requires.AsOf | None = None  # resolved as of this time (the sdist's release)
    seconds: float = 0.0

    @property
    def wheels(self) -> list[str]:
        return sorted(p.name for p in self.path.glob("*.whl"))

    @property
    def pins(self) -> list[str]:
        """What the build environment is made of, `name==version` (read from the wheels' file names)."""
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        out = set()
        for filename in self.wheels:
            try:
                name, version, _, _ = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            out.add(f"{name}=={version}")
        return sorted(out)

    def constraints(self, dest: Path) -> Path:
        """A constraints file pinning every project to the version this wheelhouse holds (what the
        build installs offline): the versions cibuildwheel is given, in place of its own pins."""
        dest.write_text("".join(f"{pin}\n" for pin in self.pins))
        return dest


def target(python_tag: str, platform: LinuxPlatform, libc: tuple[str, int, int]) -> Target:
    """The target of `cp39` on `linux-x86_64` in an image with `("glibc", 2, 31)` (or `("musl", 1, 2)`)."""
    tag = PythonTag.parse(python_tag)
    if tag is None or tag.implementation not in ("cp", "pp"):
        raise InfrastructureFault("build", f"cannot tell the Python version of {python_tag!r}")
    platforms, resolver = platform.image_wheel_platforms(libc)
    abi = tag.abi if tag.implementation == "cp" else None
    return Target(python=tag.dotted, implementation=tag.implementation, abi=abi, platforms=platforms, resolver=resolver)


_LIBC: dict[str, tuple[str, int, int]] = {}


# Step 1: resolve and download, on the host ------------------------------------------------------
def download(ctx: BuildContext, requirements: Sequence[str], dest: Path, t: Target, *, name: str,
             as_of: build_requires.AsOf | None = None) -> list[str]:
    """Download `requirements` and their dependencies for `t` into `dest` as wheels; return the pins.
    With `as_of`, only what the index had then (uv's `--exclude-newer`, pip's `--uploaded-prior-to`).
    A resolution of the same requirements for the same target made on this host within
    `build_wheels_shared_seconds` is reused (module docstring, Sharing)."""
    reqs = list(requirements)
    if not reqs:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    window = ctx.settings.build_wheels_shared_seconds
    shared = ctx.settings.home / "cache" / "build-wheels"
    prune(shared, window)
    if window <= 0:
        return _resolve(ctx, reqs, dest, t, name=name, as_of=as_of)
    entry = shared / _share_key(ctx, reqs, t, as_of)
    with host_lock(entry.with_name(entry.name + ".lock")):
        pins = _reuse(entry, dest, window, log=ctx.log)
        if pins is None:
            pins = _resolve(ctx, reqs, dest, t, name=name, as_of=as_of)
            _keep(entry, dest, pins)
    return pins


STORE_UNUSED_SECONDS = 30 * 86400  # a downloaded wheel no job took for this long leaves the store
PRUNE_EVERY = 3600.0
_KEY = re.compile(r"[0-9a-f]{32}")


def prune(shared: Path, window: float, *, now: float | None = None) -> list[Path]:
    """Remove from the host's shared build requirements what no later job can use, at most once per
    PRUNE_EVERY: resolutions older than `window` (never reused again) with their lock files, unless a
    job holds the lock; stored wheels no job took for STORE_UNUSED_SECONDS (a job that takes one
    touches it); partial copies a crashed job left. What was removed; nothing on an error (sharing is
    an optimisation, its upkeep must not fail a build)."""
    import fcntl

    now = time.time() if now is None else now
    stamp = shared / ".pruned"
    removed: list[Path] = []
    try:
        if now - stamp.stat().st_mtime < PRUNE_EVERY:
            return removed
    except FileNotFoundError:
        pass
    try:
        shared.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        os.utime(stamp, (now, now))
        for path in shared.iterdir():
            key, _, partial = path.name.partition(".")
            if not (path.is_dir() and _KEY.fullmatch(key)):
                continue
            if partial:  # a resolution a crashed job was sharing (_keep)
                if now - path.stat().st_mtime > 86400:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
                continue
            try:
                made = float(json.loads((path / "resolution.json").read_text())["made"])
            except (OSError, ValueError, KeyError, TypeError):
                made = path.stat().st_mtime
            if now - made < max(window, 0) + PRUNE_EVERY:
                continue
            lock = path.with_name(path.name + ".lock")
            with open(lock, "a+b") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a job is resolving or reusing this key now
                    continue
                shutil.rmtree(path, ignore_errors=True)
                lock.unlink(missing_ok=True)
                removed.append(path)
        for path in (shared / "files").glob("*/*"):
            unused = now - path.stat().st_mtime
            if (path.suffix == ".whl" and unused > STORE_UNUSED_SECONDS) or \
                    (path.name.endswith(".partial") and unused > 86400):
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".sha256").unlink(missing_ok=True)
                removed.append(path)
    except OSError:
        pass
    return removed


def _share_key(ctx: BuildContext, reqs: Sequence[str], t: Target, as_of: build_requires.AsOf | None) -> str:
    inputs = {"requirements": sorted(reqs), "target": [t.python, t.implementation, t.abi, list(t.platforms), t.resolver],
              "index": ctx.spec.upstream_index, "as_of": as_of.exclude_newer if as_of else None, "format": 1}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def _reuse(entry: Path, dest: Path, window: float, *, log: TextIO) -> list[str] | None:
    """The pins of a shared resolution younger than `window`, its wheels copied into `dest`; None when
    there is none (or it is stale, or a file of it no longer has its digest: then it is dropped)."""
    try:
        record = json.loads((entry / "resolution.json").read_text())
    except (OSError, ValueError):
        return None
    age = time.time() - float(record.get("made", 0))
    if not 0 <= age < window:
        return None
    from farm.util.hashing import sha256_file

    copied = []
    for filename, digest in record["files"].items():
        target = dest / filename
        shutil.copyfile(entry / filename, target)
        if sha256_file(target) != digest:
            log.write(f"shared build requirement {filename} changed on disk: resolving again\n")
            shutil.rmtree(entry, ignore_errors=True)
            for path in copied:
                path.unlink(missing_ok=True)
            return None
        copied.append(target)
    log.write(f"build requirements resolved {age:.0f} s ago on this host for the same target, reused: "
              f"{', '.join(record['pins'])}\n")
    return list(record["pins"])


def _keep(entry: Path, dest: Path, pins: list[str]) -> None:
    """Share what `dest` now holds (the whole resolution) under `entry`, replacing an older one."""
    from farm.util.hashing import sha256_file

    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        files = {}
        for wheel in sorted(dest.glob("*.whl")):
            shutil.copyfile(wheel, tmp / wheel.name)
            files[wheel.name] = sha256_file(tmp / wheel.name)
        (tmp / "resolution.json").write_text(json.dumps({"pins": pins, "files": files, "made": time.time()}))
        shutil.rmtree(entry, ignore_errors=True)
        tmp.rename(entry)
    except OSError:  # sharing is an optimisation: a full disk here must not fail the build
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve(ctx: BuildContext, reqs: list[str], dest: Path, t: Target, *, name: str,
             as_of: build_requires.AsOf | None) -> list[str]:
    env = clean_env({"UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv")),
                     "UV_PYTHON_DOWNLOADS": "never"})
    index = ctx.spec.upstream_index
    if t.resolver:
        source, pinned = ctx.work / f"{name}.in", ctx.work / f"{name}.txt"
        source.write_text("".join(f"{r}\n" for r in reqs))
        from farm.worker.engines.native import uv_bin

        # --python: uv needs no interpreter of the target's version (it builds nothing), so it looks for none.
        _run(ctx, [uv_bin(), "pip", "compile", "--quiet", "--no-config", "--no-header", "--no-annotate",
                   "--only-binary", ":all:", "--python", sys.executable, "--python-version", t.python,
                   "--python-platform", t.resolver, *(["--exclude-newer", as_of.exclude_newer] if as_of else []),
                   "--index-url", index, "--output-file", pinned, source], env=env, t=t)
        pins = [line.strip() for line in pinned.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "-"))]
    else:  # no uv target: pip resolves, with the markers of the host's interpreter
        ctx.log.write(f"no resolver target for {t.describe()}: pip resolves with this host's markers\n")
        pins = reqs
    store = _file_store(ctx) if t.resolver and ctx.settings.build_wheels_shared_seconds > 0 else None
    stored = _from_store(store, pins, t, dest) if store else []
    if stored:
        ctx.log.write(f"already on this host (downloaded for another job): {', '.join(stored)}\n")
    missing = [pin for pin in pins if pin not in stored]
    if missing:
        before = {p.name for p in dest.glob("*.whl")}
        _run(ctx, [sys.executable, "-m", "pip", "download", "--quiet", *(["--no-deps"] if t.resolver else []),
                   "--only-binary", ":all:", "--python-version", t.python, "--implementation", t.implementation,
                   *(a for abi in t.abis for a in ("--abi", abi)), *[a for p in t.platforms for a in ("--platform", p)],
                   *(["--uploaded-prior-to", as_of.exclude_newer] if as_of and not t.resolver else []),
                   "--dest", dest, "--index-url", index, *missing], env=env, t=t)
        if store:
            _to_store(store, [p for p in dest.glob("*.whl") if p.name not in before])
    return pins


# The wheels downloaded on this host, per index, shared by every target they fit (a pure setuptools
# serves every Python of a matrix): `name==version` pins found here are not downloaded again.
def _file_store(ctx: BuildContext) -> Path:
    index = hashlib.sha256(ctx.spec.upstream_index.encode()).hexdigest()[:16]
    return ctx.settings.home / "cache" / "build-wheels" / "files" / index


def _target_tags(t: Target) -> set[str]:
    from packaging.tags import compatible_tags, cpython_tags

    version = tuple(int(x) for x in t.python.split("."))
    return {str(tag) for tag in (*cpython_tags(version, abis=t.abis or ["none"], platforms=t.platforms),
                                 *compatible_tags(version, interpreter=f"cp{t.python.replace('.', '')}",
                                                  platforms=t.platforms))}


def _from_store(store: Path, pins: Sequence[str], t: Target, dest: Path) -> list[str]:
    """The pins (exact `name==version`, CPython targets) a stored wheel fits, copied into `dest` with
    their digest checked; the rest are downloaded."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    from farm.util.hashing import sha256_file

    if t.implementation != "cp" or not store.is_dir():
        return []
    tags = _target_tags(t)
    have: dict[tuple[str, str], list[Path]] = {}
    for path in store.glob("*.whl"):
        try:
            name, version, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if {str(tag) for tag in wheel_tags} & tags:
            have.setdefault((name, str(version)), []).append(path)
    found = []
    for pin in pins:
        try:
            req = Requirement(pin)
        except InvalidRequirement:
            continue
        specs = list(req.specifier)
        if req.marker or req.url or len(specs) != 1 or specs[0].operator != "==":
            continue
        try:
            version = str(Version(specs[0].version))
        except InvalidVersion:
            continue
        for path in have.get((canonicalize_name(req.name), version), []):
            digest = path.with_name(path.name + ".sha256")
            target = dest / path.name
            shutil.copyfile(path, target)
            if digest.is_file() and sha256_file(target) == digest.read_text().strip():
                found.append(pin)
                os.utime(path)  # taken: kept in the store (prune)
                break
            target.unlink()
            path.unlink(missing_ok=True)  # changed on disk: downloaded again
    return found


def _to_store(store: Path, wheels: Sequence[Path]) -> None:
    from farm.util.hashing import sha256_file

    try:
        store.mkdir(parents=True, exist_ok=True)
        for wheel in wheels:
            tmp = store / f".{wheel.name}.{os.getpid()}.partial"
            shutil.copyfile(wheel, tmp)
            (store / f"{wheel.name}.sha256").write_text(sha256_file(tmp))
            tmp.rename(store / wheel.name)
    except OSError:  # sharing is an optimisation
        pass


def _run(ctx: BuildContext, argv: list, *, env: Mapping[str, str], t: Target) -> None:
    try:
        ctx.record(run(argv, env=env, log=ctx.log, timeout=900))
    except CommandFailed as exc:
        if exc.timed_out or not any(marker in exc.result.output for marker in _PACKAGE_SIDE):
            raise InfrastructureFault("build", f"the build requirements could not be downloaded: {exc}") from exc
        raise PackageFailure("build", f"{NO_WHEEL} for {t.describe()} (a container build runs without network, "
                             f"from wheels the farm downloads; it builds no requirement from source):\n{exc}") from exc


# Step 2: the backend's dynamic requirements, in a container -----------------------------------
# The backend's answer per sdist, image, recipe and front end (this worker's memory).
_ASKED: dict[str, list[str]] = {}


def prepare(ctx: BuildContext, client, image: str, *, digest: str, frontend: str,  # type: ignore[no-untyped-def]
            libc: tuple[str, int, int] | None = None, as_of: build_requires.AsOf | None = None) -> Wheelhouse:
    """Fill `ctx.work/build-wheels` with the declared build requirements, and what the backend's hook
    asked for when this worker already knows its answer for this sdist, image and recipe.

    The hook is not asked here: most backends add nothing, so the build runs first and the probe
    (`add_dynamic`) only when its offline front end misses a requirement. `libc` is the image's C
    library when known (a prepared image's label); else a short container asks `ldd`. With `as_of`,
    the requirements are resolved as the index was then (the retry as of the sdist's release)."""
    from docker.errors import DockerException

    start = time.monotonic()
    dest = ctx.work / "build-wheels"
    dest.mkdir(parents=True, exist_ok=True)
    platform = container_platform(ctx.platform)
    try:
        t = target(ctx.spec.python, platform, libc or image_libc(client, image, digest))
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed while the wheelhouse was prepared: {exc}") from exc
    declared = declared_requirements(ctx, frontend)
    when = f" as of {as_of.exclude_newer}" if as_of else ""
    ctx.log.write(f"build requirements for {t.describe()}{when}: {', '.join(declared)}\n")
    known = _ASKED.get(_probe_key(ctx, digest, frontend, as_of))
    dynamic = sorted(set(known or []) - set(declared))
    if dynamic:
        ctx.log.write(f"the build backend adds (its answer for this sdist, image and recipe): {', '.join(dynamic)}\n")
    download(ctx, [*declared, *dynamic], dest, t, name="build-requires", as_of=as_of)
    house = Wheelhouse(path=dest, declared=declared, dynamic=dynamic, target=t, probed=known is not None,
                       as_of=as_of, seconds=time.monotonic() - start)
    ctx.log.write(f"wheelhouse for the offline build ({house.seconds:.1f} s): {', '.join(house.wheels)}\n")
    return house


def add_dynamic(ctx: BuildContext, client, image: str, house: Wheelhouse, *, digest: str, frontend: str,  # type: ignore[no-untyped-def]
                env_script: str, labels: Mapping[str, str]) -> list[str]:
    """Ask the backend's `get_requires_for_build_wheel` (package code: in a container without network,
    capabilities or root) and download what it adds to the wheelhouse; return what is new."""
    from docker.errors import DockerException

    start = time.monotonic()
    try:
        asked = _probe(ctx, client, image, house, frontend=frontend, env_script=env_script, labels=labels)
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed while the backend was asked: {exc}") from exc
    answer = checked(sorted(asked), "asks for")
    _ASKED[_probe_key(ctx, digest, frontend, house.as_of)] = answer
    house.probed = True
    new = sorted(set(answer) - set(house.declared) - set(house.dynamic))
    if new:
        ctx.log.write(f"the build backend adds: {', '.join(new)}\n")
        house.dynamic = sorted([*house.dynamic, *new])
        assert house.target is not None
        download(ctx, [*house.declared, *house.dynamic], house.path, house.target, name="build-requires-all",
                 as_of=house.as_of)
    house.seconds += time.monotonic() - start
    return new


def _probe_key(ctx: BuildContext, digest: str, frontend: str, as_of: build_requires.AsOf | None = None) -> str:
    inputs = [ctx.spec.sdist.sha256, digest, ctx.spec.recipe_digest, frontend, ctx.spec.python,
              sorted((k, str(v)) for k, v in ctx.options.config_settings.items()),
              *([as_of.exclude_newer] if as_of else [])]
    return json.dumps(inputs)


def image_libc(client, image: str, digest: str) -> tuple[str, int, int]:  # type: ignore[no-untyped-def]
    """The image's C library (`ldd --version` in a short container without network; remembered per digest)."""
    if digest not in _LIBC:
        limits = Limits(memory="256m", pids=64, drop_capabilities=True)
        with Container(client, image, network="none", limits=limits, lifetime=60) as box:
            _LIBC[digest] = parse_libc(box.call(["sh", "-c", "ldd --version 2>&1 | head -n 2; true"]).output)
    return _LIBC[digest]


def declared_requirements(ctx: BuildContext, frontend: str) -> list[str]:
    """`[build-system] requires` of the (recipe-adjusted) tree, read on the host: no package code runs."""
    from build import BuildException, ProjectBuilder

    try:
        declared = sorted(ProjectBuilder(ctx.source).build_system_requires)
    except BuildException as exc:  # pyproject.toml's [build-system] is unusable
        raise PackageFailure("build", str(exc)) from exc
    if frontend == "pip" and build_requires.declared(ctx.src) == build_requires.LEGACY_REQUIRES:
        declared.append("wheel")  # what older pips add for a project without [build-system]
    return checked(declared, "declares")


def _probe(ctx: BuildContext, client, image: str, house: Wheelhouse, *, frontend: str, env_script: str,  # type: ignore[no-untyped-def]
           labels: Mapping[str, str]) -> set[str]:
    """What the backend's hook asks for, in a container of the build image with the wheelhouse installed."""
    from build import BuildBackendException, ProjectBuilder

    limits = Limits(memory=ctx.settings.build_memory, pids=ctx.settings.build_pids, drop_capabilities=True)
    python = container_platform(ctx.platform).image_python(ctx.spec.python)
    with Container(client, image, network="none", limits=limits, labels=labels,
                   read_only_files={str(house.path): WHEELS_IN_CONTAINER}) as box:
        builder = ProjectBuilder(ctx.source, python_executable=f"{_ENV}/bin/python",
                                 runner=_hook_runner(ctx, box, env_script=env_script, python=python))
        uv = frontend != "pip"
        _stage(ctx, box, python, uv=uv, log=ctx.log)
        _in_container(ctx, box, _install_argv(python, [*house.declared, *house.dynamic], uv=uv), uv=uv, log=ctx.log)
        settings = {k: list(v) if isinstance(v, list) else v for k, v in ctx.options.config_settings.items()}
        try:
            with warnings.catch_warnings(record=True) as said:  # the backend's warnings go to the job log
                warnings.simplefilter("always")
                asked = builder.get_requires_for_build("wheel", settings)
            ctx.log.write("".join(f"warning from the build backend: {w.message}\n" for w in said))
        except BuildBackendException as exc:
            ctx.log.write(f"get_requires_for_build_wheel failed in the probe container ({exc})\n")
            asked = set()
    return set(asked)


def _stage(ctx: BuildContext, box: Container, python: str, *, uv: bool, log: TextIO) -> None:
    """The source tree (owned by the hook's user) and an empty venv of the image's interpreter."""
    box.copy_into(ctx.source, _BOX, name="src", owner=65534)
    venv = ["uv", "venv", "--quiet", "--python", python, _ENV] if uv else [python, "-m", "venv", "--without-pip", _ENV]
    _in_container(ctx, box, venv, uv=uv, log=log)


def _install_argv(python: str, requirements: list[str], *, uv: bool) -> list[str]:
    """Installs `requirements` into the venv from the wheelhouse only: wheels, so no package code runs."""
    if uv:
        return ["uv", "pip", "install", "--quiet", "--offline", "--no-index", "--find-links", WHEELS_IN_CONTAINER,
                "--no-build", "--python", f"{_ENV}/bin/python", *requirements]
    return [python, "-m", "pip", "--python", f"{_ENV}/bin/python", "install", "--quiet", "--no-index",
            "--find-links", WHEELS_IN_CONTAINER, "--only-binary", ":all:", *requirements]


def _in_container(ctx: BuildContext, box: Container, argv: list[str], *, uv: bool, log: TextIO) -> None:
    env = ({"UV_NO_CONFIG": "1", "UV_CACHE_DIR": f"{_BOX}/uv-cache", "UV_PYTHON_DOWNLOADS": "never"} if uv else
           {"PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore"})
    ctx.commands.append(shlex.join(argv))
    try:
        box.call(argv, env=env, log=log, timeout=600)
    except ContainerCommandFailed as exc:
        if exc.timed_out or "install" not in argv:
            raise InfrastructureFault("build", str(exc)) from exc
        raise PackageFailure("build", f"{NO_WHEEL} (installing the downloaded wheels failed):\n{exc}") from exc


def _hook_runner(ctx: BuildContext, box: Container, *, env_script: str, python: str):  # type: ignore[no-untyped-def]
    """pyproject_hooks' runner: [python, _in_process.py, hook, control folder] run in `box` as nobody.

    The control folder (input.json in, output.json back) and the script are copied in; host paths of
    the source tree in the hook's variables (backend-path) become the container's."""
    source = str(ctx.source)

    def runner(cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None) -> None:
        script, hook, control = Path(cmd[1]), cmd[2], Path(cmd[3])
        box.copy_into(script, _HOOKS, name="_in_process.py")
        box.copy_into(control, _HOOKS, name="control", owner=65534)
        env = {k: v.replace(source, _SRC) for k, v in (extra_environ or {}).items()}
        env |= {"HOME": "/tmp", "SOURCE_DATE_EPOCH": str(ctx.src.timestamp),
                "PATH": f"{_ENV}/bin:{Path(python).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        argv = ["sh", "-c", (f"export {env_script}; " if env_script else "") + 'exec "$@"', "sh", f"{_ENV}/bin/python",
                f"{_HOOKS}/_in_process.py", hook, f"{_HOOKS}/control"]
        ctx.commands.append(shlex.join(argv))
        box.call(argv, env=env, workdir=_SRC, user=NOBODY, log=ctx.log, timeout=min(ctx.settings.build_timeout, 900))
        # The answer, read as the hook's user and at most 1 MiB of it (a missing or cut one: no answer).
        answer = box.call(["head", "-c", str(2**20), f"{_HOOKS}/control/output.json"], user=NOBODY, check=False)
        if answer.exit_code == 0:
            (control / "output.json").write_text(answer.output)

    return runner
