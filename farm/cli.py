"""`farm`: the command line. One function per sub-command; the work lives in the farm's modules."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from farm.errors import FarmError

_db_ready = False


def _settings():  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    return get_settings()


def ensure_db() -> None:
    """Create or migrate the database once per process."""
    global _db_ready
    if not _db_ready:
        from farm.db.migrate import is_current, upgrade

        if not is_current():
            upgrade()
        _db_ready = True


# submit / status / logs ----------------------------------------------------------------------


def _remote() -> bool:
    """`server_url` is set (--server, FARM_SERVER_URL, farm.toml): talk to that farm's API."""
    return bool(_settings().server_url)


def cmd_submit(args: argparse.Namespace) -> int:
    if _remote():
        from farm import cli_remote

        return cli_remote.cmd_submit(args)
    from farm.coordinator.submit import submit

    ensure_db()
    settings = _settings()
    job_ids: list[int] = []
    for request in args.requests:
        result = submit(request, settings=settings, priority=args.priority)
        for job_id, build_id, state in result.jobs:
            print(f"job {job_id}: {result.name} {result.version} {build_id} {state}")
            job_ids.append(job_id)
    if not args.wait:
        return 0
    return _wait(job_ids, timeout=args.timeout, quiet=args.quiet)


def _wait(job_ids: list[int], *, timeout: float, quiet: bool) -> int:
    from farm.db.session import session_scope
    from farm.status import jobs_done

    deadline = time.monotonic() + timeout
    last: dict[int, str] = {}
    while True:
        with session_scope() as session:
            done, views = jobs_done(session, job_ids)
        for v in views:
            if not quiet and last.get(v.id) != v.state:
                done_steps = " ".join(f"{s['name']} {s['seconds']:.1f}s" for s in v.steps if s["outcome"] != "running")
                print(f"job {v.id}: {v.name} {v.version} {v.build_id}: {v.state}"
                      + (f"  [{done_steps}]" if done_steps else ""), flush=True)
                last[v.id] = v.state
        if done:
            failed = [v for v in views if v.state != "succeeded"]
            for v in failed:
                print(f"job {v.id} {v.state}: {v.error}", file=sys.stderr)
            for v in views:
                for wheel in v.wheels:
                    print(f"job {v.id}: published {wheel}")
            return 1 if failed else 0
        if time.monotonic() > deadline:
            print(f"timed out after {timeout:.0f} s waiting for jobs {job_ids}", file=sys.stderr)
            return 1
        time.sleep(0.02)


def cmd_status(args: argparse.Namespace) -> int:
    if _remote():
        from farm import cli_remote

        return cli_remote.cmd_status(args)
    from farm.db.session import session_scope
    from farm.status import list_jobs

    ensure_db()
    with session_scope() as session:
        views = list_jobs(session, submission=args.submission, limit=args.limit, active_only=args.active)
    if args.json:
        print(json.dumps([v.as_dict() for v in views], default=str, indent=1))
        return 0
    if not views:
        print("no jobs")
    for v in views:
        steps = " ".join(f"{s['name']}={s['seconds']:.1f}s{'' if s['outcome'] != 'failed' else '!'}" for s in v.steps)
        extra = f" reuses job {v.cached_from}" if v.cached_from else ""
        waiting = f" waiting for {', '.join(v.waiting_for)}" if v.waiting_for else ""
        print(f"{v.id:>5} {v.name} {v.version} {v.build_id:<28} {v.state:<10} {steps}{extra}{waiting}")
        if v.error and v.state == "failed":
            print(f"      {v.error.splitlines()[0][:200]}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if _remote():
        from farm.cli_remote import client_from_settings

        cancel_one = client_from_settings().cancel
    else:
        from farm.coordinator.reconcile import cancel

        ensure_db()
        cancel_one = lambda job_id: cancel(job_id, _settings())  # noqa: E731
    code = 0
    for job_id in args.jobs:
        try:
            print(cancel_one(job_id))
        except FarmError as exc:
            print(f"farm: error: {exc}", file=sys.stderr)
            code = exc.exit_code
    return code


def cmd_logs(args: argparse.Namespace) -> int:
    if _remote():
        from farm import cli_remote

        return cli_remote.cmd_logs(args)
    from farm.db.session import session_scope
    from farm.status import job_log

    ensure_db()
    with session_scope() as session:
        sys.stdout.write(job_log(session, args.job))
    return 0


# processes -----------------------------------------------------------------------------------


def _celery_worker(queues: list[str], name: str) -> int:
    from farm.coordinator.app import get_app

    get_app().worker_main(["worker", "-Q", ",".join(queues), "--pool", "solo", "-n", f"{name}@%h",
                           "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from farm.coordinator.app import WORKER_TASKS, get_app
    from farm.worker.platforms import host_platform_name

    platform = args.platform or _settings().platform or host_platform_name()
    get_app(include=WORKER_TASKS)  # no coordinator task: a worker never imports the database modules
    return _celery_worker([platform], args.name or f"worker-{platform}")


def cmd_coordinator(args: argparse.Namespace) -> int:
    from farm.coordinator.reconcile import Reconciler
    from farm.messages import COORDINATOR_QUEUE
    from farm.storage import own_storage

    ensure_db()
    own_storage()
    Reconciler(_settings()).start()  # a daemon thread: lost jobs and lost messages, every reconcile_interval
    return _celery_worker([COORDINATOR_QUEUE], "coordinator")


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from farm.api.app import create_app

    ensure_db()
    settings = _settings()
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
    settings = _settings()
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
    for name, argv in (("coordinator", [*me, "coordinator"]), ("worker", [*me, "worker"]),
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


# recipes, images, database --------------------------------------------------------------------


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from farm.recipes import check_paths

    paths = [Path(p) for p in args.paths] or _settings().all_recipe_dirs
    problems = check_paths([p for p in paths if p.exists()] if not args.paths else paths)
    for file, key, message in problems:
        print(f"{file}: {key or '<root>'}: {message}")
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 3
    print("recipes ok")
    return 0


def cmd_recipe_docs(args: argparse.Namespace) -> int:
    from farm.recipes.docs import main

    return main([])


def cmd_image_build(args: argparse.Namespace) -> int:
    from farm.images import cli_build

    return cli_build(args)


def cmd_token_create(args: argparse.Namespace) -> int:
    from farm.tokens import create_token

    home = _settings().home
    token = create_token(home, args.name, args.role)
    print(token)
    print(f"token {args.name!r} ({args.role}): shown only now; its sha256 was added to {home / 'farm.toml'}",
          file=sys.stderr)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from farm.db.migrate import upgrade

    upgrade()
    print("database at the newest schema")
    return 0


def read_requirements(path: Path) -> list[str]:
    """Lines of a requirements file, without comments, blank lines and pip options."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise FarmError(f"{path}: {exc.strerror}") from None
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="Wheel Farm: sdists in; repaired, tested wheels out.")
    p.add_argument("--home", help="where the farm keeps its state (FARM_HOME; default ./.farm)")
    p.add_argument("--server", help="a farm's API URL: submit/status/logs/cancel/yank/promote go there (FARM_SERVER_URL)")
    p.add_argument("--token", help="API token for --server (FARM_TOKEN); default for a loopback --server: "
                   "the local admin token `farm up` made ($FARM_HOME/admin.token)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="submit sdist files or NAME==VERSION requirements")
    s.add_argument("requests", nargs="*", metavar="PATH.tar.gz|NAME==VERSION")
    s.add_argument("-r", "--requirements", action="append", default=[], metavar="FILE",
                   help="a requirements file: one NAME==VERSION (or sdist path) per line")
    s.add_argument("--wait", action="store_true", help="block until the jobs end; exit 1 if one failed")
    s.add_argument("--timeout", type=float, default=3600)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--priority", type=int, default=0, choices=range(10), metavar="0-9",
                   help="higher is built first when workers are busy (default 0)")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("status", help="jobs with state and step durations")
    s.add_argument("--submission", type=int)
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--active", action="store_true", help="only jobs that have not ended")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("logs", help="a job's log")
    s.add_argument("job", type=int)
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser("cancel", help="cancel jobs: nothing of theirs is published; workers stop at the next step")
    s.add_argument("jobs", type=int, nargs="+", metavar="JOB")
    s.set_defaults(func=cmd_cancel)

    s = sub.add_parser("up", help="run the embedded farm: API/index, coordinator, one local worker")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("worker", help="a platform worker (Celery, the platform's queue)")
    s.add_argument("--platform")
    s.add_argument("--name", help="Celery node name before the @ (default worker-PLATFORM); distinct per worker on a host")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("coordinator", help="the coordinator (Celery, the coordinator queue)")
    s.set_defaults(func=cmd_coordinator)

    s = sub.add_parser("api", help="the HTTP API and index")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_api)

    recipe = sub.add_parser("recipe", help="recipes").add_subparsers(dest="recipe_command", required=True)
    s = recipe.add_parser("check", help="validate recipe files; every error with file and key path")
    s.add_argument("paths", nargs="*")
    s.set_defaults(func=cmd_recipe_check)
    s = recipe.add_parser("docs", help="regenerate recipes/recipe.schema.json and docs/recipes.md")
    s.set_defaults(func=cmd_recipe_docs)

    image = sub.add_parser("image", help="build images").add_subparsers(dest="image_command", required=True)
    s = image.add_parser("build", help="make a manylinux-compatible build image from a Debian archive")
    from farm.images import add_arguments

    add_arguments(s)
    s.set_defaults(func=cmd_image_build)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    s = token.add_parser("create", help="make a token, print it once, add its sha256 to $FARM_HOME/farm.toml")
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=["submit", "worker", "admin"])
    s.set_defaults(func=cmd_token_create)

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    s = db.add_parser("upgrade", help="apply migrations")
    s.set_defaults(func=cmd_db_upgrade)

    from farm.cli_index import add_commands as add_index_commands  # init verify yank promote publish-to ...

    add_index_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.home:
        os.environ["FARM_HOME"] = str(Path(args.home).absolute())
    if args.server:
        os.environ["FARM_SERVER_URL"] = args.server
    if args.token:
        os.environ["FARM_TOKEN"] = args.token
    if args.home or args.server or args.token:
        from farm.config import reset_settings

        reset_settings()
    try:
        if args.command == "submit":
            args.requests = [*args.requests, *(line for f in args.requirements for line in read_requirements(Path(f)))]
            if not args.requests:
                raise FarmError("nothing to submit: give sdist paths, requirements, or -r FILE")
        return args.func(args)
    except FarmError as exc:
        print(f"farm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `farm status | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
