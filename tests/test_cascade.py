"""Cascades: `farm rebuild --affected-by NAME[SPEC] | recipe:NAME | image:REF` plans rebuilds of every
published wheel built with that input, in dependency order, each with a new build tag; `farm recipe
check` names the wheels an older recipe built and the command that rebuilds them.

The fast tests publish wheels through the coordinator's real publish path (rows and statements
made here instead of a build); the slow one builds real sdists (a C extension and a package that
depends on it) through `farm up`, changes the first one's recipe and runs the cascade.

Bad inputs covered: a selector of an unknown kind (`foo:bar`), an empty `recipe:` or `image:`, a
selector that is no project name or carries extras, markers or a URL (all exit 2, `UsageError`); a
name nothing was built with or depends on, a recipe of a project with no published wheel, an image
no build used (exit 7, `NotFound`); `--server` (exit 2); a farm that does not exist (exit 11).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import textwrap
from pathlib import Path

import pytest

from farm.coordinator import cascade
from farm.coordinator.plan import DEFAULTS_DIGEST
from farm.db.models import Job
from farm.db.session import session_scope
from farm.errors import NotFound, UsageError
from farm.provenance.statement import inputs
from tests.helpers.farms import _farm, prepare_job, publish_prepared, settings  # noqa: F401 - settings is a fixture
from tests.helpers.wheels import make_wheel

TAG = "cp311-cp311-manylinux_2_17_x86_64"
IMAGE = "sha256:" + "ab" * 32


def _publish(settings, tmp: Path, name: str, version: str = "1.0", *, requires: tuple[str, ...] = (),  # type: ignore[no-untyped-def]
             env: list[str] | None = None, image: str | None = None, recipe_digest: str = DEFAULTS_DIGEST,
             python: str = "cp311") -> int:
    """Publish a wheel of `name` as a build whose statement records `env` (the build environment) and
    `image` (the build image's digest); returns the job id."""
    wheel = make_wheel(tmp / f"{name}-{python}", name, version, tag=TAG.replace("cp311", python), requires=requires)
    job_id, report = prepare_job(settings, wheel, version=version, python=python)
    stmt = json.loads(json.dumps(report.provenance))
    definition = stmt["predicate"]["buildDefinition"]
    if env is not None:
        definition["internalParameters"]["buildEnvironment"] = env
    if image is not None:
        definition["resolvedDependencies"].append({"name": "build-image", "digest": {"sha256": image.split(":")[1]}})
        stmt["predicate"]["runDetails"]["builder"]["version"]["image"] = "farm/bullseye:latest"
    with session_scope() as session:
        session.get(Job, job_id).recipe_digest = recipe_digest
    publish_prepared(settings, job_id, report.model_copy(update={"provenance": stmt}))
    return job_id


def _plan(settings, text: str, **kw) -> cascade.Plan:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return cascade.plan_rebuilds(session, settings, text, **kw)


def _order(plan: cascade.Plan) -> list[list[str]]:
    return [[p.target.label for p in r] for r in plan.rounds]


# selectors -----------------------------------------------------------------------------------------


def test_selectors_are_parsed_and_bad_ones_refused_with_a_usage_error() -> None:
    s = cascade.parse_selector("Cython==3.0.0")
    assert (s.kind, s.value, str(s.specifier)) == ("project", "cython", "==3.0.0")
    assert cascade.parse_selector("setuptools").specifier is None
    assert cascade.parse_selector("recipe:Foo_Bar").value == "foo-bar"
    assert cascade.parse_selector("image:sha256:abc").value == "sha256:abc"
    assert cascade.parse_selector("image:registry:5000/img@sha256:ab").value == "registry:5000/img@sha256:ab"
    for bad, match in [("foo:bar", "unknown kind 'foo'"), ("recipe:", "needs a value"), ("image:", "needs an image"),
                       ("recipe:not a name", "not a project name"), ("", "give NAME"), ("!!", "give NAME"),
                       ("numpy[extra]", "no extras"), ("numpy; python_version>'3'", "no extras, markers"),
                       ("pkg @ https://x/y.whl", "no extras, markers or URL")]:
        with pytest.raises(UsageError, match=match.replace("[", r"\[")):
            cascade.parse_selector(bad)


def test_rounds_put_a_project_after_what_it_depends_on_and_a_cycle_in_one_round() -> None:
    assert cascade._rounds({"a", "b", "c"}, {"c": {"b"}, "b": {"a"}, "a": set()}) == [{"a"}, {"b"}, {"c"}]
    # a diamond: d depends on b and c, both on a
    assert cascade._rounds({"a", "b", "c", "d"}, {"d": {"b", "c"}, "b": {"a"}, "c": {"a"}}) == [{"a"}, {"b", "c"}, {"d"}]
    # a cycle (x <-> y) shares a round; what depends on it comes after, what it depends on before
    assert cascade._rounds({"base", "x", "y", "top"}, {"x": {"y", "base"}, "y": {"x"}, "top": {"x"}}) == [
        {"base"}, {"x", "y"}, {"top"}]
    # dependencies outside the planned set do not order anything
    assert cascade._rounds({"p", "q"}, {"p": {"numpy"}, "q": set()}) == [{"p", "q"}]
    assert cascade._rounds(set(), {}) == []


def test_the_inputs_of_older_statements_are_read_from_what_they_recorded() -> None:
    def stmt(internal: dict) -> dict:
        return {"predicate": {"buildDefinition": {"internalParameters": internal, "externalParameters": {
            "recipe": {"name": "r", "digest": {"sha256": "d" * 64}}}, "resolvedDependencies": []},
            "runDetails": {"builder": {"version": {}}}}}

    assert inputs(stmt({"buildEnvironment": ["Cython==3.0.0", "setuptools==70.1"]})).build_environment == {
        "cython": "3.0.0", "setuptools": "70.1"}
    assert inputs(stmt({"adjustments": {"buildRequiresAsOf": {"resolved": ["wheel==0.40"]}}})).build_environment == {
        "wheel": "0.40"}
    assert inputs(stmt({"isolation": {"buildWheels": ["setuptools-69.0.0-py3-none-any.whl", "junk"]}})
                  ).build_environment == {"setuptools": "69.0.0"}
    got = inputs(stmt({"buildRequires": ["setuptools>=61", "cython==3.0.5"]}))
    assert got.build_environment == {"cython": "3.0.5"}
    assert (got.recipe_name, got.recipe_digest, got.image_digest) == ("r", "d" * 64, None)
    assert inputs(None).build_environment == {}


# plans on a farm's published wheels ---------------------------------------------------------------


def test_a_build_requirement_plans_what_was_built_with_it_then_what_depends_on_that(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lib = _publish(settings, tmp_path, "cas-lib", env=["cython==3.0.0", "setuptools==70.0.0"])
    _publish(settings, tmp_path, "cas-app", requires=("cas-lib>=1.0",), env=["setuptools==70.0.0"])
    _publish(settings, tmp_path, "cas-top", requires=("cas-app",), env=["setuptools==69.0.0"])
    _publish(settings, tmp_path, "cas-other", env=["cython==3.1.0"])
    _publish(settings, tmp_path, "cas-extra", requires=("cas-lib; extra == 'fast'",), env=["flit-core==3.9"])

    plan = _plan(settings, "cython==3.0.0")
    assert _order(plan) == [[f"cas-lib 1.0 cp311-linux-x86_64"], ["cas-app 1.0 cp311-linux-x86_64"],
                            ["cas-top 1.0 cp311-linux-x86_64"]]
    assert [p.build_tag for p in plan.items] == ["1", "1", "1"]
    assert plan.items[0].reason.startswith("built with cython==3.0.0 (a build requirement)")
    assert "depends at runtime on cas-lib" in plan.items[1].reason
    assert plan.items[0].target.job_id == lib
    assert _order(_plan(settings, "cython==3.0.0", dependents=False)) == [["cas-lib 1.0 cp311-linux-x86_64"]]
    # any specifier; a version no build used plans nothing and says which were used
    assert [p.target.name for p in _plan(settings, "cython>=3").items] == ["cas-lib", "cas-other", "cas-app", "cas-top"]
    none = _plan(settings, "cython==2.9")
    assert not none.items and "built with cython 3.0.0, 3.1.0" in none.note
    # a runtime dependency by name: its dependents (the project itself is the input, not rebuilt)
    assert _order(_plan(settings, "cas-lib")) == [["cas-app 1.0 cp311-linux-x86_64"], ["cas-top 1.0 cp311-linux-x86_64"]]
    assert not _plan(settings, "cas-lib==0.5").items  # cas-app needs >=1.0: not built against 0.5
    with pytest.raises(NotFound, match="no published wheel was built with no-such-project"):
        _plan(settings, "no-such-project")


def test_an_image_selects_by_digest_prefix_or_reference_and_a_rebuild_under_way_is_left_out(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _publish(settings, tmp_path, "img-a", image=IMAGE)
    _publish(settings, tmp_path, "img-b", env=["setuptools==70.0.0"])
    for ref in (IMAGE, "ab" * 8, f"farm/bullseye@{IMAGE}", "farm/bullseye:latest"):
        assert [p.target.name for p in _plan(settings, f"image:{ref}").items] == ["img-a"], ref
    assert _plan(settings, f"image:{IMAGE}").items[0].reason.startswith(f"built in image farm/bullseye:latest@{IMAGE} (")
    with pytest.raises(NotFound, match="the images recorded: farm/bullseye:latest@sha256:abab"):
        _plan(settings, "image:sha256:" + "cd" * 32)
    # once a rebuild is submitted and not ended, the target is not planned again
    with session_scope() as session:
        done = session.get(Job, _plan(settings, f"image:{IMAGE}").items[0].target.job_id)
        session.add(Job(submission=done.submission, source=done.source, platform=done.platform, python=done.python,
                        build_id=done.build_id, engine="native", recipe_digest=DEFAULTS_DIGEST, cache_key="x" * 64,
                        build_tag="1", rebuild_reason="r"))
    later = _plan(settings, f"image:{IMAGE}")
    assert not later.items and later.under_way and "is under way" in later.under_way[0]


def test_a_recipe_change_plans_the_wheels_an_older_recipe_built_and_recipe_check_offers_it(
        settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.config import reset_settings

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    monkeypatch.setenv("FARM_RECIPES_DIRS", json.dumps([str(recipes)]))
    reset_settings()
    from farm.config import get_settings

    settings = get_settings()
    _publish(settings, tmp_path, "rec-lib", env=["setuptools==70.0.0"])
    _publish(settings, tmp_path, "rec-lib", python="cp312", env=["setuptools==70.0.0"])
    _publish(settings, tmp_path, "rec-app", requires=("rec-lib",), env=["setuptools==70.0.0"])
    assert not _plan(settings, "recipe:rec-lib").items  # every wheel built with its current (default) recipe
    code, out, _ = _farm("recipe", "check")
    assert code == 0 and "older recipe" not in out

    (recipes / "rec-lib.toml").write_text(textwrap.dedent("""
        test-command = "{python} -c 'import rec_lib'"
        """))
    plan = _plan(settings, "recipe:rec-lib")
    assert _order(plan) == [["rec-lib 1.0 cp311-linux-x86_64", "rec-lib 1.0 cp312-linux-x86_64"],
                            ["rec-app 1.0 cp311-linux-x86_64"]]
    assert f"built with recipe digest {DEFAULTS_DIGEST[:12]}, now " in plan.items[0].reason
    code, out, _ = _farm("recipe", "check")
    assert code == 0, out
    assert "rec-lib: rec_lib-1.0-cp311-cp311-manylinux_2_17_x86_64.whl and 1 more" in out
    assert "farm rebuild --affected-by recipe:rec-lib" in out and "rec-app:" not in out

    code, out, err = _farm("rebuild", "--affected-by", "recipe:rec-lib", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0] == "rebuild plan for --affected-by recipe:rec-lib: 3 build(s) in 2 round(s)"
    assert out.index("rec-lib 1.0 cp312") < out.index("round 2:") < out.index("rec-app 1.0 cp311")
    with session_scope() as session:
        assert session.query(Job).filter(Job.build_tag.is_not(None)).count() == 0  # a dry run submits nothing
    code, _, err = _farm("rebuild", "--affected-by", "recipe:no-such-project", "--dry-run")
    assert code == NotFound.exit_code and "no published wheel of no-such-project" in err


def test_bad_selectors_exit_with_their_codes(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _farm("rebuild", "--affected-by", "foo:bar")
    assert code == UsageError.exit_code == 2 and "unknown kind 'foo'" in err
    code, _, err = _farm("rebuild", "--affected-by", "nothing-here", "--dry-run")
    assert code == NotFound.exit_code == 7 and "no published wheel was built with nothing-here" in err
    import farm.cli

    farm.cli._db_ready = False  # a new process would check again: this one has opened a farm already
    code, _, err = _farm("--home", str(tmp_path / "none"), "rebuild", "--affected-by", "x")
    assert code == 11 and not (tmp_path / "none" / "farm.db").exists()
    from farm.config import reset_settings

    monkeypatch.setenv("FARM_SERVER_URL", "http://127.0.0.1:9")
    reset_settings()
    code, _, err = _farm("rebuild", "--affected-by", "x")
    assert code == 2 and "runs on the farm's host" in err
    monkeypatch.delenv("FARM_SERVER_URL")
    reset_settings()


# a real cascade -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_recipe_change_cascades_through_real_builds(tmp_path: Path) -> None:
    """Through `farm up`: a C extension (cascade-lib) and a package depending on it (cascade-app) are
    built and published; the lib's recipe changes; `farm recipe check` offers the rebuild, the dry run
    lists lib then app, and the rebuild publishes both with build tag 1 (lib's rebuild ended before
    app's was submitted), the first files unchanged and still served."""
    import httpx

    from tests.helpers.env import free_port
    from tests.helpers.farms import Farm
    from tests.helpers.sdists import make_project, make_sdist

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    farm = Farm(tmp_path / "home", free_port())
    farm.home.mkdir(parents=True)
    (farm.home / "farm.toml").write_text(f"recipes_dirs = [{json.dumps(str(recipes))}]\n")
    lib = make_sdist(make_project(tmp_path / "src", "farmtest-cascade-lib"), tmp_path / "dist-lib")
    app = make_sdist(make_project(tmp_path / "src", "farmtest-cascade-app", c_extension=False,
                                  dependencies=["farmtest-cascade-lib>=0.1"]), tmp_path / "dist-app")
    farm.start()
    try:
        for sdist in (lib, app):
            done = farm.farm("submit", "--wait", "--timeout", "900", str(sdist))
            assert done.returncode == 0, done.stdout + done.stderr

        def files(project: str) -> dict[str, str]:
            page = httpx.get(f"{farm.url}/simple/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            return {f["filename"]: f["hashes"]["sha256"] for f in page.json()["files"]}

        before = {p: files(p) for p in ("farmtest-cascade-lib", "farmtest-cascade-app")}
        assert all(len(v) == 1 for v in before.values()), before
        unchanged = farm.farm("rebuild", "--affected-by", "recipe:farmtest-cascade-lib", "--dry-run")
        assert unchanged.returncode == 0 and "nothing to rebuild" in unchanged.stdout, unchanged.stdout + unchanged.stderr
        # the build environment is recorded: the setuptools the lib was built with selects it
        statement = json.loads(httpx.get(f"{farm.url}/files/farmtest-cascade-lib/"
                                         f"{next(iter(before['farmtest-cascade-lib']))}.provenance.json").content)
        env = statement["predicate"]["buildDefinition"]["internalParameters"]["buildEnvironment"]
        setuptools = next(p for p in env if p.startswith("setuptools=="))
        by_setuptools = farm.farm("rebuild", "--affected-by", setuptools, "--dry-run", "--only-direct")
        assert "farmtest-cascade-lib" in by_setuptools.stdout, by_setuptools.stdout + by_setuptools.stderr

        (recipes / "farmtest-cascade-lib.toml").write_text(
            'test-command = "{python} -c \'import farmtest_cascade_lib as m; assert m.add(2, 3) == 5\'"\n')
        check = farm.farm("recipe", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "farm rebuild --affected-by recipe:farmtest-cascade-lib" in check.stdout

        dry = farm.farm("rebuild", "--affected-by", "recipe:farmtest-cascade-lib", "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert dry.stdout.index("round 1:") < dry.stdout.index("farmtest-cascade-lib 0.1.0") < dry.stdout.index(
            "round 2:") < dry.stdout.index("farmtest-cascade-app 0.1.0")

        run = farm.farm("rebuild", "--affected-by", "recipe:farmtest-cascade-lib", "--timeout", "1200", timeout=1500)
        assert run.returncode == 0, run.stdout + run.stderr
        for project, old in before.items():
            now = files(project)
            (first,) = old
            tagged = first.replace("-0.1.0-", "-0.1.0-1-")
            assert set(now) == {first, tagged}, now
            assert now[first] == old[first]  # the published file never changed, and is still served
            assert hashlib.sha256(httpx.get(f"{farm.url}/files/{project}/{first}").content).hexdigest() == old[first]
        with sqlite3.connect(farm.home / "farm.db") as db:
            rows = {name: (created, finished, reason) for name, created, finished, reason in db.execute(
                "SELECT source.name, job.created_at, job.finished_at, job.rebuild_reason FROM job JOIN source "
                "ON job.source_id = source.id WHERE job.build_tag = '1'")}
        assert rows["farmtest-cascade-lib"][1] <= rows["farmtest-cascade-app"][0]  # lib's rebuild ended first
        assert "recipe farmtest-cascade-lib changed" in rows["farmtest-cascade-lib"][2]
        assert "depends at runtime on farmtest-cascade-lib" in rows["farmtest-cascade-app"][2]
        # the recipe is current now: nothing more to offer
        again = farm.farm("recipe", "check")
        assert "older recipe" not in again.stdout, again.stdout
    finally:
        farm.stop()
