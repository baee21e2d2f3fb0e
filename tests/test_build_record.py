"""The record of a build that waits for its dependencies (`farm.messages.BuildRecord`): from the
worker's dep_wait event into `Job.staged`, back out in the build message that verifies the job
again, read from rows stored before it had a type, and into the statements the attest step writes.

Bad cases covered: a `Job.staged` row in the shape stored before (`wheels`, `carry`, `rounds`), its
round count continuing (a fourth round fails the job), an empty row (nothing staged)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest

from farm.messages import BuildRecord, JobEvent, JobSpec, SdistRef, StagedWheel

WHEEL = StagedWheel(filename="waits-1.0-py3-none-any.whl", sha256="a" * 64,
                    storage_key="jobs/1/attempt-1/staged/waits-1.0-py3-none-any.whl")
# A row as the farm stored it before BuildRecord: the build's facts in "carry".
OLD_ROW: dict[str, Any] = {
    "wheels": [WHEEL.model_dump()],
    "carry": {"tools": {"uv": "0.5", "build": "1.2"}, "commands": ["uv build --wheel"], "image_digest": None,
              "build_requires": ["setuptools>=69"], "timings": {"fetching": 0.25, "building": 3.5},
              "started": 1_700_000_000.0},  # no "isolation": rows older than the sandbox lack it
    "rounds": 1,
}


@pytest.fixture
def sent(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> list[JobSpec]:
    """An embedded farm's database; build messages captured instead of sent."""
    from farm.cli import ensure_db
    from farm.coordinator import dispatch

    messages: list[JobSpec] = []
    monkeypatch.setattr(dispatch, "send", lambda specs: messages.extend(specs))
    ensure_db()
    return messages


def _job(state: str, staged: dict[str, Any]) -> int:
    from farm.db.models import Job, Source, Submission
    from farm.db.session import session_scope

    sha = hashlib.sha256(b"waits-1.0").hexdigest()
    with session_scope() as s:
        src = Source(sha256=sha, name="waits", version="1.0", filename="waits-1.0.tar.gz", size=10,
                     storage_key=f"sdists/{sha[:2]}/{sha}/waits-1.0.tar.gz")
        job = Job(submission=Submission(kind="file", request="waits-1.0.tar.gz"), source=src, platform="linux-x86_64",
                  python="cp311", build_id="cp311-manylinux_x86_64", engine="native", recipe_digest="0" * 64,
                  cache_key="1" * 64, state=state, staged=staged)
        s.add(job)
        s.flush()
        return job.id


def _row(job_id: int) -> tuple[str, dict[str, Any], str | None]:
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        job = s.get(Job, job_id)
        return job.state, dict(job.staged), job.error


def _dep_wait(job_id: int, missing: list[str], build: BuildRecord) -> None:
    from farm.config import get_settings
    from farm.coordinator.events import apply_event

    apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state="dep_wait", missing=missing, build=build),
                get_settings())


def test_the_loader_reads_old_rows_new_rows_and_empty_ones() -> None:
    old = BuildRecord.load(OLD_ROW)
    assert old.wheels == [WHEEL] and old.rounds == 1
    assert (old.tools, old.commands, old.build_requires, old.started) == (
        {"uv": "0.5", "build": "1.2"}, ["uv build --wheel"], ["setuptools>=69"], 1_700_000_000.0)
    assert old.timings == {"fetching": 0.25, "building": 3.5} and old.isolation is None and old.image_digest is None
    assert BuildRecord.load(old.stored()) == old  # the new shape reads back as itself
    assert "carry" not in old.stored() and old.stored()["wheels"] == OLD_ROW["wheels"]
    assert BuildRecord.load({}) == BuildRecord() and BuildRecord.load({}).wheels == []
    assert BuildRecord.load(None) == BuildRecord()


def test_an_old_row_resumes_with_its_wheels_and_build(sent: list[JobSpec]) -> None:
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.db.models import Job
    from farm.db.session import session_scope

    job_id = _job("queued", OLD_ROW)
    with session_scope() as s:
        spec = dispatch.job_spec(s.get(Job, job_id), get_settings(), resume="verify")
        fresh = dispatch.job_spec(s.get(Job, job_id), get_settings())
    assert spec.build == BuildRecord.load(OLD_ROW) and spec.build.wheels == [WHEEL]
    assert fresh.build is None  # a build from scratch carries no staged build
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec  # as the worker reads it


def test_a_dep_wait_event_is_stored_and_sent_back_when_released(sent: list[JobSpec]) -> None:
    """The rounds go on from an old row; nothing missing: released at once to verify again."""
    job_id = _job("verifying", OLD_ROW)
    again = StagedWheel(filename=WHEEL.filename, sha256="b" * 64,
                        storage_key="jobs/1/attempt-1/staged/waits-1.0-py3-none-any.whl")
    build = BuildRecord.load(OLD_ROW).model_copy(update={"wheels": [again], "isolation": {"network": False}})
    _dep_wait(job_id, [], build)
    state, staged, _ = _row(job_id)
    assert state == "queued" and staged["rounds"] == 2 and staged["wheels"] == [again.model_dump()]
    assert BuildRecord.load(staged) == build.model_copy(update={"rounds": 2})
    (spec,) = sent
    assert (spec.job_id, spec.resume) == (job_id, "verify")
    assert spec.build is not None and spec.build.wheels == [again] and spec.build.isolation == {"network": False}
    assert spec.build.commands == ["uv build --wheel"] and spec.build.started == 1_700_000_000.0


def test_a_fourth_round_fails_the_job_counting_rounds_stored_before(sent: list[JobSpec]) -> None:
    job_id = _job("verifying", {**OLD_ROW, "rounds": 3})
    _dep_wait(job_id, ["missing-thing>=1"], BuildRecord.load(OLD_ROW))
    state, staged, error = _row(job_id)
    assert state == "failed" and staged["rounds"] == 4 and sent == []
    assert error == "dependencies still missing after 3 rounds: missing-thing>=1"


def test_attest_records_the_staged_build_and_this_attempts_verification(tmp_path: Path) -> None:
    from farm.worker.attest import attest
    from farm.worker.verify import VerifyOutcome

    wheel = tmp_path / WHEEL.filename
    wheel.write_bytes(b"not really a wheel")
    spec = JobSpec(job_id=1, attempt=2, name="waits", version="1.0",
                   sdist=SdistRef(filename="waits-1.0.tar.gz", sha256="c" * 64, size=10, storage_key="k"),
                   platform="linux-x86_64", python="cp311", build_id="cp311-manylinux_x86_64", engine="native",
                   recipe_name=None, recipe_digest="d" * 64, options={}, upstream_index="u", resume="verify",
                   build=BuildRecord.load(OLD_ROW))
    outcome = VerifyOutcome(passed=True, environment="host-venv", install_command="uv pip install", imports=["waits"],
                            test_command=None, commands=["uv pip install waits"], seconds=1.0)
    (stmt,) = attest(spec, [wheel], [outcome], spec.build, timings={"fetching": 0.5, "verifying": 1.0},
                     started=1_700_000_500.0, finished=1_700_000_600.0, worker="w2")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert stmt["subject"] == [{"name": wheel.name, "digest": {"sha256": digest}}]
    run = stmt["predicate"]["runDetails"]
    assert run["metadata"]["startedOn"] == _iso(1_700_000_000)  # when the staged build started
    assert run["metadata"]["invocationId"] == "job-1-attempt-2"
    assert run["builder"]["version"] == {"uv": "0.5", "build": "1.2"}
    by = {b["name"]: b["annotations"] for b in run["byproducts"]}
    assert by["commands"] == {"commands": ["uv build --wheel", "uv pip install waits"]}
    assert by["timings"] == {"fetching": 0.5, "building": 3.5, "verifying": 1.0}  # this attempt's fetch wins
    assert by["verification"]["passed"] is True
    assert stmt["predicate"]["buildDefinition"]["internalParameters"]["buildRequires"] == ["setuptools>=69"]
    # Nothing staged (a build in this attempt that recorded no start): this attempt's start.
    (bare,) = attest(spec, [wheel], [outcome], BuildRecord(), timings={}, started=1_700_000_500.0,
                     finished=1_700_000_600.0, worker="w2")
    assert bare["predicate"]["runDetails"]["metadata"]["startedOn"] == _iso(1_700_000_500)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
