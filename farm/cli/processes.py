"""`farm up`, `farm api`, `farm coordinator`, `farm worker`: the farm's long-running processes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from farm.cli import ensure_db
from farm.config import get_settings


def _celery_worker(queues: list[str], name: str) -> int:
    from farm.coordinator.app import get_app

    get_app().worker_main(["worker", "-Q", ",".join(queues), "--pool", "solo", "-n", f"{name}@%h",
                           "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"])
    return 0


def worker_jobs(requested: int | None = None) -> int:
    """How many jobs a worker host runs at once: `--jobs`, else `worker_jobs`, else `default_jobs()`."""
    if requested is not None and requested < 1:
        raise SystemExit("farm worker: --jobs must be 1 or more")
    return requested or get_settings().worker_jobs or default_jobs()


def default_jobs(cores: int | None = None, memory: int | None = None, build_memory: str | None = None) -> int:
    """A job per core, as far as the host's memory holds `build_memory` for each (a 16-core host with
    24 GB runs six 4g builds, not sixteen). More slots than cores were measured not to finish a
    matrix sooner (five Pythons on two cores with two, three and five slots: docs/benchmarks.md).
    `cores`, `memory` (bytes) and `build_memory` default to this host's and the settings'."""
    cores = cores or os.cpu_count() or 1
    memory = memory if memory is not None else _host_memory()
    each = _bytes(build_memory if build_memory is not None else get_settings().build_memory)
    fits = memory // each if memory and each else cores
    return max(1, min(cores, fits))


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # Windows has no sysconf
        return None


def _bytes(size: str) -> int | None:
    """`4g` (Docker's notation: b, k, m, g) in bytes; None for what is not such a size."""
    text = size.strip().lower()
    units = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    unit = units.get(text[-1:], None)
    number = text[:-1] if unit else text
    try:
        return int(float(number) * (unit or 1))
    except ValueError:
        return None


def cmd_worker(args: argparse.Namespace) -> int:
    from farm.worker.platforms import host_platform_name

    platform = args.platform or get_settings().platform or host_platform_name()
    if getattr(args, "self_test", False):
        return cmd_worker_self_test(platform, keep=getattr(args, "keep", None))
    name = args.name or f"worker-{platform}"
    jobs = worker_jobs(getattr(args, "jobs", None))
    if jobs > 1:
        return _worker_pool(platform, name, jobs)
    from farm.coordinator.app import WORKER_TASKS, get_app

    get_app(include=WORKER_TASKS)  # no coordinator task: a worker never imports the database modules
    return _celery_worker([platform], name)


def _worker_pool(platform: str, name: str, jobs: int) -> int:
    """`jobs` workers of one job each (Celery's solo pool, as `--jobs 1`), named NAME-1 ... NAME-N: each is
    its own process with its own heartbeats, so a fault or a lost process costs one job, and the
    coordinator sees N workers. A worker that exits on its own is started again (after 5 s). SIGTERM
    or SIGINT is passed on to them all and waited for, as a single worker finishes its job first; a
    second one is passed on too (a second Ctrl-C is Celery's cold shutdown). When this process dies, killed or not, the
    kernel kills its workers (as a killed single worker dies with its job): none is left behind."""
    argv = [sys.executable, "-m", "farm.cli", "worker", "--platform", platform, "--jobs", "1"]
    children: dict[str, subprocess.Popen[bytes]] = {}
    restart_at: dict[str, float] = {}
    stop = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    names = [f"{name}-{n}" for n in range(1, jobs + 1)]
    print(f"farm worker: {jobs} jobs at once on {platform}: {', '.join(names)}", flush=True)
    for child in names:
        children[child] = _start(argv, child)
    while not stop:
        now = time.monotonic()
        for child, proc in list(children.items()):
            if proc.poll() is None:
                continue
            if child not in restart_at:
                print(f"farm worker: {child} exited with {proc.returncode}; starting it again in 5 s",
                      file=sys.stderr, flush=True)
                restart_at[child] = now + 5
            elif now >= restart_at[child]:
                del restart_at[child]
                children[child] = _start(argv, child)
        time.sleep(0.2)
    for proc in children.values():
        proc.wait()
    return 0


def _start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
    linux = sys.platform.startswith("linux")
    return subprocess.Popen([*argv, "--name", name], preexec_fn=_die_with_parent if linux else None)  # noqa: PLW1509


def _die_with_parent() -> None:
    """In a pool's worker (Linux): SIGKILL when the pool process dies, even by SIGKILL, so none is left behind."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cmd_worker_self_test(platform: str, *, keep: str | None = None) -> int:
    """Build, repair and verify the bundled sample on this host, as this worker would (no coordinator,
    broker or API); exit 0 when every step passed, 1 otherwise."""
    from pathlib import Path

    from farm.worker.selftest import run_selftest

    folder = Path(keep).absolute() if keep else None
    result = run_selftest(get_settings(), platform_name=platform, out=lambda line: print(line, flush=True), keep=folder)
    return 0 if result.passed else 1


def cmd_coordinator(args: argparse.Namespace) -> int:
    from farm.coordinator.reconcile import Reconciler
    from farm.messages import COORDINATOR_QUEUE
    from farm.storage import own_storage

    ensure_db()
    own_storage()
    Reconciler(get_settings()).start()  # a daemon thread: lost jobs and lost messages, every reconcile_interval
    return _celery_worker([COORDINATOR_QUEUE], "coordinator")


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from farm.api.app import create_app

    ensure_db()
    settings = get_settings()
    uvicorn.run(create_app(settings), host=settings.api_host, port=args.port or settings.api_port,
                log_level="warning")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """API/index, coordinator and one local worker, each its own process, stopped together.

    On first start it makes the local admin token ($FARM_HOME/admin.token, mode 0600): the API
    trusts no client without a token, loopback included, and the CLI on this host sends that one.
    """
    import httpx

    from farm.tokens import ensure_local_admin_token, local_admin_path

    ensure_db()
    settings = get_settings()
    _, created = ensure_local_admin_token(settings.home)
    if created:
        print(f"farm up: made the local admin token {local_admin_path(settings.home)} (mode 0600); "
              "`farm --server URL ...` on this host sends it", flush=True)
    port = args.port or settings.api_port
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FARM_HOME": str(settings.home), "FARM_API_PORT": str(port)}  # port: provenance links
    me = [sys.executable, "-m", "farm.cli"]
    children: dict[str, subprocess.Popen[bytes]] = {}
    jobs = ["--jobs", str(worker_jobs(args.jobs))] if getattr(args, "jobs", None) else []
    for name, argv in (("coordinator", [*me, "coordinator"]), ("worker", [*me, "worker", *jobs]),
                       ("api", [*me, "api", "--port", str(port)])):
        with open(logs / f"{name}.log", "ab") as out:
            children[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    (settings.home / "farm-up.pid").write_text(str(os.getpid()))
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    url = f"http://{settings.api_host}:{port}"
    deadline = time.monotonic() + 60
    while not stop and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    print(f"farm up: index {url}/simple/  state {settings.home}  logs {logs}", flush=True)
    code = 0
    while not stop:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"farm up: {name} exited with {proc.returncode}; see {logs / (name + '.log')}", file=sys.stderr)
                stop, code = True, 1
        time.sleep(0.2)
    for proc in children.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in children.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    (settings.home / "farm-up.pid").unlink(missing_ok=True)
    return code
