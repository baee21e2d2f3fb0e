"""Errors: one module holds every error class and exit code, and a job attempt that ends in an
exception is told apart as the package's failure, an infrastructure fault (retried) or a bug in the
farm (failed at once, as `internal`, with its traceback in the stored log).

The jobs run in this process through the real worker task (`farm.worker.build`, Celery's eager
`apply`, whose retries run at once) on an embedded farm's database and storage; the worker's events
go straight to the coordinator's `apply_event` instead of through a broker. The only thing injected
is the failure: one helper of the fetch step raises.
"""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest

import farm.errors
from farm.errors import (
    CommandFailed, ConfigError, FarmError, InfrastructureFault, JobStopped, NotFound, PackageFailure, StorageConflict, classify)
from farm.messages import JobEvent, JobSpec


ROOT = Path(__file__).resolve().parent.parent
_ERROR_NAME = re.compile(r"(Error|Fault|Failure|Exception|Stopped|Refused|Invalid|Exists|Mismatch|Conflict|Timeout|"
                         r"NotFound|Failed)$")
_PRIVATE_SIGNALS = {("farm/worker/verify_container.py", "_OutOfTime"),  # control flow inside one function
                    ("farm/storage_http.py", "_Transient")}  # a fault worth another try, never raised out


# Classification ----------------------------------------------------------------------------------


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "kind"), [
    (PackageFailure("build", "does not compile"), "package"),
    (farm.errors.CommandTimeout("build", "timed out"), "package"),
    (InfrastructureFault("fetch", "not in storage"), "infrastructure"),
    (StorageConflict("jobs/1/attempt-1.log"), "infrastructure"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "infrastructure"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "auditwheel"), "infrastructure"),
    (ConnectionResetError(), "infrastructure"),
    (OSError(errno.EIO, os.strerror(errno.EIO)), "infrastructure"),
    (PackageFailure("build", "error: [Errno 28] No space left on device: 'build/lib'"), "infrastructure"),
    (_caused(PackageFailure("verify", "pip failed"), OSError(errno.ENOSPC, "No space left on device")),
     "infrastructure"),
    (_caused(KeyError("x"), ConnectionRefusedError()), "infrastructure"),
    (_caused(PackageFailure("build", "no"), FileNotFoundError(errno.ENOENT, "gone")), "package"),
    (ConfigError("this worker has no cp399 interpreter"), "infrastructure"),  # a deliberate error: as before
    (NotFound("not in storage: jobs/1/attempt-1/staged/x.whl"), "infrastructure"),
    (KeyError("sha256"), "internal"),
    (TypeError("unsupported operand"), "internal"),
    (AttributeError("'NoneType' object has no attribute 'name'"), "internal"),
    (ValueError("expected one .dist-info folder"), "internal"),
    (AssertionError(), "internal"),
])
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_library_connection_errors_are_infrastructure() -> None:
    import httpx
    from kombu.exceptions import OperationalError
    from sqlalchemy.exc import OperationalError as DbDown

    assert classify(httpx.ConnectError("refused")) == "infrastructure"
    assert classify(OperationalError("redis went away")) == "infrastructure"
    assert classify(DbDown("SELECT 1", {}, Exception("server closed the connection"))) == "infrastructure"


def test_the_real_fault_is_the_deepest_infrastructure_fault() -> None:
    from farm.errors import fault_of

    upload = _caused(InfrastructureFault("storage", "PUT jobs/1/attempt-1/wheels/x.whl failed"),
                     ConnectionRefusedError(111, "Connection refused"))
    assert fault_of(upload) == ("storage: PUT jobs/1/attempt-1/wheels/x.whl failed "
                                "(ConnectionRefusedError: [Errno 111] Connection refused)")
    assert fault_of(OSError(errno.ENOSPC, "No space left on device")) == "[Errno 28] No space left on device"


def test_internal_error_message() -> None:
    assert farm.errors.internal_error(KeyError("sha256")) == "internal error: KeyError: 'sha256'"


def _error_classes_defined(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
            if any(_ERROR_NAME.search(b) or b == "BaseException" for b in bases):
                found.append(node.name)
    return found


def test_every_error_class_lives_in_farm_errors() -> None:
    elsewhere = [(str(p.relative_to(ROOT)), name) for p in sorted((ROOT / "farm").rglob("*.py"))
                 if p.name != "errors.py" or p.parent.name != "farm" for name in _error_classes_defined(p)]
    assert set(elsewhere) <= _PRIVATE_SIGNALS, elsewhere


@pytest.mark.parametrize(("module", "name"), [
    ("farm.util.cmd", "CommandFailed"), ("farm.containers", "ContainerCommandFailed"),
    ("farm.storage", "StorageConflict"), ("farm.liveness", "JobStopped"), ("farm.provenance.keys", "SigningError"),
    ("farm.provenance.sign", "SignatureInvalid"), ("farm.index.targets", "UploadError"), ("farm.index.simple", "PublishError"),
    ("farm.index.simple", "FileExists"), ("farm.index.channels", "DigestMismatch"),
    ("farm.index.promote", "PromotionRefused"), ("farm.coordinator.publish", "PublishRefused"),
])
def test_moved_classes_are_still_importable_where_they_were(module: str, name: str) -> None:
    import importlib

    assert getattr(importlib.import_module(module), name) is getattr(farm.errors, name)


def test_the_exit_code_table_is_the_classes_exit_codes() -> None:
    """docs/cli.md's table names every error class of farm/errors.py and every `EXIT_*` constant, each
    with its code, and nothing else."""
    table = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", table, re.MULTILINE)
    assert rows
    documented: dict[str, int] = {}
    for code, names in rows:
        for name in re.findall(r"`(\w+)`", names):
            assert name not in documented, name
            documented[name] = int(code)
    classes = {n: c.exit_code for n, c in vars(farm.errors).items() if isinstance(c, type) and issubclass(c, FarmError)}
    constants = {n: v for n, v in vars(farm.errors).items() if n.startswith("EXIT_")}
    assert documented == {**classes, **constants}


def test_timeout_and_no_farm_have_codes_of_their_own() -> None:
    """A `--wait` that timed out is told apart from a failed build, and "no farm here" from any other error."""
    taken = [c.exit_code for c in vars(farm.errors).values()
             if isinstance(c, type) and issubclass(c, FarmError) and c not in (farm.errors.WaitTimeout, farm.errors.NoFarm)]
    taken += [v for n, v in vars(farm.errors).items() if n.startswith("EXIT_")]
    assert farm.errors.WaitTimeout.exit_code not in taken and farm.errors.NoFarm.exit_code not in taken
    assert farm.errors.WaitTimeout.exit_code != farm.errors.NoFarm.exit_code


@pytest.mark.parametrize("name", sorted(n for n, c in vars(farm.errors).items()
                                        if isinstance(c, type) and issubclass(c, FarmError)))
def test_an_error_class_travels_by_name(name: str) -> None:
    """What the API client does with an answer's `error_class`: the same class, the message as it was."""
    cls = farm.errors.error_class(name)
    assert cls is getattr(farm.errors, name)
    exc = cls.from_message("what was wrong\nand where")
    assert type(exc) is cls and str(exc) == "what was wrong\nand where" and exc.exit_code == cls.exit_code


def test_an_unknown_error_class_is_a_farm_error() -> None:
    for name in ("KeyError", "Exception", "EXIT_OK", "classify", "nothing"):
        assert farm.errors.error_class(name) is FarmError


def test_command_failed_message_keeps_its_shape() -> None:
    from farm.util.cmd import run

    with pytest.raises(CommandFailed, match=r"^`sh -c 'echo oops; exit 3'` exited with 3\noops$"):
        run(["sh", "-c", "echo oops; exit 3"])


def test_the_farms_index_away_is_an_infrastructure_fault() -> None:
    from farm.worker.verify import FarmIndex
    from tests.helpers.env import free_port

    with pytest.raises(InfrastructureFault, match="the farm's index"):
        FarmIndex(f"http://127.0.0.1:{free_port()}/simple/").files("six")


# Jobs through the worker task ----------------------------------------------------------------------


@pytest.fixture
def job(farm_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[JobSpec, list[JobEvent]]:
    """A submitted job's spec (its build message captured) and the list its worker events go to; each
    event is applied by the coordinator as it is sent."""
    from farm.cli import ensure_db
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.coordinator.events import apply_event
    from farm.coordinator.submit import submit
    from farm.worker import task
    from tests.helpers.sdists import sdist_members, write_tar

    monkeypatch.setenv("FARM_HEARTBEAT_INTERVAL", "600")
    sent: list[JobSpec] = []
    monkeypatch.setattr(dispatch, "send", sent.extend)
    ensure_db()
    settings = get_settings()
    sdist = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    submit(str(sdist), settings=settings)
    events: list[JobEvent] = []

    def deliver(event: JobEvent) -> None:
        events.append(event)
        apply_event(event, settings)

    monkeypatch.setattr(task, "send_event", deliver)
    (spec,) = sent
    return spec, events


def _run(spec: JobSpec) -> None:
    from farm.worker.task import build

    result = build.apply(args=[spec.model_dump(mode="json")], throw=False)  # a retry runs again at once
    assert result.successful(), result.traceback


def _stored_log(spec: JobSpec) -> str:
    from farm.storage import get_storage, log_key

    return get_storage().read_bytes(log_key(spec.job_id, spec.attempt)).decode()


def _job(job_id: int):  # type: ignore[no-untyped-def]
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        j = s.get(Job, job_id)
        return j.state, j.failure_kind, j.error, j.attempt, [(st.name, st.outcome) for st in j.steps]


def _fetch_raises(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> list[int]:
    """The fetch step's digest check raises `exc` (after the sdist came from storage); the calls made."""
    from farm.worker import fetch

    calls: list[int] = []

    def digest(path: Path) -> str:
        calls.append(1)
        raise exc

    monkeypatch.setattr(fetch, "sha256_file", digest)
    return calls


def test_a_bug_in_the_farm_fails_the_job_once_as_internal_with_its_traceback(
        job: tuple[JobSpec, list[JobEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, events = job
    calls = _fetch_raises(monkeypatch, KeyError("sdist-digest"))
    _run(spec)
    assert len(calls) == 1  # not retried
    assert [(e.state, e.failure_kind) for e in events if e.step is None] == [("failed", "internal")]
    assert events[-1].error == "internal error: KeyError: 'sdist-digest'"
    state, kind, error, attempt, steps = _job(spec.job_id)
    assert (state, kind, error, attempt) == ("failed", "internal", "internal error: KeyError: 'sdist-digest'", 1)
    assert steps == [("fetching", "failed")]
    log = _stored_log(spec)
    assert log.count(f"job {spec.job_id} attempt 1:") == 1
    assert "INTERNAL ERROR (a bug in the farm; not retried): KeyError: 'sdist-digest'" in log
    assert "INFRASTRUCTURE FAULT" not in log
    trace = log[log.index("Traceback (most recent call last):"):]
    for frame in ("in run_job", "in _steps", "in fetch", "in digest"):  # the whole way down to the raise
        assert frame in trace, trace
    assert trace.rstrip().endswith("KeyError: 'sdist-digest'")


def _virtual_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The task's backoff passes without waiting: its clock advances by each pause; the pauses made."""
    from farm.worker import task

    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(task, "_sleep", sleep)
    monkeypatch.setattr(task, "_clock", lambda: now[0])
    return pauses


def _fetch_fails(monkeypatch: pytest.MonkeyPatch, exc: BaseException, times: int) -> list[int]:
    """The fetch step's digest check raises `exc` the first `times` calls; then the package's own
    verdict (a PackageFailure `the fault is gone`), which ends the job there."""
    from farm.worker import fetch

    calls: list[int] = []

    def digest(path: Path) -> str:
        calls.append(1)
        if len(calls) <= times:
            raise exc
        raise PackageFailure("fetch", "the fault is gone")

    monkeypatch.setattr(fetch, "sha256_file", digest)
    return calls


def test_a_full_disk_is_retried_in_place_until_it_is_free_and_never_fails_the_package(
        job: tuple[JobSpec, list[JobEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, events = job
    pauses = _virtual_time(monkeypatch)
    calls = _fetch_fails(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), times=6)
    _run(spec)
    assert len(calls) == 7  # six faults, then the fetch that works
    assert all(p <= 1.0 for p in pauses)  # sliced into naps that look at the stop marker
    assert sum(pauses) == pytest.approx(1 + 2 + 4 + 8 + 16 + 30)  # backoff, capped at 30 s
    retries = [(e.state, e.failure_kind) for e in events if e.step is None and e.state == "queued"]
    assert retries == [("queued", "infrastructure")] * 6
    assert all("No space left on device" in e.error for e in events if e.state == "queued")
    state, kind, error, attempt, _ = _job(spec.job_id)
    assert (state, kind, error, attempt) == ("failed", "package", "fetch: the fault is gone", 1)  # its own verdict
    log = _stored_log(spec)
    assert log.count(f"job {spec.job_id} attempt 1:") == 7
    assert log.count("INFRASTRUCTURE FAULT: OSError: [Errno 28] No space left on device") == 6


def test_an_infrastructure_fault_that_lasts_fails_at_the_deadline_naming_the_real_fault(
        job: tuple[JobSpec, list[JobEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.config import get_settings

    spec, events = job
    pauses = _virtual_time(monkeypatch)
    calls = _fetch_raises(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    _run(spec)
    window = get_settings().api_retry_seconds
    assert sum(pauses) <= window < sum(pauses) + 30  # tried for the whole window, not past it
    assert len(calls) > 5
    ends = [(e.state, e.failure_kind) for e in events if e.step is None]
    assert ends == [("queued", "infrastructure")] * (len(calls) - 1) + [("failed", "infrastructure")]
    state, kind, error, attempt, _ = _job(spec.job_id)
    assert (state, kind, attempt) == ("failed", "infrastructure", 1)
    assert error.startswith("infrastructure fault for") and "No space left on device" in error
    log = _stored_log(spec)
    assert log.count("INFRASTRUCTURE FAULT: OSError: [Errno 28] No space left on device") == len(calls)
    assert "Traceback" not in log and "INTERNAL ERROR" not in log


def test_the_real_fault_is_named_when_the_log_upload_fails_too(
        job: tuple[JobSpec, list[JobEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage goes away while a step fails on a lost connection: the error names the step's fault,
    not the log upload in the error handler, and the log is kept on the worker's disk and stored later."""
    from farm.worker import pipeline

    spec, events = job
    _virtual_time(monkeypatch)
    _fetch_fails(monkeypatch, ConnectionRefusedError(111, "Connection refused (the API)"), times=2)
    real_store = pipeline._store_log
    uploads: list[int] = []

    def store(storage, key, path):  # type: ignore[no-untyped-def]
        uploads.append(1)
        if len(uploads) <= 2:
            raise InfrastructureFault("storage", "PUT jobs/1/attempt-1.log: ConnectError")
        real_store(storage, key, path)

    monkeypatch.setattr(pipeline, "_store_log", store)
    _run(spec)
    queued = [e.error for e in events if e.state == "queued" and e.step is None]
    assert len(queued) == 2 and all("Connection refused (the API)" in q for q in queued), queued
    assert not any("attempt-1.log" in q for q in queued)
    log = _stored_log(spec)
    assert log.count(f"job {spec.job_id} attempt 1:") == 3  # all three tries, in one log
    assert _job(spec.job_id)[:3] == ("failed", "package", "fetch: the fault is gone")


def test_a_package_failure_is_not_retried(job: tuple[JobSpec, list[JobEvent]],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec, events = job
    calls = _fetch_raises(monkeypatch, PackageFailure("fetch", "the sdist is not what it says"))
    _run(spec)
    assert len(calls) == 1
    assert [(e.state, e.failure_kind, e.error) for e in events if e.step is None] == [
        ("failed", "package", "fetch: the sdist is not what it says")]
    assert _job(spec.job_id)[:2] == ("failed", "package")
    assert "FAILED (fetch): fetch: the sdist is not what it says" in _stored_log(spec)


def test_a_stopped_attempt_is_no_failure(job: tuple[JobSpec, list[JobEvent]], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, events = job
    _fetch_raises(monkeypatch, JobStopped("the job was cancelled"))
    _run(spec)
    assert [e for e in events if e.step is None] == []
    assert "STOPPED: the job was cancelled" in _stored_log(spec)
