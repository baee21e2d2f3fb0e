"""The path of one job on a worker: fetch -> build -> repair -> verify -> attest -> upload.

Each step is a function in its own module; this file only sequences them, times them, and tells
the coordinator (through `report`) what happened. The worker never touches the database.

An exception that ends the attempt is classified by `farm.errors.classify`: a package failure is
reported (failed, not retried); an infrastructure fault is raised as `InfrastructureFault` for the
task to retry; anything else is a bug in the farm: the job fails at once as `internal`, and the
traceback goes into the job's log.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from farm.config import Settings
from farm.db.states import JobState
from farm.errors import InfrastructureFault, JobStopped, PackageFailure, classify, fault_of, internal_error
from farm.index.simple import identity_problem
from farm.messages import ArtifactReport, BuildRecord, JobEvent, JobSpec, StagedWheel, StepReport
from farm.recipes.schema import Options
from farm.storage import Storage, log_key, staged_key, wheel_key
from farm.provenance import statement
from farm.util.hashing import sha256_file
from farm.util.python_tags import major_of
from farm.util.wheel import read_metadata, with_build_tag, with_tags
from farm.worker import sysdeps, verify
from farm.worker.attest import attest
from farm.worker.engines import BuildContext, get_engine
from farm.worker.fetch import fetch
from farm.worker.platforms import get_platform
from farm.worker.platforms._common import wheel_tags
from farm.worker.sandbox import job_limits

if TYPE_CHECKING:
    from farm.worker.verify_container import VerifyBox

Report = Callable[[JobEvent], None]
logger = logging.getLogger(__name__)


class Steps:
    """Times each step, keeps its log slice, and reports its start and end."""

    def __init__(self, spec: JobSpec, report: Report, log: TextIO, worker: str) -> None:
        self.spec, self.report, self.log, self.worker = spec, report, log, worker
        self.timings: dict[str, float] = {}

    def event(self, state: JobState | str, **kw: Any) -> None:
        self.report(JobEvent(job_id=self.spec.job_id, attempt=self.spec.attempt, worker=self.worker,
                             state=str(state), **kw))

    @contextmanager
    def step(self, state: JobState) -> Iterator[None]:
        name = state.value
        started = time.time()
        self.log.write(f"\n===== {name} =====\n")
        pos = self.log.tell()
        self.event(state, step=StepReport(name=name, started_at=started))
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            finished = time.time()
            self.timings[name] = finished - started
            self.log.flush()
            tail = _slice(self.log, pos)
            self.event(state, step=StepReport(name=name, started_at=started, finished_at=finished,
                                              outcome=outcome, log=tail))


def _slice(log: TextIO, pos: int, limit: int = 200_000) -> str:
    try:
        with open(log.name, encoding="utf-8", errors="replace") as f:
            f.seek(pos)
            data = f.read()
    except (OSError, AttributeError):
        return ""
    return data[-limit:]


def run_job(spec: JobSpec, *, settings: Settings, storage: Storage, report: Report, worker: str | None = None) -> None:
    worker = worker or socket.gethostname()
    work = settings.home / "work" / f"job-{spec.job_id}-{spec.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key = log_key(spec.job_id, spec.attempt)
    # Outside the work folder: a log kept through retries until it is stored (remote storage).
    log_path = storage.local_path(key) or settings.home / "logs" / f"job-{spec.job_id}-attempt-{spec.attempt}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_path, "a", encoding="utf-8", errors="replace", buffering=1) as log:  # line by line: followed live
        steps = Steps(spec, report, log, worker)
        log.write(f"job {spec.job_id} attempt {spec.attempt}: {spec.name} {spec.version} {spec.build_id} "
                  f"engine={spec.engine} recipe={spec.recipe_name or '(defaults)'} on {worker}\n")
        try:
            _pipeline(spec, settings=settings, storage=storage, steps=steps, work=work, started=started)
        except JobStopped as exc:  # the coordinator voided this attempt: no fault, nothing to report
            log.write(f"\nSTOPPED: {exc}\n")
            log.flush()
            _keep_log(storage, key, log_path)
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind == "package":
                log.write(f"\nFAILED ({getattr(exc, 'step', '?')}): {exc}\n")
                log.flush()
                _store_log(storage, key, log_path)
                # what the farm found for it (system packages) stays with the job: its suggested recipe
                found = getattr(exc, "adjustments", None)
                steps.event(JobState.FAILED, error=str(exc), failure_kind="package", log_key=key,
                            build=BuildRecord(adjustments=found) if found else None)
            elif kind == "infrastructure":
                # The real fault is what the job's error names; storing the log is only attempted (the
                # storage may be what failed) and the log stays on this disk for the next try.
                fault = fault_of(exc)
                log.write(f"\nINFRASTRUCTURE FAULT: {type(exc).__name__}: {exc}\n")
                if fault != str(exc):
                    log.write(f"caused by: {fault}\n")
                log.flush()
                _keep_log(storage, key, log_path)
                raise InfrastructureFault(getattr(exc, "step", "worker"), fault) from exc
            else:  # a bug in the farm: retrying would only hide it
                logger.error("job %s attempt %s: %s", spec.job_id, spec.attempt, internal_error(exc), exc_info=exc)
                log.write(f"\nINTERNAL ERROR (a bug in the farm; not retried): {type(exc).__name__}: {exc}\n")
                log.write("".join(traceback.format_exception(exc)))
                log.flush()
                _store_log(storage, key, log_path)
                steps.event(JobState.FAILED, error=internal_error(exc), failure_kind="internal", log_key=key)
        finally:
            if not settings.home.joinpath("keep-work").exists():
                shutil.rmtree(work, ignore_errors=True)
    if storage.local_path(key) != log_path and _stored(storage, key, log_path):
        log_path.unlink(missing_ok=True)  # stored with everything in it: the local copy is not needed


def _stored(storage: Storage, key: str, path: Path) -> bool:
    try:
        return storage.exists(key)
    except Exception:  # noqa: BLE001 - unknown: keep the local copy
        return False


def _keep_log(storage: Storage, key: str, path: Path) -> None:
    """Store the log if the storage takes it now; never raise (the fault being handled matters more)."""
    try:
        _store_log(storage, key, path)
    except Exception as exc:  # noqa: BLE001 - kept on this disk, stored after the next try
        logger.warning("log %s not stored (kept in %s): %s", key, path, exc)


def _cycle_wheels(spec: JobSpec, wheels: list[Path], *, work: Path, storage: Storage, log: TextIO) -> Path | None:
    """For a job in a dependency cycle: a folder with the other members' staged wheels and its own,
    offered beside the farm's index during verification. None otherwise."""
    if not spec.co_staged:
        return None
    folder = work / "cycle"
    folder.mkdir(parents=True, exist_ok=True)
    _fetch_staged(spec.co_staged, folder, storage)
    for w in wheels:
        shutil.copyfile(w, folder / w.name)
    log.write("in a dependency cycle: verified with " + ", ".join(s.filename for s in spec.co_staged) + "\n")
    return folder


def _python3_only(wheel: Path, outcome: verify.VerifyOutcome, targets: list[verify.Target]) -> list[verify.Target]:
    """The Python 3 targets, when a pure wheel for both Python 2 and 3 (`py2.py3-none-any`, built on
    Python 3) failed on 2.7 alone: its Python 3 build may write what 2.7 cannot read (annotations in a
    generated `_version.py`). Then it is published for Python 3 only, if it passes there; else []."""
    majors = {major_of(t.split("-")[0]) for t in wheel_tags(wheel)}
    if majors != {2, 3} or not targets:
        return []
    # verify_all stops at the first failure; an outcome of the first target alone lists no Pythons
    failed_on = outcome.pythons[-1] if outcome.pythons else f"{targets[0].python[0]}.{targets[0].python[1]}"
    if not failed_on.startswith("2."):
        return []
    return [t for t in targets if t.python[0] == 3]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def _fetch_staged(staged: list[StagedWheel], folder: Path, storage: Storage) -> list[Path]:
    """Wheels a job staged while it waited for dependencies, from storage, their digests checked."""
    paths = []
    for wheel in staged:
        dest = folder / wheel.filename
        storage.get_file(wheel.storage_key, dest)
        if sha256_file(dest) != wheel.sha256:
            raise InfrastructureFault("verify", f"staged wheel {wheel.filename} changed in storage")
        paths.append(dest)
    return paths


def _store_log(storage: Storage, key: str, path: Path) -> None:
    if storage.local_path(key) != path:
        storage.put_file(key, path)


def _pipeline(spec: JobSpec, *, settings: Settings, storage: Storage, steps: Steps, work: Path, started: float) -> None:
    # A clean verification container, started while the build runs (its start is then off the job's
    # critical path); killed at the end if verification did not use it.
    image = settings.verify_image(spec.platform, spec.python) if spec.resume == "build" else None
    early = None
    if image is not None:
        from farm.worker.verify_container import VerifyBox

        early = VerifyBox.start_early(image=image, docker_host=settings.docker_host,
                                      timeout=max(settings.build_timeout, settings.cibuildwheel_timeout)
                                      + settings.test_timeout)
    try:
        _steps(spec, settings=settings, storage=storage, steps=steps, work=work, started=started, early=early)
    finally:
        if early is not None:
            early.close()


def _steps(spec: JobSpec, *, settings: Settings, storage: Storage, steps: Steps, work: Path, started: float,
           early: VerifyBox | None = None) -> None:
    options = Options.model_validate(spec.options)
    platform = get_platform(spec.platform)
    log = steps.log
    build = spec.build or BuildRecord()

    with steps.step(JobState.FETCHING):
        source = fetch(spec, work=work, storage=storage, settings=settings, log=log)

    if spec.resume == "build":
        ctx = BuildContext(spec=spec, options=options, platform=platform, settings=settings, src=source, work=work,
                           log=log, sandbox=platform.sandbox(settings), limits=job_limits(settings, options))
        with steps.step(JobState.BUILDING):
            # a build that lacks system packages is retried once with the ones found (farm/worker/sysdeps.py)
            out = sysdeps.build(get_engine(spec.engine), ctx)
        with steps.step(JobState.REPAIRING):
            wheels = out.wheels if out.repaired else [
                platform.repair(w, work / "repaired", exclude=options.repair_exclude, log=log) for w in out.wheels]
            if spec.build_tag:  # an intentional rebuild: new file names beside the published ones
                wheels = [with_build_tag(w, spec.build_tag, work / "tagged") for w in wheels]
                log.write(f"rebuild with build tag {spec.build_tag}: {spec.rebuild_reason}\n")
            for w in wheels:
                # the coordinator checks again before publishing (it does not trust the worker); this
                # only fails an impostor build before it is verified and uploaded
                if (problem := identity_problem(w.name, spec.name, spec.version)) is not None:
                    raise PackageFailure("repair", problem)
                log.write(f"repaired: {w.name} tags={','.join(wheel_tags(w))}\n")
                if not platform.platform_tag_ok(wheel_tags(w)):
                    raise PackageFailure("repair", f"{w.name} does not carry a {platform.name} platform tag")
        build = BuildRecord(tools=out.tools, commands=ctx.commands, image_digest=out.image_digest,
                            build_requires=out.effective_build_requires, build_environment=out.build_environment,
                            isolation=out.isolation,
                            adjustments={**out.adjustments, **({"patches": source.patched} if source.patched else {})},
                            timings=dict(steps.timings), started=started)
    else:
        wheels = _fetch_staged(build.wheels, work / "staged", storage)

    with steps.step(JobState.VERIFYING):
        cycle = _cycle_wheels(spec, wheels, work=work, storage=storage, log=log)
        targets = verify.targets_for(wheels, spec.python, platform, settings)
        index = verify.FarmIndex(settings.verify_index_url)
        beside = sorted(cycle.glob("*.whl")) if cycle else []
        missing = sorted({m for w in wheels for t in targets for m in verify.missing_requirements(
            verify.requirements_for(w, options, t.env), index=index, target=t, beside=beside)})
        if missing:
            log.write(f"the farm's index lacks: {', '.join(missing)}; waiting for them\n")
            staged = []
            for w in wheels:
                k = staged_key(spec.job_id, w.name, attempt=spec.attempt)
                storage.put_file(k, w)
                staged.append(StagedWheel(filename=w.name, sha256=sha256_file(w), storage_key=k))
            verification = None
        else:
            def verify_on(w: Path, on: list[verify.Target], early: VerifyBox | None = None) -> verify.VerifyOutcome:
                return verify.verify_all(wheel=w, targets=on, settings=settings, options=options, project=source,
                                         work=work, log=log, find_links=cycle, sandbox=platform.sandbox(settings),
                                         limits=job_limits(settings, options), early=early)

            verification = [verify_on(w, targets, early if i == 0 else None) for i, w in enumerate(wheels)]
            for i, (w, v) in enumerate(zip(wheels, verification, strict=True)):
                if not v.passed and (python3 := _python3_only(w, v, targets)):  # the wheel does not run on 2.7
                    log.write(f"{w.name} fails on Python 2.7; verified again for Python 3 alone\n")
                    again = verify_on(w, python3)
                    if again.passed:
                        wheels[i] = with_tags(w, [t for t in wheel_tags(w) if major_of(t.split("-")[0]) == 3],
                                              work / "python3-only")
                        again.warnings.append(f"not published for Python 2.7: the wheel built on "
                                              f"{spec.python} failed there ({_last_line(v.detail)}); "
                                              f"published as {wheels[i].name}")
                        log.write(f"warning: {again.warnings[-1]}\n")
                        verification[i] = again
            failed = [v for v in verification if not v.passed]
            if failed:
                raise PackageFailure("verify", f"tests failed in a clean environment:\n{failed[0].detail}")
    if verification is None:
        steps.event(JobState.DEP_WAIT, missing=missing, build=build.model_copy(update={"wheels": staged}))
        return

    with steps.step(JobState.ATTESTING):
        statements = attest(spec, wheels, verification, build, timings=steps.timings, started=started,
                            finished=time.time(), worker=steps.worker)

    with steps.step(JobState.UPLOADING):
        artifacts = []
        for w, stmt in zip(wheels, statements, strict=True):
            meta = read_metadata(w)
            wkey = wheel_key(spec.job_id, w.name, attempt=spec.attempt)
            pkey = statement.storage_key(wkey)
            storage.put_file(wkey, w)
            storage.put_bytes(pkey, statement.payload(stmt))
            artifacts.append(ArtifactReport(
                filename=w.name, sha256=statement.subject(stmt)[1], size=w.stat().st_size,
                storage_key=wkey, tags=wheel_tags(w), requires_python=meta.get("Requires-Python"),
                requires_dist=meta.get_all("Requires-Dist") or [], provenance_key=pkey, provenance=stmt))
    log.write(f"\nbuilt and verified: {', '.join(a.filename for a in artifacts)}\n")
    log.flush()
    key = log_key(spec.job_id, spec.attempt)
    _store_log(storage, key, Path(log.name))
    steps.event(JobState.PUBLISHING, artifacts=artifacts, log_key=key)
