"""Publishing that nothing can overwrite, and names that cannot impersonate (attacks found on the
embedded farm). In-process: the coordinator's real event handling and publish path
(`farm.coordinator.events.apply_event`), real submissions (`farm.coordinator.submit`), the real
`farm` commands (`farm.cli.main`), SQLite; the race and the database constraint also on PostgreSQL.

- a second, different file under a published wheel's file name is refused ("File already exists"):
  the job fails with that reason, the index is unchanged byte for byte, the first wheel still
  verifies; the same bytes again are idempotent (one artifact)
- names that normalize together (`Foo_Bar` / `foo-bar`) cannot replace each other's files, and the
  database refuses a second live artifact under one normalized file name (migration 0004)
- a wheel named after another project (or another version, or with another project's METADATA)
  than its sdist is refused
- `ſix` (long s) and a Kelvin-sign `K` are refused as project names at submit; an sdist's top
  folder must be the file name's project and version
- promote, publish-to and page rewrites refuse a file whose sha256 is not the recorded one;
  `farm verify` fails a served copy whose bytes changed
- a recipe file named for the project but not normalized is an error at submit (exit 3, no job)
- concurrent submissions of one new sdist give one source row and no error
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError

import farm.cli
from farm.cli import main
from farm.config import get_settings, reset_settings
from farm.coordinator import submit as submit_mod
from farm.coordinator.events import apply_event
from farm.db.models import Artifact, ChannelEntry, Job, Source, Submission
from farm.db.session import session_scope
from farm.errors import FarmError, SdistError
from farm.messages import ArtifactReport, JobEvent
from farm.util.archive import inspect_sdist
from tests.helpers.concurrency import at_once
from tests.helpers.farms import (  # noqa: F401 - the fixture: `farm init`, migrated database
    _farm, artifact, prepare_job, publish_wheel, settings)
from tests.helpers.indexes import index  # noqa: F401 - env and index are fixtures
from tests.helpers.intake import (  # noqa: F401 - env and index are fixtures
    Bad, PLATFORMS, _file, _req, _tar, _zip, check_refused, env, rows, sha256_of, tree)
from tests.helpers.sdists import (  # noqa: F401 - env and index are fixtures
    D, F, LIMITS, Z, make_good, pkg_info, sdist_members, write_tar, write_zip)
from tests.helpers.wheels import make_wheel


KELVIN = "\u212a"  # KELVIN SIGN: lowercases to "k"
LONG_S = "\u017f"  # LATIN SMALL LETTER LONG S: casefolds to "s"


# Helpers ----------------------------------------------------------------------------------------------


def deliver(settings, job_id: int, report: ArtifactReport) -> Job:  # type: ignore[no-untyped-def]
    """The worker's `publishing` event for the job, through the coordinator's real event handling."""
    apply_event(JobEvent(job_id=job_id, attempt=1, worker="test-worker", state="publishing", artifacts=[report]),
                settings)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def built_from(job_id: int, name: str, version: str) -> None:
    """Make the job's sdist record say `name` `version` (the wheel was built by hand for another project)."""
    with session_scope() as s:
        source = s.get(Job, job_id).source
        source.name, source.version, source.filename = name, version, f"{name}-{version}.tar.gz"


def artifact_rows() -> list[tuple[int, str, str]]:
    with session_scope() as s:
        return [(a.id, a.filename, a.sha256) for a in s.scalars(select(Artifact).order_by(Artifact.id))]


def channel_rows() -> list[tuple[int, str]]:
    with session_scope() as s:
        return [(e.artifact_id, e.channel) for e in s.scalars(select(ChannelEntry).order_by(ChannelEntry.id))]


def verify_json(*args: str) -> tuple[int, list[dict]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["verify", *args, "--json"])
    return code, json.loads(out.getvalue())


def replace_file(path: Path, data: bytes) -> None:
    """Other bytes under the same path, as a new file (the index's copies are hard links of one another:
    this changes this copy only)."""
    path.unlink()
    path.write_bytes(data)


# A published file name is immutable ----------------------------------------------------------------


def test_a_different_file_under_a_published_name_is_refused_and_the_first_stays(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: a second, different imdemo-1.0.tar.gz (other bytes, same file name) is submitted and built;
    its wheel has the published wheel's file name with other bytes and used to replace it silently.
    Refused like PyPI's "File already exists": the job fails with that reason, nothing in any index tree
    changes (sha256 of every file before/after), the first wheel still verifies. The same bytes
    published again stay one artifact."""
    first = make_wheel(tmp_path / "a", "imdemo", "1.0")
    first_id = publish_wheel(settings, first, version="1.0")
    served = settings.index / "files" / "imdemo" / first.name
    first_sha = sha256_of(served)
    before, arts, entries = tree(settings.index), artifact_rows(), channel_rows()

    other = make_wheel(tmp_path / "b", "imdemo", "1.0", size_pad=100)  # same file name, other bytes
    assert other.name == first.name and sha256_of(other) != first_sha
    job_id, report = prepare_job(settings, other, version="1.0",
                                 sdist_sha256=hashlib.sha256(b"a second imdemo-1.0.tar.gz").hexdigest())
    job = deliver(settings, job_id, report)
    assert job.state == "failed" and job.failure_kind == "package"
    assert job.error.startswith("publishing refused: File already exists: imdemo-1.0-py3-none-any.whl"), job.error
    assert f"artifact #{first_id}" in job.error and "never replaced" in job.error
    assert tree(settings.index) == before  # no file written, replaced or added, no page rewritten
    assert sha256_of(served) == first_sha
    assert artifact_rows() == arts and channel_rows() == entries
    code, reports = verify_json("imdemo==1.0", "--offline")
    assert code == 0 and len(reports) == 2 and all(r["ok"] for r in reports)  # staging and dev

    # The very same bytes again (a duplicate delivery, an identical rebuild): idempotent, one artifact.
    job_id, report = prepare_job(settings, first, version="1.0")
    assert deliver(settings, job_id, report).state == "succeeded"
    assert artifact_rows() == arts and tree(settings.index) == before


@pytest.mark.parametrize(("first", "second"), [("Foo_Bar", "foo-bar"), ("foo-bar", "Foo_Bar")])
def test_names_that_normalize_together_cannot_replace_each_other(settings, tmp_path: Path, first: str,  # type: ignore[no-untyped-def]
                                                                 second: str) -> None:
    """Attack: Foo_Bar-1.0 and foo-bar-1.0 are one project (PEP 503); their wheels
    Foo_Bar-1.0-py3-none-any.whl and foo_bar-1.0-py3-none-any.whl are one file to an installer, and the
    later one used to replace or shadow the earlier. The second is refused, whichever comes first."""
    a = make_wheel(tmp_path / "a", first, "1.0")
    publish_wheel(settings, a, version="1.0")
    folder = settings.index / "files" / "foo-bar"
    before, files = tree(settings.index), sorted(p.name for p in folder.iterdir())
    b = make_wheel(tmp_path / "b", second, "1.0")
    assert b.name != a.name and b.name.lower() == a.name.lower()
    job_id, report = prepare_job(settings, b, version="1.0", sdist_sha256=hashlib.sha256(second.encode()).hexdigest())
    job = deliver(settings, job_id, report)
    assert job.state == "failed" and f"File already exists: {a.name}" in job.error, job.error
    assert tree(settings.index) == before and sorted(p.name for p in folder.iterdir()) == files
    pages = [json.loads((settings.index / t / "simple" / "foo-bar" / "index.json").read_bytes())
             for t in ("", "dev")]
    assert all([f["filename"] for f in page["files"]] == [a.name] for page in pages)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_settings(request: pytest.FixtureRequest, farm_home: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`farm init` in FARM_HOME with its database on SQLite, or on a fresh PostgreSQL database."""
    with _database(request.param, monkeypatch):
        assert main(["init"]) == 0
        farm.cli.ensure_db()
        yield get_settings()


@contextlib.contextmanager
def _database(dialect: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from farm.db.session import engine_for, get_engine

    if dialect == "sqlite":
        yield
        return
    from tests.helpers.servers import drop_database, pg_database

    name, url = pg_database("farmtest_immutable")
    monkeypatch.setenv("FARM_DATABASE_URL", url)
    reset_settings()
    farm.cli._db_ready = False
    try:
        yield
        assert get_engine().dialect.name == "postgresql"
    finally:
        engine_for(url).dispose()
        drop_database(name)


def test_the_database_refuses_a_second_live_artifact_under_one_normalized_name(db_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: a writer that skips publish's checks (an older coordinator, a race between two) records a
    second live artifact whose file name normalizes to a published one (other spelling, other bytes):
    the unique index on artifact.filename_key refuses it. Once `farm gc` removed the first artifact's
    files (removed_at), the name may be built again."""
    from farm.db.models import utcnow
    from farm.index.simple import file_key

    art_id = publish_wheel(db_settings, make_wheel(tmp_path / "a", "Foo_Bar", "1.0"), version="1.0")
    first = artifact(art_id)
    assert first.filename_key == file_key("foo_bar-1.0.0-py3-none-any.whl") == "foo_bar-1-py3-none-any.whl"

    def insert() -> None:
        with session_scope() as s:
            s.add(Artifact(job_id=first.job_id, filename="foo_bar-1.0.0-py3-none-any.whl",
                           filename_key=file_key("foo_bar-1.0.0-py3-none-any.whl"), sha256="f" * 64, size=1,
                           name="foo-bar", version="1.0.0", storage_key="k"))

    with pytest.raises(IntegrityError):
        insert()
    with session_scope() as s:
        s.get(Artifact, art_id).removed_at = utcnow()
    insert()


def test_migration_0004_keys_existing_artifacts_and_keeps_the_newest_of_a_shared_name(tmp_path: Path) -> None:
    """Upgrade of a farm that published before names were immutable: two live artifacts already share a
    file name (a rebuild replaced the page entry). The newest keeps the key, the older gets NULL, the
    unique index is built; a removed artifact keeps its key."""
    from alembic import command
    from sqlalchemy import text

    from farm.db.migrate import alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        for i, (filename, removed) in enumerate([("Old-1.0-py3-none-any.whl", None),
                                                 ("old-1.0-py3-none-any.whl", None),
                                                 ("old-0.9-py3-none-any.whl", "2026-01-01")], start=1):
            conn.execute(text(
                "INSERT INTO artifact (id, job_id, filename, sha256, size, name, version, tags, requires_dist, "
                "storage_key, verified, removed_at, created_at) VALUES (:id, 1, :f, :s, 1, 'old', '1.0', '[]', '[]', "
                "'k', 1, :r, '2026-01-01')"), {"id": i, "f": filename, "s": f"{i:064x}", "r": removed})
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        keys = conn.execute(text("SELECT id, filename_key FROM artifact ORDER BY id")).all()
        assert keys == [(1, None), (2, "old-1-py3-none-any.whl"), (3, "old-0.9-py3-none-any.whl")]
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(text("UPDATE artifact SET filename_key = 'old-1-py3-none-any.whl' WHERE id = 1"))


# The wheel's project and version are the sdist's ----------------------------------------------------------


@pytest.mark.parametrize("case", ["file-name", "metadata", "version"])
def test_a_wheel_of_another_project_or_version_is_refused(settings, tmp_path: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    """Attack: the sdist immine-1.0.tar.gz whose build names its distribution after another project
    (the wheel is imother-1.0-...whl), or whose wheel carries imother's METADATA under immine's file
    name, or another version (immine-2.0-...whl): it used to publish under that project or version.
    Refused at the coordinator (the worker is not trusted); nothing is recorded or written."""
    src = tmp_path / "src"
    if case == "file-name":
        wheel = make_wheel(src, "imother", "1.0")
    elif case == "metadata":
        wheel = make_wheel(src, "imother", "1.0").rename(src / "immine-1.0-py3-none-any.whl")
    else:
        wheel = make_wheel(src, "immine", "2.0")
    before = tree(settings.index)
    job_id, report = prepare_job(settings, wheel, version="1.0")
    built_from(job_id, "immine", "1.0")
    job = deliver(settings, job_id, report)
    assert job.state == "failed", job.error
    assert "built from the sdist of immine 1.0: a build publishes only its own project and version" in job.error
    assert ("METADATA says imother 1.0" in job.error) == (case == "metadata")
    assert artifact_rows() == [] and channel_rows() == []
    assert tree(settings.index) == before
    assert not (settings.index / "simple" / "imother").exists() and not (settings.index / "files").exists()


# Names are ASCII; the top folder is the file's project and version ------------------------------------------


def _named(case: str, filename: str, top: str, name: str, version: str = "1.0"):  # type: ignore[no-untyped-def]
    return _file(case, filename, _tar(lambda _r: sdist_members(top, name, version, meta=pkg_info(name, version))))


ASCII_BAD = [
    Bad("long-s-file-name", _named("long-s-file-name", f"{LONG_S}ix-1.0.tar.gz", f"{LONG_S}ix-1.0", f"{LONG_S}ix"),
        SdistError, 4, (f"'{LONG_S}ix' is not a valid project name",)),
    Bad("kelvin-file-name", _named("kelvin-file-name", f"{KELVIN}iwi-1.0.tar.gz", f"{KELVIN}iwi-1.0", f"{KELVIN}iwi"),
        SdistError, 4, (f"'{KELVIN}iwi' is not a valid project name",)),
    Bad("long-s-pkg-info", _named("long-s-pkg-info", "six-1.0.tar.gz", "six-1.0", f"{LONG_S}ix"),
        SdistError, 4, ("six-1.0.tar.gz: six-1.0/PKG-INFO Name", f"'{LONG_S}ix' is not a valid project name",
                        "U\\+017F")),
    Bad("kelvin-pkg-info", _named("kelvin-pkg-info", "kiwi-1.0.tar.gz", "kiwi-1.0", f"{KELVIN}iwi"),
        SdistError, 4, ("kiwi-1.0/PKG-INFO Name", f"'{KELVIN}iwi' is not a valid project name", "U\\+212A")),
    Bad("long-s-requirement", _req(f"{LONG_S}ix==1.0"), FarmError, 1, (f"{LONG_S}ix==1.0",)),
    Bad("kelvin-requirement", _req(f"{KELVIN}iwi==1.0"), FarmError, 1, (f"{KELVIN}iwi==1.0",)),
]


@pytest.mark.parametrize("case", ASCII_BAD, ids=[c.id for c in ASCII_BAD])
def test_non_ascii_project_names_are_refused_at_submit(env, monkeypatch: pytest.MonkeyPatch, case: Bad) -> None:  # type: ignore[no-untyped-def]
    """Attack: `ſix` (long s, casefolds to "six") and `Kiwi` with a Kelvin sign (lowercases to "kiwi")
    as the sdist's file name, its PKG-INFO Name, or a requirement: `re.IGNORECASE` without `re.ASCII`
    let them pass as project names, and the Kelvin one normalized to another project's name
    (kiwi-1.0.tar.gz with Name: Kiwi was accepted as kiwi). Refused; nothing recorded or stored."""
    check_refused(env, monkeypatch, case)


TOP_BAD = [
    Bad("top-other-project", _named("top-other-project", "foo-1.0.tar.gz", "bar-1.0", "foo"), SdistError, 4,
        ("foo-1.0.tar.gz: the top-level directory 'bar-1.0' is bar 1.0, but the file name says foo 1.0",)),
    Bad("top-other-version", _named("top-other-version", "foo-1.0.tar.gz", "foo-2.0", "foo"), SdistError, 4,
        ("the top-level directory 'foo-2.0' is foo 2.0, but the file name says foo 1.0",)),
    Bad("top-no-version", _named("top-no-version", "foo-1.0.tar.gz", "foo", "foo"), SdistError, 4,
        ("the top-level directory 'foo' is not NAME-VERSION", "expected 'foo-1.0'")),
    Bad("top-non-ascii", _named("top-non-ascii", "kiwi-1.0.tar.gz", f"{KELVIN}iwi-1.0", "kiwi"), SdistError, 4,
        (f"the top-level directory '{KELVIN}iwi-1.0' is not NAME-VERSION",)),
    Bad("top-other-project-zip", _file("top-other-project-zip", "foo-1.0.zip", _zip(lambda _r: [
        Z("bar-1.0/"), Z("bar-1.0/PKG-INFO", pkg_info("foo", "1.0"))])), SdistError, 4,
        ("foo-1.0.zip: the top-level directory 'bar-1.0' is bar 1.0",)),
]


@pytest.mark.parametrize("case", TOP_BAD, ids=[c.id for c in TOP_BAD])
def test_a_top_folder_that_is_not_the_file_name_is_refused_at_submit(env, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                                      case: Bad) -> None:
    """Bad input: foo-1.0.tar.gz whose files sit in bar-1.0/ (another project), foo-2.0/ (another
    version), foo/ (no version) or a non-ASCII folder: the archive says one thing in its name and
    another inside. Refused before anything is recorded."""
    check_refused(env, monkeypatch, case)


def test_a_top_folder_spelled_differently_but_equal_is_accepted(tmp_path: Path) -> None:
    """Not an attack: legacy spellings of the same name and version (Foo.Bar-1.0.0/ in
    foo_bar-1.0.tar.gz; PyYAML-6.0.2/ in pyyaml-6.0.2.tar.gz) normalize to the file name's."""
    path = write_tar(tmp_path / "foo_bar-1.0.tar.gz", [D("Foo.Bar-1.0.0"), F("Foo.Bar-1.0.0/PKG-INFO",
                                                                                pkg_info("Foo.Bar", "1.0"))])
    assert (inspect_sdist(path, LIMITS).name, inspect_sdist(path, LIMITS).top_dir) == ("foo-bar", "Foo.Bar-1.0.0")
    path = write_zip(tmp_path / "pyyaml-6.0.2.zip", [Z("PyYAML-6.0.2/"), Z("PyYAML-6.0.2/PKG-INFO",
                                                                           pkg_info("PyYAML", "6.0.2"))])
    assert inspect_sdist(path, LIMITS).version == "6.0.2"


# Copies are checked against the record -------------------------------------------------------------------


def test_promote_refuses_a_stored_file_changed_after_publishing(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: the stored wheel (what promotion copies into the next channel) is replaced by other bytes
    after publishing; `farm promote` used to copy it without looking. Refused with the reason (exit 8),
    nothing enters stable; with the stored file back, promotion goes through."""
    from farm.storage import get_storage

    wheel = make_wheel(tmp_path / "src", "improm", "1.0")
    art = artifact(publish_wheel(settings, wheel, version="1.0"))
    stored = get_storage().local_path(art.storage_key)
    assert stored is not None and stored.is_file()
    good = stored.read_bytes()
    changed = good + b"\0"
    replace_file(stored, changed)
    entries, stable = channel_rows(), tree(settings.index / "stable")
    code, out, err = _farm("promote", "improm==1.0", "--to", "stable")
    assert code == 8, out + err
    assert "improm-1.0-py3-none-any.whl: refusing to promote it to stable" in err
    assert f"{stored} has sha256 {hashlib.sha256(changed).hexdigest()}" in err
    assert "changed after publishing" in err
    assert channel_rows() == entries and tree(settings.index / "stable") == stable
    replace_file(stored, good)
    assert _farm("promote", "improm==1.0", "--to", "stable")[0] == 0
    assert sha256_of(settings.index / "stable" / "files" / "improm" / wheel.name) == art.sha256


def test_a_page_rewrite_never_copies_a_changed_file_into_a_tree(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: the stored wheel is replaced by other bytes and a tree's copy goes missing; the next page
    rewrite (`farm reindex`, also run by yank and promote) used to copy the stored file into the tree as
    it was. Refused with the reason; the tree gets no changed copy."""
    from farm.storage import get_storage

    wheel = make_wheel(tmp_path / "src", "imregen", "1.0")
    art = artifact(publish_wheel(settings, wheel, version="1.0"))
    stored = get_storage().local_path(art.storage_key)
    assert stored is not None
    replace_file(stored, stored.read_bytes() + b"\0")
    dev_copy = settings.index / "dev" / "files" / "imregen" / wheel.name
    dev_copy.unlink()
    code, out, err = _farm("reindex", "imregen")
    assert code != 0, out + err
    assert f"refusing to copy it into {settings.index / 'dev'}" in err and "changed after publishing" in err
    assert not dev_copy.exists()
    assert sha256_of(settings.index / "files" / "imregen" / wheel.name) == art.sha256  # staging's copy untouched


def test_publish_to_refuses_a_served_file_changed_after_publishing(settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: the index tree's copy (what `farm publish-to` uploads) is replaced by other bytes; it used
    to be uploaded as it was. Refused before the target is contacted (the target's port is closed: the
    error is the digest, not the connection)."""
    wheel = make_wheel(tmp_path / "src", "imup", "1.0")
    art = artifact(publish_wheel(settings, wheel, version="1.0"))
    monkeypatch.setenv("FARM_UPLOAD_TARGETS", json.dumps({"internal": {"url": "http://127.0.0.1:9/"}}))
    reset_settings()
    served = settings.index / "files" / "imup" / wheel.name
    replace_file(served, served.read_bytes() + b"\0")
    code, out, err = _farm("publish-to", "internal", "imup==1.0")
    assert code != 0, out + err
    assert "refusing to upload it to internal" in err and f"the farm recorded {art.sha256}" in err
    assert "cannot reach" not in err
    with session_scope() as s:
        assert s.get(Artifact, art.id).uploads == []


def test_verify_fails_a_served_copy_whose_bytes_changed(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Attack: one served copy (stable's) is replaced by other bytes; `farm verify NAME==VERSION` used to
    check only the first copy it found. Every tree's copy is checked, against the record and the
    signature: stable's fails both, the others pass."""
    wheel = make_wheel(tmp_path / "src", "imver", "1.0")
    art = artifact(publish_wheel(settings, wheel, version="1.0"))
    assert _farm("promote", "imver==1.0", "--to", "stable")[0] == 0
    code, reports = verify_json("imver==1.0", "--offline")
    assert code == 0 and [r["wheel"].split("(")[1].split(":")[0] for r in reports] == ["staging", "stable", "prod",
                                                                                       "dev"]
    stable = settings.index / "stable" / "files" / "imver" / wheel.name
    replace_file(stable, stable.read_bytes() + b"\0")
    code, reports = verify_json("imver==1.0", "--offline")
    assert code == 1
    by_tree = {r["wheel"].split("(")[1].split(":")[0]: r for r in reports}
    assert [t for t, r in by_tree.items() if not r["ok"]] == ["stable"]
    checks = {c["name"]: c for c in by_tree["stable"]["checks"]}
    assert checks["record"]["ok"] is False and "changed after publishing" in checks["record"]["detail"]
    assert f"the farm recorded {art.sha256}" in checks["record"]["detail"]
    assert checks["subject"]["ok"] is False and "changed after it was signed" in checks["subject"]["detail"]
    # The text output says which copy failed.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["verify", "imver==1.0", "--offline"]) == 1
    assert f"{wheel.name} (stable: {stable})" in out.getvalue() and "FAIL  record" in out.getvalue()


# Recipes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("recipe", "project", "expected"), [("PyYAML.toml", "PyYAML", "pyyaml.toml"),
                                                              ("foo_bar.toml", "foo_bar", "foo-bar.toml")])
def test_a_recipe_file_whose_name_is_not_normalized_is_an_error_at_submit(env, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                                          recipe: str, project: str,
                                                                          expected: str) -> None:
    """Bad input: recipes/PyYAML.toml or recipes/foo_bar.toml (not the normalized project name) was
    silently ignored at submit, so the package built without its recipe, although `farm recipe check`
    flags the file. Submit exits 3 (RecipeError) naming the file, and no job is recorded or sent."""
    recipes = env.root / "recipes"
    recipes.mkdir()
    (recipes / recipe).write_text('before-build = ["true"]\n')
    monkeypatch.setenv("FARM_RECIPES_DIRS", json.dumps([str(recipes)]))
    reset_settings()
    sdist = make_good(env.root / "in", project, "1.0")
    before, sent = rows(), list(env.sent)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["submit", str(sdist)]) == 3
    assert f"rename '{recipe}' to '{expected}'" in err.getvalue() and str(recipes / recipe) in err.getvalue()
    assert rows() == before and env.sent == sent
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert main(["recipe", "check", str(recipes)]) == 3
    assert f"rename '{recipe}' to '{expected}'" in out.getvalue()
    (recipes / recipe).rename(recipes / expected)  # named right, it is used
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["submit", str(sdist)]) == 0
    with session_scope() as s:
        assert {j.recipe_name for j in s.scalars(select(Job))} == {expected}


# Concurrent submissions -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database(request: pytest.FixtureRequest, env, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The submit environment (tests/test_submit.py) on SQLite, or on a fresh PostgreSQL database."""
    with _database(request.param, monkeypatch):
        farm.cli.ensure_db()
        yield env


def test_concurrent_submissions_of_one_new_sdist_share_one_source(database, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Race: two submissions of the same new sdist at once (two CLIs, two API requests). Both find no
    source row and both insert one (held at a barrier after inspecting, so both really do): the second
    used to fail with a UniqueViolation on source.sha256 (HTTP 500 through the API). Now one source row,
    both submissions recorded, no error, and the second's jobs reuse the first's (one build per target)."""
    env = database
    path = make_good(env.root / "good")
    barrier = threading.Barrier(2, timeout=30)
    inspect = submit_mod._inspect_file

    def inspect_together(*args, **kwargs):  # type: ignore[no-untyped-def]
        info = inspect(*args, **kwargs)
        barrier.wait()  # both submissions have looked for the source row and found none
        return info

    monkeypatch.setattr(submit_mod, "_inspect_file", inspect_together)
    results, errors = at_once(lambda: submit_mod.submit(str(path), settings=get_settings()), 2, timeout=60,
                              together=False)
    assert errors == [] and len(results) == 2
    with session_scope() as s:
        (source,) = s.scalars(select(Source)).all()
        assert source.sha256 == sha256_of(path)
        assert len(s.scalars(select(Submission)).all()) == 2
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert len(jobs) == 2 * len(PLATFORMS) and all(j.source_id == source.id for j in jobs)
        assert sum(j.cached_from_id is None for j in jobs) == len(PLATFORMS)
    assert len(env.sent) == len(PLATFORMS)
    assert sha256_of(env.home / "storage" / source.storage_key) == source.sha256
