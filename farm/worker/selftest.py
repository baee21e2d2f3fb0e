"""`farm worker --self-test`: build, repair and verify a bundled sample sdist on this host.

The sample (farm/resources/selftest.*: one C extension, no dependencies) is packed into an sdist
at run time and sent through the worker's own pipeline (`farm.worker.pipeline.run_job`: fetch,
build, repair, verify, attest, upload) for each Python the worker offers, with the worker's
configured platform and engine, but with no coordinator, broker or farm API: the storage and the
farm's index are an empty temporary folder, and the job's events are printed instead of sent.
What the host lacks (a compiler, delocate, the Xcode tools, delvewheel, an interpreter) shows up
as the step that failed, with the end of its log.

It needs the upstream index (`upstream_index`) for the sample's build requirement (setuptools),
as every build on the worker does.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farm.config import Settings
from farm.db.states import JobState
from farm.errors import FarmError
from farm.messages import JobEvent, JobSpec, SdistRef
from farm.recipes.schema import Options
from farm.storage import LocalStorage, sdist_key
from farm.worker.platforms import get_platform
from farm.worker.platforms.base import Platform

NAME, VERSION = "farm-selftest", "1.0"
REQUIRES_PYTHON = ">=3.8"  # as in selftest.pyproject.toml; the Pythons it excludes are skipped, as the planner does
MODULE = "farm_selftest"
# Bundled file -> its place in the sdist.
SAMPLE_FILES = {
    "selftest.pyproject.toml": "pyproject.toml",
    "selftest.setup.py": "setup.py",
    "selftest.native.c": "src/native.c",
    "selftest.init.py": f"{MODULE}/__init__.py",
}
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
_SOURCE_DATE = 1_700_000_000  # the sample's file times: the same sdist bytes on every host
Print = Callable[[str], None]


def _admits(python: str) -> bool:
    """Whether the sample's Requires-Python admits the interpreter tag `python` (cp39 -> 3.9)."""
    from packaging.specifiers import SpecifierSet

    from farm.util.python_tags import dotted

    version = dotted(python)
    return version is None or SpecifierSet(REQUIRES_PYTHON).contains(version)


def sample_sdist(dest: Path) -> Path:
    """The sample packed as an sdist (farm_selftest-1.0.tar.gz) in `dest`, the same bytes on every host."""
    root = f"{MODULE}-{VERSION}"
    files = {path: (RESOURCES / bundled).read_bytes() for bundled, path in SAMPLE_FILES.items()}
    files["PKG-INFO"] = (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
                         f"Requires-Python: {REQUIRES_PYTHON}\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{root}.tar.gz"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(files[name]), _SOURCE_DATE, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    with open(path, "wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=_SOURCE_DATE) as gz:
        gz.write(raw.getvalue())
    return path


@dataclass
class StepResult:
    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass
class SelfTestResult:
    platform: str
    engine: str
    steps: list[StepResult] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s.passed for s in self.steps)


class _Printer:
    def __init__(self, out: Print, result: SelfTestResult) -> None:
        self.out, self.result = out, result

    def step(self, name: str, passed: bool, detail: str = "", seconds: float = 0.0) -> None:
        self.result.steps.append(StepResult(name, passed, detail, seconds))
        timing = f"{seconds:6.1f}s" if seconds else " " * 7
        first, *rest = (detail or "").splitlines() or [""]
        self.out(f"  {'PASS' if passed else 'FAIL'}  {name:<22} {timing}  {first}".rstrip())
        for line in rest:
            self.out(f"        {line}")


def run_selftest(settings: Settings, *, platform_name: str, out: Print = print,
                 keep: Path | None = None) -> SelfTestResult:
    """The self-test on this host for the queue `platform_name` with `settings.engine`; prints a line
    per step and returns what passed. `keep`: a folder to keep the work tree, logs and wheels in."""
    result = SelfTestResult(platform=platform_name, engine=settings.engine)
    show = _Printer(out, result)
    out(f"farm worker --self-test: platform {platform_name}, engine {settings.engine}, sample {NAME} {VERSION}")
    try:
        platform = get_platform(platform_name)
    except FarmError as exc:
        show.step("platform", False, str(exc))
        return result
    show.step("platform", True, f"{platform.name} ({platform.family}, {platform.arch})")
    try:
        pythons = [offer.python for offer in platform.offered_pythons(settings)]
    except FarmError as exc:
        show.step("interpreters", False, str(exc))
        return result
    if not pythons:
        show.step("interpreters", False, f"no Python for the {settings.engine} engine (the `pythons` setting)")
        return result
    detail = ", ".join(pythons)
    if settings.engine == "native":
        detail = ", ".join(f"{i.tag} {i.path}" for i in platform.interpreters(settings.interpreters))
    admitted = [p for p in pythons if _admits(p)]
    if len(admitted) < len(pythons):
        detail += f"; skipped {', '.join(p for p in pythons if p not in admitted)} (the sample's Requires-Python {REQUIRES_PYTHON})"
    show.step("interpreters", bool(admitted), detail)
    if not admitted:
        return result
    pythons = admitted

    work = Path(tempfile.mkdtemp(prefix="farm-selftest-")) if keep is None else keep
    try:
        for job_id, python in enumerate(pythons, start=1):
            _one_python(settings, platform, python, job_id=job_id, work=work / python, show=show)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for s in result.steps if s.name.startswith("build+verify ") and s.passed)
    out(f"self-test {'passed' if result.passed else 'FAILED'}: {passed} of {len(pythons)} Pythons built, "
        f"repaired and verified on {platform.name}" + (f"; work kept in {work}" if keep is not None else ""))
    return result


def _one_python(settings: Settings, platform: Platform, python: str, *, job_id: int, work: Path,
                show: _Printer) -> None:
    """One job of the sample for `python`, through the worker's pipeline, in a private FARM_HOME."""
    from farm.worker.pipeline import run_job

    home = work / "home"
    index = work / "index" / "simple"
    index.mkdir(parents=True, exist_ok=True)  # the farm's index: empty (the sample has no dependencies)
    local = settings.model_copy(update={
        "home": home, "storage_root": work / "storage", "index_root": index.parent, "server_url": "", "token": "",
        "farm_index_url": index.as_uri() + "/", "platform": platform.name})
    storage = LocalStorage(local.storage)
    sdist = sample_sdist(work / "sdist")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    key = sdist_key(digest, sdist.name)
    storage.put_file(key, sdist)
    spec = JobSpec(job_id=job_id, attempt=1, name=NAME, version=VERSION,
                   sdist=SdistRef(filename=sdist.name, sha256=digest, size=sdist.stat().st_size, storage_key=key),
                   platform=platform.name, python=python, build_id=platform.build_identifier(python),
                   engine=settings.engine, recipe_name=None, recipe_digest="",
                   options=Options(test_imports=[MODULE]).model_dump(mode="json"),
                   upstream_index=settings.upstream_index)
    events: list[JobEvent] = []

    def report(event: JobEvent) -> None:
        events.append(event)
        if event.step is not None and event.step.finished_at is not None:
            ok = event.step.outcome == "ok"
            detail = "" if ok else _tail(event.step.log)
            show.step(f"{python} {event.step.name}", ok, detail, event.step.finished_at - event.step.started_at)

    start = time.monotonic()
    error = ""
    try:
        run_job(spec, settings=local, storage=storage, report=report, worker="self-test")
    except Exception as exc:  # noqa: BLE001 - an infrastructure fault (a missing tool): reported as the outcome
        error = f"{type(exc).__name__}: {exc}"
    final = events[-1] if events else None
    wheels = [a.filename for a in final.artifacts] if final is not None else []
    if final is not None and final.state == JobState.PUBLISHING and wheels and not error:
        show.result.wheels += wheels
        show.step(f"build+verify {python}", True, ", ".join(wheels), time.monotonic() - start)
        return
    if not error and final is not None:
        error = final.error or f"ended in state {final.state}"
    show.step(f"build+verify {python}", False, error or "no outcome", time.monotonic() - start)


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join(log.rstrip().splitlines()[-lines:])
