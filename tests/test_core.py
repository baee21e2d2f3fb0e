"""Fast tests of the core: the job state table, event handling (stale and illegal events), the
plan and cache key, dependency checks against the farm's index, wheel introspection, the
provenance statement, and message order on the server-less broker.

Bad inputs covered: illegal state moves (raise), events from an older attempt or with an illegal
move (dropped, nothing changes), events for unknown jobs (dropped).
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from farm.db.states import JobState, TERMINAL, TRANSITIONS, check_transition
from farm.errors import StateError


def test_every_state_has_a_row_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert TERMINAL == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    for state in TERMINAL:
        for other in JobState:
            with pytest.raises(StateError):
                check_transition(state, other)


@pytest.mark.parametrize(("cur", "new"), [("queued", "building"), ("building", "succeeded"),
                                          ("repairing", "dep_wait"), ("dep_wait", "verifying"),
                                          ("succeeded", "queued"), ("failed", "queued")])
def test_illegal_moves_raise(cur: str, new: str) -> None:
    with pytest.raises(StateError, match=f"{cur} -> {new}"):
        check_transition(cur, new)


def test_the_worker_path_and_the_resume_path_are_legal() -> None:
    path = ["queued", "fetching", "building", "repairing", "verifying", "attesting", "uploading", "publishing",
            "succeeded"]
    for a, b in zip(path, path[1:]):
        check_transition(a, b)
    for a, b in [("verifying", "dep_wait"), ("dep_wait", "queued"), ("queued", "fetching"), ("fetching", "verifying")]:
        check_transition(a, b)


def _wheel(tmp: Path, name: str, files: dict[str, str], requires: list[str] = ()) -> Path:  # type: ignore[assignment]
    dist = name.split("-")[0]
    path = tmp / name
    with zipfile.ZipFile(path, "w") as zf:
        for n, body in files.items():
            zf.writestr(n, body)
        meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", meta)
        zf.writestr(f"{dist}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\n")
    return path


def test_top_level_modules_from_files_and_from_top_level_txt(tmp_path: Path) -> None:
    from farm.util.wheel import top_level_modules

    w = _wheel(tmp_path, "pkg-1.0-cp311-cp311-linux_x86_64.whl",
               {"pkg/__init__.py": "", "pkg/_x.cpython-311-x86_64-linux-gnu.so": "", "single.py": "",
                "_ext.cpython-311-x86_64-linux-gnu.so": "", "tests/__init__.py": "", "pkg.libs/libz.so": ""})
    assert top_level_modules(w) == ["pkg", "single", "_ext"]
    w2 = _wheel(tmp_path, "other-1.0-py3-none-any.whl", {"other-1.0.dist-info/top_level.txt": "a\nb\n", "a/__init__.py": ""})
    assert top_level_modules(w2) == ["a"]  # top_level.txt is not trusted (tests/test_import_check.py)


def test_missing_requirements_reads_the_farm_index(tmp_path: Path) -> None:
    from packaging.tags import Tag

    from farm.worker.verify import FarmIndex, Target, missing_requirements

    (tmp_path / "simple/six").mkdir(parents=True)
    (tmp_path / "simple/six/index.json").write_text(json.dumps({"files": [
        {"filename": "six-1.16.0-py2.py3-none-any.whl", "requires-python": ">=2.7"},
        {"filename": "six-1.17.0-py2.py3-none-any.whl", "yanked": True}]}))
    (tmp_path / "simple/numpy").mkdir(parents=True)
    (tmp_path / "simple/numpy/index.json").write_text(json.dumps({"files": [
        {"filename": "numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl"}]}))
    target = Target(python=(3, 11), interp=None, image="x", env={"python_version": "3.11", "sys_platform": "linux"},
                    tags=frozenset({Tag("py3", "none", "any"), Tag("cp311", "cp311", "manylinux_2_17_x86_64")}))
    index = FarmIndex(tmp_path.as_uri() + "/simple/")
    reqs = [Requirement(r) for r in ["six>=1.16", "six>=1.17", "numpy", "absent",
                                     "winonly; sys_platform == 'win32'"]]
    # six 1.17 is yanked, numpy only for cp312, absent is absent, winonly does not apply
    assert missing_requirements(reqs, index=index, target=target) == ["six>=1.17", "numpy", "absent"]


def test_plan_and_cache_key(farm_home: Path, tmp_path: Path) -> None:
    from farm.config import get_settings
    from farm.coordinator.plan import plan

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "demo.toml").write_text('skip = ["cp311-*"]\n')
    settings = get_settings()
    targets = plan(name="demo", version="1.0", sdist_sha256="a" * 64, requires_python=None, settings=settings)
    assert [t.build_id for t in targets] == ["cp311-manylinux_x86_64"]
    again = plan(name="demo", version="1.0", sdist_sha256="a" * 64, requires_python=None, settings=settings)
    assert again[0].cache_key == targets[0].cache_key
    other = plan(name="demo", version="1.0", sdist_sha256="b" * 64, requires_python=None, settings=settings)
    assert other[0].cache_key != targets[0].cache_key
    assert plan(name="demo", version="1.0", sdist_sha256="a" * 64, requires_python="<3", settings=settings) == []
    skipped = settings.model_copy(update={"recipes_dirs": [recipes]})
    assert plan(name="demo", version="1.0", sdist_sha256="a" * 64, requires_python=None, settings=skipped) == []


def test_events_move_state_and_drop_stale_or_illegal(farm_home: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from farm.cli import ensure_db
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.coordinator.events import apply_event
    from farm.db.models import Job, Step
    from farm.db.session import session_scope
    from farm.messages import JobEvent, StepReport
    from tests.helpers.sdists import sdist_members, write_tar

    sent: list = []
    monkeypatch.setattr(dispatch, "send", lambda specs: sent.extend(specs))
    ensure_db()
    settings = get_settings()
    from farm.coordinator.submit import submit

    sdist = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    job_id = submit(str(sdist), settings=settings).jobs[0][0]
    now = time.time()

    def ev(state: str, attempt: int = 1, **kw) -> None:  # type: ignore[no-untyped-def]
        apply_event(JobEvent(job_id=job_id, attempt=attempt, worker="w1", state=state, **kw), settings)

    ev("fetching", step=StepReport(name="fetching", started_at=now))
    ev("fetching", step=StepReport(name="fetching", started_at=now, finished_at=now + 0.5, outcome="ok", log="got it"))
    ev("building", attempt=2)  # stale attempt: dropped
    ev("publishing")  # illegal fetching -> publishing: dropped
    apply_event(JobEvent(job_id=999, attempt=1, worker="w1", state="building"), settings)  # unknown job
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.state == "fetching" and job.worker == "w1" and job.started_at is not None
        step = s.query(Step).filter_by(job_id=job_id).one()
        assert (step.outcome, step.log, round(step.seconds, 1)) == ("ok", "got it", 0.5)
    ev("failed", error="build: does not compile", failure_kind="package")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed" and job.error == "build: does not compile" and job.finished_at
    ev("building")  # after a terminal state: dropped
    with session_scope() as s:
        assert s.get(Job, job_id).state == "failed"


def test_statement_shape() -> None:
    from farm.messages import JobSpec, SdistRef
    from farm.provenance.statement import statement

    spec = JobSpec(job_id=1, attempt=1, name="x", version="1", sdist=SdistRef(filename="x-1.tar.gz", sha256="c" * 64,
                   size=1, storage_key="k"), platform="linux-x86_64", python="cp311", build_id="cp311-manylinux_x86_64",
                   engine="native", recipe_name=None, recipe_digest="d" * 64, options={}, upstream_index="u")
    st = statement(spec=spec, wheel=Path("x-1-cp311-cp311-manylinux_2_17_x86_64.whl"), wheel_sha256="e" * 64,
                   tools={"uv": "1"}, commands=["uv build"], timings={"building": 1.0}, started=0, finished=1,
                   verification={"passed": True}, image_digest="img@sha256:" + "f" * 64, build_requires=["setuptools"])
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert st["subject"] == [{"name": "x-1-cp311-cp311-manylinux_2_17_x86_64.whl", "digest": {"sha256": "e" * 64}}]
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["digest"] == {"sha256": "c" * 64} and deps[2]["digest"] == {"sha256": "f" * 64}
    assert st["predicate"]["runDetails"]["metadata"]["startedOn"] == "1970-01-01T00:00:00.000000Z"


def test_broker_keeps_one_senders_order(tmp_path: Path) -> None:
    from kombu import Connection, Queue

    import farm.coordinator.broker  # noqa: F401

    q = tmp_path / "q"
    q.mkdir()
    opts = {"data_folder_in": str(q), "data_folder_out": str(q), "processed_folder": str(tmp_path),
            "control_folder": str(tmp_path / "control")}
    with Connection("farmfs://", transport_options=opts) as conn:
        queue = Queue("jobs", routing_key="jobs")
        producer = conn.Producer()
        for i in range(200):
            producer.publish({"i": i}, routing_key="jobs", declare=[queue], serializer="json")
        assert not list(q.glob(".*.tmp"))
        simple = conn.SimpleQueue("jobs")
        got = [simple.get(timeout=1).payload["i"] for _ in range(200)]
        simple.close()
    assert got == list(range(200))


def test_head_revision_is_alembics_head(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from farm.db.migrate import alembic_config, head_revision, is_current, upgrade

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert not is_current(engine)
    upgrade(engine)
    assert is_current(engine)


# Build failure hints (farm/worker/hints.py) ------------------------------------------------------------

BUILD_OUTPUTS = [
    ("../cairo/meson.build:31:12: ERROR: Dependency \"cairo\" not found (tried pkg-config and cmake)", ["cairo (meson)"]),
    ("src/yaml.c:3:10: fatal error: yaml.h: No such file or directory", ["yaml.h (header)"]),
    ("c++ ... fatal error: boost/python.hpp: No such file or directory", ["boost/python.hpp (header)"]),
    ("Package libffi was not found in the pkg-config search path.\nNo package 'libffi' found", ["libffi (pkg-config)"]),
    ("Package 'glib-2.0', required by 'gobject-2.0', not found", ["glib-2.0 (pkg-config)"]),
    ("CMake Error: Could NOT find ZLIB (missing: ZLIB_LIBRARY ZLIB_INCLUDE_DIR)", ["ZLIB (CMake)"]),
    ("/usr/bin/ld: cannot find -lxslt: No such file or directory", ["xslt (linker)"]),
    ("Error: pg_config executable not found.", ["pg_config (program)"]),
    ("sh: 1: xml2-config: not found\n** make sure the development packages of libxml2 and libxslt are installed **",
     ["xml2-config (program)"]),
    ("error: expected ';' before '}' token\nerror: command '/usr/bin/gcc' failed with exit code 1", []),
    ("-- Could NOT find OpenMP_C: Found unsuitable version", []),
    ("warning: spurious network error (3 tries remaining): [6] Could not resolve hostname (Could not resolve host: "
     "index.crates.io)", ["index.crates.io (host the build downloads from)"]),
    ("fatal: unable to access 'https://github.com/c-util/c-siphash.git/': Could not resolve host: github.com",
     ["github.com (host the build downloads from)"]),
]


@pytest.mark.parametrize(("output", "expected"), BUILD_OUTPUTS)
def test_missing_system_dependencies_named_from_build_output(output: str, expected: list[str]) -> None:
    from farm.worker.hints import build_failure, missing_system_dependencies

    assert missing_system_dependencies(output) == expected
    failure = build_failure("`uv build` exited with 1\n" + output, output)
    first = str(failure).splitlines()[0]
    assert first.startswith("build: ")
    if expected:
        assert all(e in first for e in expected)
        assert ("network" in first) if "downloads" in expected[0] else ("system-packages" in first)
    else:
        assert first == "build: `uv build` exited with 1"
