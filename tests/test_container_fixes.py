"""Container-path failure classes found by the coverage run (docs/benchmarks.md, "Coverage: 50 real
compiled sdists"): the repair of an extension that links no C library, meson's pkg-config lookups
as missing system packages, and the build requirements as of the sdist's upload time.

Bad inputs covered: a wheel whose extension links no C library (auditwheel cannot tell the libc),
a file that is not a wheel at all (the repair still fails, with auditwheel's own exit status),
meson lines that name no dependency.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from farm.worker.engines.cibuildwheel import repair_command
from farm.worker.platforms import get_platform
from tests.helpers.images import build_image_result, client, docker_host  # noqa: F401


def _ctx(platform: str = "linux-x86_64", exclude: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(platform=get_platform(platform), options=SimpleNamespace(repair_exclude=list(exclude)))


def test_repair_command_names_the_policy_when_auditwheel_cannot_tell_the_libc() -> None:
    """The first repair is auditwheel's own choice; only its "couldn't detect libc" failure repairs
    again for the oldest policy of the platform's C library; any other failure keeps its status."""
    command = repair_command(_ctx())
    assert command.startswith("out=$(auditwheel repair -w {dest_dir} {wheel} 2>&1)")
    assert "couldn't detect libc" in command
    assert "auditwheel repair --plat manylinux_2_17_x86_64 -w {dest_dir} {wheel}" in command
    assert "exit $rc" in command
    musl = repair_command(_ctx("musllinux-aarch64", exclude=("libcuda.so.1",)))
    assert "auditwheel repair --exclude libcuda.so.1 --plat musllinux_1_1_aarch64 -w {dest_dir} {wheel}" in musl
    # cibuildwheel fills its placeholders with str.format: no other braces in the line.
    assert command.format(wheel="W", dest_dir="D").count("{") == 0


def _wheel_without_libc(tmp: Path) -> Path:
    """A cp39 wheel whose extension links nothing (no DT_NEEDED at all): auditwheel 6 cannot tell its libc."""
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip("gcc is not installed")
    so = tmp / "x.cpython-39-x86_64-linux-gnu.so"
    (tmp / "x.c").write_text("void *PyInit_x(void) { return 0; }\n")
    subprocess.run([gcc, "-shared", "-fPIC", "-nostdlib", "-o", str(so), str(tmp / "x.c")], check=True)
    wheel = tmp / "x-1.0-cp39-cp39-linux_x86_64.whl"
    info = "x-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(so, so.name)
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: x\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: false\n"
                                     "Tag: cp39-cp39-linux_x86_64\n")
        zf.writestr(f"{info}/RECORD", f"{so.name},,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return wheel


@pytest.mark.docker
def test_repair_command_in_the_build_image(tmp_path: Path, client, build_image_result) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The command as cibuildwheel runs it (sh -c, placeholders filled) in the bullseye build image:
    the image's auditwheel alone fails on the wheel; the farm's command repairs it to manylinux_2_17;
    a file that is not a wheel still fails."""
    from farm.containers import Container

    wheel = _wheel_without_libc(tmp_path)
    bad = tmp_path / "bad-1.0-cp39-cp39-linux_x86_64.whl"
    bad.write_bytes(b"not a zip")
    command = repair_command(_ctx())
    with Container(client, build_image_result.tag, network="none") as box:
        box.copy_into(wheel, "/tmp/in")
        box.copy_into(bad, "/tmp/in")
        plain = box.call(["sh", "-c", f"auditwheel repair -w /tmp/plain /tmp/in/{wheel.name}"], check=False, timeout=120)
        assert plain.exit_code != 0 and "couldn't detect libc" in plain.output
        ours = box.call(["sh", "-c", command.format(wheel=shlex.quote(f"/tmp/in/{wheel.name}"), dest_dir="/tmp/out")],
                        check=False, timeout=120)
        assert ours.exit_code == 0, ours.output
        assert "repairing for manylinux_2_17_x86_64" in ours.output
        listed = box.call(["ls", "/tmp/out"], timeout=60).output.split()
        assert len(listed) == 1 and "manylinux_2_17_x86_64" in listed[0], listed
        failed = box.call(["sh", "-c", command.format(wheel=f"/tmp/in/{bad.name}", dest_dir="/tmp/out2")],
                          check=False, timeout=120)
        assert failed.exit_code != 0 and "repairing for" not in failed.output


# meson 1.x's own output (meson setup in a project with `dependency('cairo', version: '>=1.15.10')`,
# with no pkg-config program on PATH, as in the bullseye build image), and a dependency not found.
MESON_WITHOUT_PKG_CONFIG = """\
Did not find pkg-config by name 'pkg-config'
Found pkg-config: NO
Did not find CMake 'cmake'
Found CMake: NO
Run-time dependency cairo found: NO

meson.build:2:6: ERROR: Dependency lookup for cairo with method 'pkg-config' failed: Pkg-config for machine host machine not found. Giving up.
"""
MESON_NOT_FOUND = """\
Run-time dependency alsa found: NO  (tried pkg-config and cmake)

meson.build:2:6: ERROR: Dependency "alsa" not found (tried pkg-config and cmake)
"""


def test_meson_without_pkg_config_names_the_program_and_the_module() -> None:
    from farm.worker import hints

    assert hints.missing_system_dependencies(MESON_WITHOUT_PKG_CONFIG) == ["pkg-config (program)", "cairo (pkg-config)"]
    # the error line alone (the summary some front ends keep) says both as well
    last = MESON_WITHOUT_PKG_CONFIG.splitlines()[-1]
    assert hints.missing_system_dependencies(last) == ["pkg-config (program)", "cairo (pkg-config)"]
    assert hints.missing_system_dependencies(MESON_NOT_FOUND) == ["alsa (meson)"]
    # another lookup method is a meson dependency, not a pkg-config module
    assert hints.missing_system_dependencies(
        "ERROR: Dependency lookup for Foo with method 'cmake' failed: CMake binary not found") == ["Foo (meson)"]
    # a required program meson's find_program() did not find (dbus-python's test runner)
    program = ("Program dbus-run-session found: NO\n\n"
               "../test/meson.build:72:19: ERROR: Program 'dbus-run-session' not found or not executable\n")
    assert hints.missing_system_dependencies(program) == ["dbus-run-session (program)"]
    # lines that name nothing missing (an optional program not found is no error)
    assert hints.missing_system_dependencies("Found pkg-config: YES (/usr/bin/pkg-config) 0.29.2\n"
                                             "Program sphinx-build found: NO\n"
                                             "Run-time dependency cairo found: YES 1.16.0\n") == []


@pytest.mark.network
def test_meson_without_pkg_config_gives_both_bullseye_packages() -> None:
    """Debian bullseye's real Contents index (cached after the first download) gives the program's and
    the module's packages, which the automatic retry installs."""
    from farm.worker import hints, sysdeps

    index = sysdeps.load_index("http://deb.debian.org/debian", "bullseye", "amd64")
    missing = list(sysdeps.parse_missing(hints.missing_system_dependencies(MESON_WITHOUT_PKG_CONFIG)))
    found = index.packages_for(missing)
    assert {m.name: p for m, p in found.items()} == {"pkg-config": "pkg-config", "cairo": "libcairo2-dev"}
    program = next(sysdeps.parse_missing(["dbus-run-session (program)"]))
    assert index.packages_for([program]) == {program: "dbus"}


def _as_of_ctx(tmp: Path) -> SimpleNamespace:
    import io

    work = tmp / "work"
    work.mkdir()
    recorded: list = []
    return SimpleNamespace(work=work, log=io.StringIO(), record=recorded.append, recorded=recorded,
                           spec=SimpleNamespace(upstream_index="https://pypi.org/simple/"),
                           settings=SimpleNamespace(home=tmp / "home", build_wheels_shared_seconds=0.0))


@pytest.mark.network
@pytest.mark.parametrize("resolver", ["x86_64-manylinux_2_31", None], ids=["uv", "pip"])
def test_the_wheelhouse_resolves_as_of_the_release(tmp_path: Path, resolver: str | None) -> None:
    """The container's wheelhouse as of a date gets what PyPI had then (uv's --exclude-newer, pip's
    --uploaded-prior-to when uv has no target): Cython 0.29 on 2021-10-13, Cython 3 today."""
    import datetime as dt

    from farm.worker import wheelhouse
    from farm.worker.build_requires import AsOf

    t = wheelhouse.Target(python="3.9", implementation="cp", abi="cp39", resolver=resolver,
                          platforms=("manylinux_2_31_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"))
    as_of = AsOf(dt.datetime(2021, 10, 13, tzinfo=dt.UTC), "upstream upload-time")
    then, today = tmp_path / "then", tmp_path / "today"
    then.mkdir(), today.mkdir()
    ctx = _as_of_ctx(then)
    wheelhouse.download(ctx, ["Cython"], then / "wheels", t, name="then", as_of=as_of)  # type: ignore[arg-type]
    argv = [str(a) for r in ctx.recorded for a in r.argv]
    assert ("--exclude-newer" if resolver else "--uploaded-prior-to") in argv and as_of.exclude_newer in argv
    old = [p.name for p in (then / "wheels").glob("*.whl")]
    assert len(old) == 1 and old[0].startswith("Cython-0.29."), old
    wheelhouse.download(_as_of_ctx(today), ["Cython"], today / "wheels", t, name="today")  # type: ignore[arg-type]
    new = [p.name for p in (today / "wheels").glob("*.whl")]
    assert len(new) == 1 and not new[0].startswith("Cython-0."), new


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.network
def test_an_old_sdist_builds_in_the_container_with_the_requirements_of_its_date(  # noqa: F811
        tmp_path: Path, docker_host: str, build_image_result) -> None:  # type: ignore[no-untyped-def]
    """PyYAML 6.0 (no recipe: the defaults) in the bullseye build image: today's Cython 3 breaks its
    setup.py, the retry's wheelhouse as of its upload time (2021-10-13) holds Cython 0.29 and builds;
    the provenance's adjustments say so."""
    import hashlib
    import io
    from farm.config import ImageConfig, Settings
    from farm.messages import JobSpec, SdistRef
    from farm.recipes.schema import Options
    from farm.util.archive import Limits
    from farm.worker.engines.base import BuildContext
    from farm.worker.engines.cibuildwheel import CibuildwheelEngine
    from farm.worker.sandbox import job_limits
    from farm.worker.source import SdistSource
    from tests.helpers.sdists import cached_sdist

    sdist = cached_sdist("pyyaml==6.0")
    plat = get_platform("linux-x86_64")
    src = SdistSource(sdist, tmp_path / "src", Limits(max_bytes=10**8, max_unpacked_bytes=10**9, max_members=10**5),
                      expect=("pyyaml", "6.0"))
    spec = JobSpec(job_id=8, attempt=1, name="pyyaml", version="6.0",
                   sdist=SdistRef(filename=sdist.name, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
                                  size=sdist.stat().st_size, storage_key="s"),
                   platform=plat.name, python="cp39", build_id=plat.build_identifier("cp39"), engine="cibuildwheel",
                   recipe_name="pyyaml", recipe_digest="d", options={}, upstream_index="https://pypi.org/simple/")
    settings = Settings(home=tmp_path / "home", docker_host=docker_host, build_memory="2g", build_pids=2048,
                        images={"linux-x86_64": [ImageConfig(image=build_image_result.tag, pythons=["cp39"])]})
    options = Options(system_packages={"apt": ["libyaml-dev"]})
    (tmp_path / "work").mkdir()
    ctx = BuildContext(spec=spec, options=options, platform=plat, settings=settings,
                       src=src, work=tmp_path / "work", log=io.StringIO(),
                       sandbox=plat.sandbox(settings), limits=job_limits(settings, options))
    output = CibuildwheelEngine().build(ctx)
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    assert "cython_sources" in log  # the first attempt, with today's Cython
    assert "retry: build requirements as of the release, 2021-10-13T19:40:57Z (upstream upload-time)" in log
    assert "--exclude-newer" in log or any("--exclude-newer" in c for c in ctx.commands)
    (wheel,) = output.wheels
    assert wheel.name.startswith("PyYAML-6.0-cp39-cp39-") and "manylinux" in wheel.name, wheel.name
    as_of = output.adjustments["buildRequiresAsOf"]
    assert as_of["time"] == "2021-10-13T19:40:57Z" and as_of["retry"] is True  # type: ignore[index]
    cython = next(r for r in as_of["resolved"] if r.lower().startswith("cython=="))  # type: ignore[index]
    assert cython.split("==")[1].startswith("0.29."), as_of
    assert output.build_environment == as_of["resolved"]  # type: ignore[index]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.network
def test_a_meson_package_gets_its_system_packages_in_the_container(  # noqa: F811
        tmp_path: Path, docker_host: str, build_image_result) -> None:  # type: ignore[no-untyped-def]
    """pycairo 1.27.0 (meson-python, no recipe) in the bullseye build image: meson reports cairo missing,
    the discovery finds libcairo2-dev (and pkg-config, in an image without it) and the retry builds."""
    import hashlib
    import io

    from farm.config import ImageConfig, Settings
    from farm.messages import JobSpec, SdistRef
    from farm.recipes.schema import Options
    from farm.util.archive import Limits
    from farm.worker import sysdeps
    from farm.worker.engines.base import BuildContext
    from farm.worker.engines.cibuildwheel import CibuildwheelEngine
    from farm.worker.sandbox import job_limits
    from farm.worker.source import SdistSource
    from tests.helpers.sdists import cached_sdist

    sdist = cached_sdist("pycairo==1.27.0")
    plat = get_platform("linux-x86_64")
    src = SdistSource(sdist, tmp_path / "src", Limits(max_bytes=10**8, max_unpacked_bytes=10**9, max_members=10**5),
                      expect=("pycairo", "1.27.0"))
    spec = JobSpec(job_id=9, attempt=1, name="pycairo", version="1.27.0",
                   sdist=SdistRef(filename=sdist.name, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
                                  size=sdist.stat().st_size, storage_key="s"),
                   platform=plat.name, python="cp39", build_id=plat.build_identifier("cp39"), engine="cibuildwheel",
                   recipe_name="pycairo", recipe_digest="d", options={}, upstream_index="https://pypi.org/simple/")
    settings = Settings(home=tmp_path / "home", docker_host=docker_host, build_memory="2g", build_pids=2048,
                        images={"linux-x86_64": [ImageConfig(image=build_image_result.tag, pythons=["cp39"])]})
    options = Options()
    (tmp_path / "work").mkdir()
    ctx = BuildContext(spec=spec, options=options, platform=plat, settings=settings, src=src, work=tmp_path / "work",
                       log=io.StringIO(), sandbox=plat.sandbox(settings), limits=job_limits(settings, options))
    output = sysdeps.build(CibuildwheelEngine(), ctx)
    log = ctx.log.getvalue()  # type: ignore[attr-defined]
    (wheel,) = output.wheels
    assert wheel.name.startswith("pycairo-1.27.0-cp39-cp39-manylinux"), wheel.name
    record = output.adjustments["systemPackages"]
    assert record["retry"] is True and "libcairo2-dev" in record["packages"], record  # type: ignore[index]
    assert ("pkg-config" in record["packages"]) == ("pkg-config (program)" in record["firstFailure"]), record  # type: ignore[index]
    assert "cairo (" in record["firstFailure"], log[-3000:]  # type: ignore[index]


@pytest.mark.parametrize("resolver", ["x86_64-manylinux_2_31", None], ids=["uv", "pip"])
def test_the_jobs_of_a_matrix_share_their_build_requirements(tmp_path: Path, resolver: str | None) -> None:
    """A second job with the same build requirements and target on this host reuses the first one's
    resolution (no resolver, no download: nothing recorded) and gets its own copy of the wheels. Not
    shared: another target, another index, an older one than the window, a window of 0, and a shared
    file that no longer has its digest (dropped and resolved again). Another target resolves for
    itself, and takes the pinned wheels that fit it from the files this host downloaded (uv pins;
    pip's own resolution downloads)."""
    from farm.worker import wheelhouse
    from tests.helpers.indexes import StaticIndex
    from tests.helpers.wheels import make_wheel

    upstream = StaticIndex(tmp_path / "upstream")
    try:
        for name, requires in (("farmbackend", ("farmhelper>=1",)), ("farmhelper", ())):
            wheel = make_wheel(tmp_path / "made", name, "1.0", requires=requires)
            upstream.add(name, wheel.name, wheel.read_bytes())
        platforms = ("manylinux_2_31_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
        cp39 = wheelhouse.Target(python="3.9", implementation="cp", abi="cp39", resolver=resolver, platforms=platforms)
        cp313 = wheelhouse.Target(python="3.13", implementation="cp", abi="cp313", resolver=resolver, platforms=platforms)
        home = tmp_path / "home"

        def job(n: int, t: wheelhouse.Target, *, window: float = 3600.0, index: str = upstream.url) -> tuple:
            (tmp_path / f"job{n}").mkdir()
            ctx = _as_of_ctx(tmp_path / f"job{n}")
            ctx.settings = SimpleNamespace(home=home, build_wheels_shared_seconds=window)
            ctx.spec.upstream_index = index
            dest = ctx.work / "build-wheels"
            pins = wheelhouse.download(ctx, ["farmbackend"], dest, t, name="build-requires")  # type: ignore[arg-type]
            return pins, sorted(p.name for p in dest.glob("*.whl")), ctx

        first = job(1, cp39)
        assert first[1] == ["farmbackend-1.0-py3-none-any.whl", "farmhelper-1.0-py3-none-any.whl"]
        assert first[2].recorded, "the first job resolves and downloads"
        [entry] = [p for p in (home / "cache/build-wheels").iterdir() if (p / "resolution.json").is_file()]  # cp39
        second = job(2, cp39)
        assert second[:2] == first[:2] and second[2].recorded == []
        assert "reused" in second[2].log.getvalue()
        for path in (tmp_path / "job2/work/build-wheels").glob("*.whl"):
            assert path.stat().st_nlink == 1
        third = job(3, cp313)
        assert third[1] == first[1] and third[2].recorded, "another target resolves for itself"
        downloads = [r for r in third[2].recorded if "download" in r.argv]
        # ... but its pins are the pure wheels the first job downloaded: taken from this host's store (uv)
        assert (downloads == []) == (resolver is not None), [r.argv for r in third[2].recorded]
        assert job(4, cp39, window=0)[2].recorded, "sharing off"
        other_index = upstream.url.replace("127.0.0.1", "localhost")
        assert job(5, cp39, index=other_index)[2].recorded, "another index"
        # a shared wheel changed on disk: not used, resolved again, shared again
        (entry / "farmhelper-1.0-py3-none-any.whl").write_bytes(b"not the wheel")
        again = job(6, cp39)
        assert again[2].recorded and "changed on disk" in again[2].log.getvalue()
        assert zipfile.is_zipfile(tmp_path / "job6/work/build-wheels/farmhelper-1.0-py3-none-any.whl")
        assert job(7, cp39)[2].recorded == []
        # older than the window
        record = entry / "resolution.json"
        data = json.loads(record.read_text())
        record.write_text(json.dumps({**data, "made": data["made"] - 7200}))
        assert job(8, cp39)[2].recorded
    finally:
        upstream.stop()


def test_the_shared_build_requirements_are_pruned(tmp_path: Path) -> None:
    """What the host's sharing keeps and no job can use any more goes, at most once an hour: resolutions
    past their window (with their lock files) unless a job holds the lock, stored wheels no job took
    for 30 days (taking one keeps it), partial copies a crashed job left. The rest stays."""
    import fcntl
    import hashlib
    import os
    import time

    from farm.util.hashing import sha256_file
    from farm.worker import wheelhouse
    from tests.helpers.wheels import make_wheel

    shared, now, day = tmp_path / "build-wheels", time.time(), 86400.0

    def resolution(made: float) -> Path:
        entry = shared / hashlib.sha256(str(made).encode()).hexdigest()[:32]
        entry.mkdir(parents=True)
        (entry / "resolution.json").write_text(json.dumps({"pins": [], "files": {}, "made": made}))
        entry.with_name(entry.name + ".lock").touch()
        return entry

    def aged(path: Path, seconds: float) -> Path:
        os.utime(path, (now - seconds, now - seconds))
        return path

    stale, fresh, busy = resolution(now - 2 * 3600), resolution(now - 60), resolution(now - 3 * 3600)
    crashed = fresh.with_name(fresh.name + ".x1y2")
    crashed.mkdir()
    aged(crashed, 2 * day)
    store = shared / "files" / "0123456789abcdef"
    store.mkdir(parents=True)
    old_wheel = make_wheel(store, "oldone", "1.0")
    (store / f"{old_wheel.name}.sha256").write_text("x")
    aged(old_wheel, 31 * day)
    used = make_wheel(store, "farmhelper", "1.0")
    (store / f"{used.name}.sha256").write_text(sha256_file(used))
    aged(used, 31 * day)
    left = store / ".half.whl.123.partial"
    left.touch()
    aged(left, 2 * day)
    # a job takes `used` from the store: it is touched, so it stays
    t = wheelhouse.Target(python="3.9", implementation="cp", abi="cp39", resolver="x86_64-manylinux_2_31",
                          platforms=("manylinux_2_31_x86_64",))
    (tmp_path / "dest").mkdir()
    assert wheelhouse._from_store(store, ["farmhelper==1.0"], t, tmp_path / "dest") == ["farmhelper==1.0"]
    with open(busy.with_name(busy.name + ".lock"), "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        removed = wheelhouse.prune(shared, 3600.0, now=now)
    assert set(removed) == {stale, crashed, old_wheel, left}
    assert not stale.exists() and not stale.with_name(stale.name + ".lock").exists()
    assert fresh.is_dir() and busy.is_dir() and used.is_file() and (store / f"{used.name}.sha256").is_file()
    assert not (store / f"{old_wheel.name}.sha256").exists()
    assert wheelhouse.prune(shared, 3600.0, now=now + 60) == []  # within the hour: nothing looked at
    assert wheelhouse.prune(shared, 3600.0, now=now + 3601) == [busy]  # its lock is free now
    assert wheelhouse.prune(tmp_path / "missing", 3600.0) == []