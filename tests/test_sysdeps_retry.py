"""System packages found for a failed build, and what the farm does with them (farm/worker/sysdeps.py).

The compiler output is real (gcc compiling a file that includes a header this host lacks); the
Contents index is read from a mirror folder the test writes (`file://`, through the same download
and cache code as the real mirror); the settings are the farm's own. The engine here is a stand-in
that compiles and counts its attempts: the real engines are exercised by the slow tests
(tests/test_sysdeps_e2e.py), the decision about retrying and installing is what is tested here.

Bad inputs covered: a header no package provides (a clear message, no retry, nothing installed);
a build whose output names nothing missing (no lookup, the failure unchanged); the native engine
with the default configuration (nothing installed on the host, the packages and the suggested
recipe named); a second missing header revealed by the first package (a second round), and one still
missing with its package installed (stops); apt sources in both formats, with options, disabled
stanzas and no suite; a record without packages (no suggestion).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.config import Settings
from farm.errors import NotFound, PackageFailure
from farm.messages import JobSpec, SdistRef
from farm.recipes.load import parse_recipe_text
from farm.recipes.schema import Options
from farm.recipes.suggest import recipe_text
from farm.util.archive import Limits
from farm.worker import sysdeps
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.hints import build_failure
from farm.worker.platforms import get_platform
from farm.worker.sandbox import job_limits
from farm.worker.source import SdistSource
from tests.helpers.sdists import make_project, make_sdist

CONTENTS = """\
usr/include/x86_64-linux-gnu/sys/acl.h                      libdevel/libacl1-dev
usr/include/acl/libacl.h                                    libdevel/libacl1-dev
usr/lib/x86_64-linux-gnu/libacl.so                          libdevel/libacl1-dev
usr/include/sys/acl.h                                       libdevel/libacl1-dev
usr/share/doc/libacl1-dev/copyright                         doc/libacl1-dev
usr/include/attr/libattr.h                                  libdevel/libattr1-dev
"""


def _suite() -> str:
    release = sysdeps.parse_os_release(Path("/etc/os-release").read_text()) if Path("/etc/os-release").is_file() else {}
    if not release.get("VERSION_CODENAME") or not shutil.which("dpkg"):
        pytest.skip("the host lookup reads a Debian-like host's apt sources")
    return release["VERSION_CODENAME"]


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A mirror folder with a Contents index for the host's suite; the index cache in the test's folder."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() or "amd64"
    folder = tmp_path / "mirror" / "dists" / _suite() / "main"
    folder.mkdir(parents=True)
    with gzip.open(folder / f"Contents-{arch}.gz", "wt") as f:
        f.write(CONTENTS.replace("x86_64-linux-gnu", sysdeps._TRIPLETS.get(arch, "x86_64-linux-gnu")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return (tmp_path / "mirror").as_uri()


def _compiler_output(tmp_path: Path, header: str) -> str:
    if not shutil.which("gcc"):
        pytest.skip("no gcc")
    src = tmp_path / "probe.c"
    src.write_text(f"#include <{header}>\nint main(void) {{ return 0; }}\n")
    res = subprocess.run(["gcc", "-c", str(src), "-o", str(tmp_path / "probe.o")], capture_output=True, text=True)
    assert res.returncode != 0, f"this host has {header}: the test needs a header it lacks"
    return res.stdout + res.stderr


class Compiling:
    """An engine whose build includes `header`: it fails as the real engines do (hints.build_failure
    on the compiler's own output) until the options carry a package for it."""

    name = "native"

    def __init__(self, output: str, cures: str) -> None:
        self.output, self.cures, self.calls = output, cures, []  # type: ignore[var-annotated]

    def build(self, ctx: BuildContext) -> BuildOutput:
        self.calls.append(list(ctx.options.system_packages.apt))
        if self.cures in ctx.options.system_packages.apt:
            return BuildOutput(wheels=[], repaired=False)
        raise build_failure("the build backend failed: exit 1", self.output)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sdist")
    return make_sdist(make_project(root / "proj", "farmtest-acl", c_extension=False), root / "dist")


def _ctx(tmp_path: Path, sdist: Path, *, engine: str = "native", **settings: object) -> BuildContext:
    plat = get_platform("linux-x86_64")
    spec = JobSpec(job_id=9, attempt=1, name="farmtest-acl", version="0.1.0",
                   sdist=SdistRef(filename=sdist.name, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest(),
                                  size=sdist.stat().st_size, storage_key="s"),
                   platform=plat.name, python="cp311", build_id=plat.build_identifier("cp311"), engine=engine,
                   recipe_name=None, recipe_digest="d", options={}, upstream_index="https://pypi.org/simple/")
    conf = Settings(home=tmp_path / "home", **settings)  # type: ignore[arg-type]
    (tmp_path / "work").mkdir(parents=True)
    return BuildContext(spec=spec, options=Options(), platform=plat, settings=conf,
                        src=SdistSource(sdist, tmp_path / "work" / "src", Limits(10**8, 10**9, 10**5)),
                        work=tmp_path / "work",
                        log=io.StringIO(), sandbox=plat.sandbox(conf), limits=job_limits(conf, Options()))


def _installed(package: str) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return res.returncode == 0 and "install ok installed" in res.stdout


def test_native_engine_never_installs_on_the_host_by_default(tmp_path: Path, mirror: str, sdist: Path) -> None:
    output = _compiler_output(tmp_path, "sys/acl.h")
    assert not _installed("libacl1-dev")
    engine = Compiling(output, cures="libacl1-dev")
    # the default `system_packages` ("install", for a recipe's own packages) does not install what the farm found
    ctx = _ctx(tmp_path, sdist, contents_mirror=mirror)
    assert ctx.settings.system_packages == "install" and not sysdeps.installs_on_host(ctx.settings)
    with pytest.raises(PackageFailure) as caught:
        sysdeps.build(engine, ctx)
    assert engine.calls == [[]]  # built once, not again
    message = str(caught.value)
    assert "libacl1-dev" in message and "nothing is installed on this host" in message
    assert 'apt = ["libacl1-dev"]' in message and "farm recipe suggest farmtest-acl" in message
    record = caught.value.adjustments["systemPackages"]  # type: ignore[attr-defined]
    assert record["packages"] == ["libacl1-dev"] and record["installed"] is False and record["retry"] is False
    assert record["found"][0]["missing"] == "sys/acl.h" and record["found"][0]["kind"] == "header"
    assert not _installed("libacl1-dev")  # the host is as it was
    assert "apt-get" not in ctx.log.getvalue()  # type: ignore[attr-defined]

    # "check" says the same, with the same suggestion
    ctx = _ctx(tmp_path / "check", sdist, contents_mirror=mirror, system_packages="check")
    with pytest.raises(PackageFailure, match="libacl1-dev"):
        sysdeps.build(Compiling(output, cures="libacl1-dev"), ctx)


def test_native_engine_retries_with_the_packages_when_install_is_configured(tmp_path: Path, mirror: str, sdist: Path) -> None:
    output = _compiler_output(tmp_path, "sys/acl.h")
    engine = Compiling(output, cures="libacl1-dev")
    ctx = _ctx(tmp_path, sdist, contents_mirror=mirror, system_packages="install")  # explicitly
    assert sysdeps.installs_on_host(ctx.settings)
    out = sysdeps.build(engine, ctx)
    assert engine.calls == [[], ["libacl1-dev"]]  # once more, with the package (the engine installs it)
    record = out.adjustments["systemPackages"]
    assert record["retry"] is True and record["outcome"] == "built" and record["packages"] == ["libacl1-dev"]
    assert record["lookup"].startswith(f"the Contents index of {_suite()}/")
    assert record["firstFailure"].startswith("the build output reports missing: sys/acl.h (header)")
    assert "retry: with the system packages libacl1-dev" in ctx.log.getvalue()  # type: ignore[attr-defined]


def test_the_container_engine_retries_without_asking(tmp_path: Path, mirror: str, sdist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cibuildwheel engine installs in the container's root phase: never on the host, so always retried."""
    output = _compiler_output(tmp_path, "sys/acl.h")
    ctx = _ctx(tmp_path, sdist, engine="cibuildwheel", contents_mirror=mirror, system_packages="ignore")
    # the image's lookup needs Docker (tests/test_sysdeps_e2e.py); here the host's index answers for it
    monkeypatch.setattr(sysdeps, "lookup_in_image", sysdeps.lookup_on_host)
    engine = Compiling(output, cures="libacl1-dev")
    assert sysdeps.build(engine, ctx).adjustments["systemPackages"]["installed"] is True
    assert engine.calls == [[], ["libacl1-dev"]]


class TwoRounds(Compiling):
    """A build whose first missing header hides a second one: found only once the first is installed."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(first, cures="libacl1-dev")
        self.second = second

    def build(self, ctx: BuildContext) -> BuildOutput:
        self.calls.append(list(ctx.options.system_packages.apt))
        if "libacl1-dev" not in ctx.options.system_packages.apt:
            raise build_failure("the build backend failed: exit 1", self.output)
        if "libattr1-dev" not in ctx.options.system_packages.apt:
            raise build_failure("the build backend failed: exit 1", self.second)
        return BuildOutput(wheels=[], repaired=False)


def test_a_second_missing_header_found_after_the_first_is_installed(tmp_path: Path, mirror: str, sdist: Path) -> None:
    engine = TwoRounds(_compiler_output(tmp_path, "sys/acl.h"), _compiler_output(tmp_path, "attr/libattr.h"))
    ctx = _ctx(tmp_path, sdist, contents_mirror=mirror, system_packages="install")
    out = sysdeps.build(engine, ctx)
    assert engine.calls == [[], ["libacl1-dev"], ["libacl1-dev", "libattr1-dev"]]
    record = out.adjustments["systemPackages"]
    assert record["packages"] == ["libacl1-dev", "libattr1-dev"] and record["rounds"] == 2
    assert [f["missing"] for f in record["found"]] == ["sys/acl.h", "attr/libattr.h"]
    assert 'apt = ["libacl1-dev", "libattr1-dev"]' in recipe_text("farmtest-acl", "0.1.0", record)
    # a build that still fails on a header whose package is installed already stops there
    outputs = [engine.output, engine.second]
    calls: list[list[str]] = []

    class StillMissing:
        name = "native"

        def build(self, ctx: BuildContext) -> BuildOutput:
            calls.append(list(ctx.options.system_packages.apt))
            raise build_failure("the build backend failed: exit 1", outputs[min(len(calls), 2) - 1])

    with pytest.raises(PackageFailure, match="also tried with the system packages libacl1-dev") as caught:
        sysdeps.build(StillMissing(), _ctx(tmp_path / "still", sdist, contents_mirror=mirror, system_packages="install"))
    assert calls == [[], ["libacl1-dev"], ["libacl1-dev", "libattr1-dev"]]
    assert "were installed already" in str(caught.value)
    assert len(calls) <= sysdeps.ROUNDS + 1


def test_a_header_no_package_provides(tmp_path: Path, mirror: str, sdist: Path) -> None:
    output = _compiler_output(tmp_path, "farm_no_such_header_q7.h")
    engine = Compiling(output, cures="never")
    ctx = _ctx(tmp_path, sdist, contents_mirror=mirror, system_packages="install")
    with pytest.raises(PackageFailure) as caught:
        sysdeps.build(engine, ctx)
    assert engine.calls == [[]]
    assert "no package in the Contents index of" in str(caught.value)
    assert "provides farm_no_such_header_q7.h (header); nothing was installed" in str(caught.value)
    assert caught.value.adjustments["systemPackages"]["packages"] == []  # type: ignore[attr-defined]


def test_a_failure_that_names_nothing_missing_is_left_alone(tmp_path: Path, sdist: Path) -> None:
    class Broken:
        name, calls = "native", 0

        def build(self, ctx: BuildContext) -> BuildOutput:
            self.calls += 1
            raise build_failure("the build backend failed", "error: a syntax error in setup.py\n")

    engine = Broken()
    with pytest.raises(PackageFailure) as caught:
        sysdeps.build(engine, _ctx(tmp_path, sdist))  # no mirror: nothing is looked up
    assert engine.calls == 1 and not hasattr(caught.value, "adjustments")


def test_apt_sources_in_both_formats() -> None:
    listed = ("deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://mirror.example/debian bullseye main\n"
              "# deb http://old.example/debian buster main\n"
              "deb-src http://mirror.example/debian bullseye main\n")
    deb822 = ("Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
              "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n")
    assert sysdeps.apt_sources(listed) == [("http://mirror.example/debian", "bullseye")]
    assert sysdeps.apt_sources(deb822) == [("http://deb.example/debian", "bookworm"),
                                           ("http://deb.example/debian", "bookworm-updates")]
    release = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_CODENAME=bullseye\n'
    target = sysdeps.apt_target(release, listed, "amd64")
    assert (target.mirror, target.suite, target.arch) == ("http://mirror.example/debian", "bullseye", "amd64")
    assert sysdeps.apt_target(release, listed, "amd64", mirror="http://site/debian/").mirror == "http://site/debian"
    assert sysdeps.apt_target("NAME=Alpine\n", "", "amd64") is None  # no suite, no sources: no Contents index
    assert sysdeps.contents_url("http://m/ubuntu", "jammy", "amd64", None) == "http://m/ubuntu/dists/jammy/Contents-amd64.gz"


def test_dnf_provides_output() -> None:
    out = ("Last metadata expiration check: 0:01:02 ago.\n"
           "libffi-devel-3.1-23.el8.x86_64 : Development files for libffi\n"
           "Repo        : baseos\nMatched from:\nFilename    : /usr/include/ffi.h\n")
    assert sysdeps.parse_dnf_provides(out) == "libffi-devel"
    assert sysdeps.parse_dnf_provides("1:openssl-devel-1.1.1k-5.el8.x86_64 : Files\n") == "openssl-devel"
    assert sysdeps.parse_dnf_provides("Error: No matches found.\n") is None


def test_the_suggested_recipe_is_a_valid_recipe(tmp_path: Path) -> None:
    record = {"family": "apt", "lookup": "the Contents index of bullseye/amd64 at http://deb.debian.org/debian",
              "packages": ["libacl1-dev", "libattr1-dev"], "outcome": "built",
              "found": [{"missing": "sys/acl.h", "kind": "header", "package": "libacl1-dev", "path": "usr/include/sys/acl.h"},
                        {"missing": "attr", "kind": "linker", "package": "libattr1-dev", "path": "usr/lib/libattr.so"}]}
    text = recipe_text("PyLibACL", "0.7.0", record, job=4)
    loaded = parse_recipe_text(text, tmp_path / "pylibacl.toml")  # the file a person would save it as
    assert loaded.recipe.system_packages.apt == ["libacl1-dev", "libattr1-dev"]
    assert loaded.recipe.system_packages.yum == []
    assert "sys/acl.h (header) from libacl1-dev" in text and "job 4" in text and "succeeded" in text
    rpm = recipe_text("x", "1", {**record, "family": "yum", "packages": ["libacl-devel"], "outcome": "failed"},
                      recipe="x")
    assert parse_recipe_text(rpm, tmp_path / "x.toml").recipe.system_packages.yum == ["libacl-devel"]
    assert "still failed" in rpm and "add these packages to it" in rpm
    options = sysdeps.with_packages(Options.model_validate({"system-packages": {"apt": ["a"]}}), "apt", ["b", "a"])
    assert options.system_packages.apt == ["a", "b"]


def test_recipe_suggest_reads_the_jobs(farm_home: Path) -> None:
    """`farm recipe suggest` from a failed job's record (Job.staged) and from a built job's provenance."""
    from farm.cli import ensure_db, main
    from farm.db.models import Artifact, Job, Provenance, Source, Submission
    from farm.db.session import session_scope
    from farm.recipes.suggest import for_job, for_project

    ensure_db()
    record = {"family": "apt", "lookup": "L", "packages": ["libacl1-dev"], "installed": False, "retry": False,
              "found": [{"missing": "sys/acl.h", "kind": "header", "package": "libacl1-dev", "path": "p"}]}
    with session_scope() as session:
        src = Source(sha256="a" * 64, name="pylibacl", version="0.7.0", filename="pylibacl-0.7.0.tar.gz", size=1,
                     storage_key="k")
        sub = Submission(kind="requirement", request="pylibacl==0.7.0")
        session.add_all([src, sub])
        session.flush()
        common = dict(submission_id=sub.id, source_id=src.id, platform="linux-x86_64", python="cp39",
                      build_id="cp39-manylinux_x86_64", engine="native", recipe_digest="d", cache_key="c")
        failed = Job(**common, state="failed", staged={"adjustments": {"systemPackages": record}})
        plain = Job(**common, state="failed", staged={})
        built = Job(**{**common, "engine": "cibuildwheel"}, state="succeeded")
        session.add_all([failed, plain, built])
        session.flush()
        art = Artifact(job_id=built.id, filename="pylibacl-0.7.0-cp39-cp39-manylinux_2_17_x86_64.whl", sha256="b" * 64,
                       size=1, name="pylibacl", version="0.7.0", storage_key="w")
        session.add(art)
        session.flush()
        statement = {"predicate": {"buildDefinition": {"internalParameters": {"adjustments": {"systemPackages": {
            **record, "installed": True, "retry": True, "outcome": "built"}}}}}}
        session.add(Provenance(artifact_id=art.id, statement=statement, digest="c" * 64, storage_key="p"))
        session.flush()
        assert for_job(plain) is None
        assert 'apt = ["libacl1-dev"]' in (for_job(failed) or "")
        text, job_id = for_project(session, "PyLibACL")
        assert job_id == built.id and "succeeded with them installed" in text  # a build that worked comes first
        with pytest.raises(NotFound):
            for_project(session, "pylibacl", "9.9")
        with pytest.raises(NotFound):
            for_project(session, "no-such-project")
    assert main(["recipe", "suggest", "pylibacl==0.7.0"]) == 0
    assert main(["recipe", "suggest", "no-such-project"]) == NotFound.exit_code


@pytest.mark.slow
@pytest.mark.network
def test_the_native_engine_names_the_package_for_a_real_sdist_and_installs_nothing(tmp_path: Path) -> None:
    """pylibacl 0.7.0 through the real native engine (sandboxed PEP 517 build) on this host, which
    lacks libacl1-dev: the host's own Contents index names it, and the default configuration installs
    nothing."""
    import sys

    from farm.worker.engines.native import NativeEngine
    from tests.helpers.sdists import cached_sdist

    _suite()
    if _installed("libacl1-dev"):
        pytest.skip("this host has libacl1-dev: pylibacl builds here without help")
    real = cached_sdist("pylibacl==0.7.0")
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    ctx = _ctx(tmp_path, real, pythons=[sys.executable])
    ctx.spec = ctx.spec.model_copy(update={"name": "pylibacl", "version": "0.7.0", "python": tag,
                                           "build_id": ctx.platform.build_identifier(tag)})
    with pytest.raises(PackageFailure) as caught:
        sysdeps.build(NativeEngine(), ctx)
    message = str(caught.value)
    assert "sys/acl.h (header)" in message and "libacl1-dev" in message, message
    assert 'apt = ["libacl1-dev"]' in message and "nothing is installed on this host" in message
    assert not _installed("libacl1-dev")
