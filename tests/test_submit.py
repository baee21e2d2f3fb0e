"""Submit (`farm.coordinator.submit.submit`) in-process, without a worker and without the network.

The upstream is a static PEP 503 index served from tmp_path on 127.0.0.1 (FARM_UPSTREAM_INDEX);
build messages are caught by replacing `dispatch.send`. A good sdist (`good-1.0.tar.gz`, made by
hand with tarfile) is submitted before every bad input.

Happy path:
  * a valid sdist: one Source with the file's sha256 (the stored copy has it too), one queued Job
    per planned target, one build message per job carrying the JobSpec fields
  * the same sdist again: new Jobs pointing at the first ones (cached_from_id), no message sent
  * a requirement NAME==VERSION resolved on the local upstream (sha256 from the #sha256 fragment):
    Source with upstream_url; resubmitting it works with the upstream stopped

Bad inputs; each is refused with a message naming the problem (asserted on key words), and
afterwards no Source/Submission/Job row was added, the good sdist's rows and stored file are
unchanged, no message was sent, nothing new is in FARM_HOME (storage/sdists, tmp) and nothing
was written outside FARM_HOME (no `evil`/`abs-evil`/`outside` file, the cwd unchanged and empty):
  * not an sdist: random bytes named .tar.gz, a wheel renamed .tar.gz, a wheel renamed .zip,
    a wheel under its own .whl name, a .txt file, random bytes named .zip
  * name/version not matching the archive (PEP 625): foo-1.0.tar.gz holding bar-2.0 PKG-INFO,
    foo-1.0.tar.gz holding foo 2.0
  * hostile members: an absolute path, `..` components (tar: after the top directory and as the
    first member; zip), symlinks out of the tree (relative, absolute; tar and zip)
  * over FARM_MAX_SDIST_BYTES; archive bombs over FARM_MAX_UNPACKED_BYTES (declared tar sizes,
    a gzip stream inflated by a huge pax header, a zip of zeros)
  * a path that does not exist (with an sdist suffix, and without one)
  * not a requirement ("foo bar baz"), an `===` pin that is not a version
  * upstream: unknown project, unknown version, a version with only wheels, nothing satisfying
    a range, a sha256 mismatch between the index record and the downloaded file, an index record
    without sha256, a download whose PKG-INFO names another project

Also (each once a bug): a directory is reported as a directory; a request longer than a file name
is not taken for a path; an sdist no target can build is not left in storage; the stored sdist
is a copy, not a link to the submitted file; an index record carrying the sha256 of another
project's stored sdist is refused; a pin spelled 1.0.0 for a known 1.0 does not ask upstream.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.config import get_settings
from farm.coordinator.plan import plan
from farm.coordinator.submit import submit
from farm.db.models import Job, Source, Submission
from farm.db.session import session_scope
from farm.errors import FarmError, SdistError, UpstreamError
from farm.messages import JobSpec
from farm.storage import sdist_key
from tests.helpers.indexes import StaticIndex, index  # noqa: F401 - fixtures
from tests.helpers.intake import (  # noqa: F401 - fixtures
    BAD, Bad, Env, PLATFORMS, _bomb_pax, _inputs, _req, check_refused, env, sha256_of, submit_good)
from tests.helpers.sdists import make_good, write_tar


# A static upstream index -------------------------------------------------------------------------


# Snapshots: rows and files -----------------------------------------------------------------------


# Bad inputs, shared with tests/test_cli_errors.py ------------------------------------------------


# Fixtures ----------------------------------------------------------------------------------------


# Happy path ------------------------------------------------------------------------------------------


def test_submit_valid_sdist(env: Env) -> None:
    path = make_good(env.root / "good")
    digest = sha256_of(path)
    settings = get_settings()
    result = submit(str(path), settings=settings)

    targets = plan(name="good", version="1.0", sdist_sha256=digest, requires_python=">=3.9", settings=settings)
    assert len(targets) == len(PLATFORMS)
    with session_scope() as s:
        (source,) = s.scalars(select(Source)).all()
        assert (source.sha256, source.name, source.version, source.filename, source.size, source.upstream_url,
                source.requires_python) == \
            (digest, "good", "1.0", "good-1.0.tar.gz", path.stat().st_size, None, ">=3.9")
        assert source.storage_key == sdist_key(digest, "good-1.0.tar.gz")
        assert sha256_of(env.home / "storage" / source.storage_key) == digest
        (submission,) = s.scalars(select(Submission)).all()
        assert (submission.kind, submission.request, submission.parent_job_id) == ("file", str(path), None)
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [(j.platform, j.python, j.build_id, j.cache_key) for j in jobs] == \
            [(t.platform, t.python, t.build_id, t.cache_key) for t in targets]
        assert all(j.state == "queued" and j.attempt == 1 and j.cached_from_id is None and j.source_id == source.id
                   and j.submission_id == submission.id for j in jobs)
        assert result.submission_id == submission.id
        assert result.jobs == [(j.id, j.build_id, "queued") for j in jobs]
        job_rows = [(j.id, j.platform, j.python, j.build_id, j.engine, j.recipe_name, j.recipe_digest, j.recipe)
                    for j in jobs]

    assert len(env.sent) == len(job_rows)
    for spec, row in zip(env.sent, job_rows, strict=True):
        job_id, platform, python, build_id, engine, recipe_name, recipe_digest, options = row
        assert isinstance(spec, JobSpec)
        assert (spec.job_id, spec.attempt, spec.name, spec.version) == (job_id, 1, "good", "1.0")
        assert (spec.sdist.filename, spec.sdist.sha256, spec.sdist.size, spec.sdist.storage_key) == \
            ("good-1.0.tar.gz", digest, path.stat().st_size, sdist_key(digest, "good-1.0.tar.gz"))
        assert (spec.platform, spec.python, spec.build_id, spec.engine) == (platform, python, build_id, engine)
        assert (spec.recipe_name, spec.recipe_digest, spec.options) == (recipe_name, recipe_digest, options)
        assert (spec.upstream_index, spec.resume, spec.build) == (env.index.url, "build", None)
    assert env.index.requests == []  # a file submission never asks the upstream


def test_submit_same_sdist_twice_reuses_jobs(env: Env) -> None:
    path = make_good(env.root / "good")
    first = submit(str(path), settings=get_settings())
    sent_first = list(env.sent)
    second = submit(str(path), settings=get_settings())
    assert env.sent == sent_first  # nothing new to build
    assert second.submission_id != first.submission_id
    with session_scope() as s:
        assert len(s.scalars(select(Source)).all()) == 1
        new_jobs = s.scalars(select(Job).where(Job.submission_id == second.submission_id).order_by(Job.id)).all()
        old_jobs = s.scalars(select(Job).where(Job.submission_id == first.submission_id).order_by(Job.id)).all()
        assert len(new_jobs) == len(old_jobs) == len(PLATFORMS)
        assert [j.cached_from_id for j in new_jobs] == [j.id for j in old_jobs]
        assert [j.cache_key for j in new_jobs] == [j.cache_key for j in old_jobs]
        assert all(j.state == "queued" and j.source_id == old_jobs[0].source_id for j in new_jobs)
        assert all(j.cached_from_id is None and j.state == "queued" for j in old_jobs)


def test_submit_requirement_from_upstream_then_offline(env: Env) -> None:
    served = env.index.root / "files" / "remote-1.0.tar.gz"
    digest = sha256_of(served)
    first = submit("remote==1.0", settings=get_settings())
    assert (first.name, first.version) == ("remote", "1.0")
    assert any(path.endswith("/simple/remote/") for path, _ in env.index.requests)
    assert any(path.endswith("/files/remote-1.0.tar.gz") for path, _ in env.index.requests)
    with session_scope() as s:
        (source,) = s.scalars(select(Source)).all()
        assert (source.sha256, source.name, source.version, source.filename, source.size, source.upstream_url) == \
            (digest, "remote", "1.0", "remote-1.0.tar.gz", served.stat().st_size,
             env.index.files_url + "remote-1.0.tar.gz")
        assert sha256_of(env.home / "storage" / source.storage_key) == digest
        (submission,) = s.scalars(select(Submission)).all()
        assert (submission.kind, submission.request) == ("requirement", "remote==1.0")
        source_id = source.id
    assert [spec.sdist.sha256 for spec in env.sent] == [digest] * len(PLATFORMS)
    assert list((env.home / "tmp").iterdir()) == []  # the download folder is gone

    env.index.stop()  # the upstream is gone: a resubmission must not need it
    env.index.requests.clear()
    sent = list(env.sent)
    second = submit("Remote==1.0", settings=get_settings())
    assert (second.name, second.version) == ("remote", "1.0")
    assert env.index.requests == [] and env.sent == sent
    with session_scope() as s:
        assert [src.id for src in s.scalars(select(Source))] == [source_id]
        jobs = s.scalars(select(Job).where(Job.submission_id == second.submission_id)).all()
        assert len(jobs) == len(PLATFORMS) and all(j.cached_from_id is not None for j in jobs)


def test_resubmit_requirement_equal_version_offline(env: Env) -> None:
    submit("remote==1.0", settings=get_settings())
    env.index.stop()
    result = submit("remote==1.0.0", settings=get_settings())  # PEP 440: the same version
    assert (result.name, result.version) == ("remote", "1.0")


# Bad inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_input_refused(env: Env, monkeypatch: pytest.MonkeyPatch, case: Bad) -> None:
    check_refused(env, monkeypatch, case)


def test_directory_is_not_reported_missing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = env.root / "inputs" / "a-folder"
    folder.mkdir(parents=True)
    message = check_refused(env, monkeypatch, Bad("directory", lambda _r, _i: str(folder), FarmError, 1, ("a-folder",)))
    assert "no such file" not in message and "directory" in message


def test_overlong_request_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    check_refused(env, monkeypatch, Bad("overlong", _req("x" * 300 + " y"), FarmError, 1,
                                        ("neither an sdist file nor a requirement",)))


def test_no_build_target_leaves_nothing(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(root: Path, _index: StaticIndex) -> str:
        return str(make_good(_inputs(root, "ancient"), "ancient", "1.0", requires_python="<3"))

    check_refused(env, monkeypatch, Bad("no-target", make, FarmError, 1,
                                        ("ancient 1.0", "no build target", "Requires-Python <3")))


def test_index_record_with_sha256_of_another_project(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def make(root: Path, index: StaticIndex) -> str:
        good = root / "good" / "good-1.0.tar.gz"
        index.add("alias", "alias-2.0.tar.gz", b"whatever is served", digest=sha256_of(good))
        return "alias==2.0"

    check_refused(env, monkeypatch, Bad("alias", make, UpstreamError, 5, ("alias", "sha256 of good-1.0.tar.gz")))


def test_stored_sdist_survives_rewritten_input(env: Env) -> None:
    good, _ = submit_good(env)
    digest = sha256_of(good)
    good.write_bytes(b"oops, not an sdist any more")  # the same file, rewritten in place
    with pytest.raises(SdistError, match="not gzip-compressed"):
        submit(str(good), settings=get_settings())
    with session_scope() as s:
        source = s.scalar(select(Source).where(Source.name == "good"))
        assert source is not None and source.sha256 == digest
        assert sha256_of(env.home / "storage" / source.storage_key) == digest


def test_upstream_sdist_error_names_the_file_not_the_download_folder(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream case's message names the file, not the farm's temporary download folder."""
    message = check_refused(env, monkeypatch, next(c for c in BAD if c.id == "upstream-pkg-info-mismatch"))
    assert str(env.home / "tmp") not in message


def test_gzip_helper_is_really_a_bomb(tmp_path: Path) -> None:
    """The stream-bomb input is small on disk and large once decompressed (the case is meaningful)."""
    path = write_tar(tmp_path / "bomb-1.0.tar.gz", _bomb_pax(tmp_path))
    assert path.stat().st_size < 100_000
    assert len(gzip.decompress(path.read_bytes())) > 4 << 20
    with tarfile.open(path) as tf:
        assert all(m.size < 1000 for m in tf.getmembers())


def test_resubmission_after_gc_removed_the_wheels_builds_again(env: Env) -> None:
    """A succeeded build whose wheels `farm gc` removed (removed_at set) answers no resubmission: the
    same sdist is built again; while one wheel of it is live, the cache still answers."""
    import datetime as dt

    from farm.db.models import Artifact

    path = make_good(env.root / "good")
    first = submit(str(path), settings=get_settings())
    with session_scope() as s:
        old = s.scalars(select(Job).where(Job.submission_id == first.submission_id).order_by(Job.id)).all()
        for i, job in enumerate(old):
            job.state = "succeeded"
            s.add(Artifact(job=job, filename=f"good-1.0-{i}-py3-none-any.whl", sha256=f"{i:064x}", size=1, name="good",
                           version="1.0", tags=["py3-none-any"], requires_dist=[], storage_key=f"k{i}", verified=True,
                           removed_at=dt.datetime(2026, 1, 1) if i > 0 else None))
        old_ids = [j.id for j in old]
    sent = list(env.sent)
    second = submit(str(path), settings=get_settings())
    with session_scope() as s:
        new = s.scalars(select(Job).where(Job.submission_id == second.submission_id).order_by(Job.id)).all()
        assert new[0].cached_from_id == old_ids[0] and new[0].state == "succeeded"  # its wheel is live
        assert all(j.cached_from_id is None and j.state == "queued" for j in new[1:])  # removed: built again
    assert len(env.sent) == len(sent) + len(PLATFORMS) - 1
