"""The `farm` parser, `main`, and the commands that are not processes or the publishing end.

submit, status, logs, cancel, yank and promote are written once, against the `Backend` `main`
chooses (`backend.choose`); the others run on this host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from farm.cli import processes, publishing, render, tokens
from farm.cli.backend import Backend, choose
from farm.config import get_settings, reset_settings
from farm.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, FarmError, RecipeError, UsageError

OnBackend = Callable[[argparse.Namespace, Backend], int]


# jobs and releases: on either backend -----------------------------------------------------------


def cmd_submit(args: argparse.Namespace, backend: Backend) -> int:
    from farm.cli.requirements import read

    job_ids: list[int] = []
    for file in args.requirements:  # a file is one submission
        found = read(Path(file))
        for note in found.ignored:
            print(f"farm: ignored: {note}", file=sys.stderr)
        if not found.items:
            raise FarmError(f"{file}: no requirement in it")
        many = backend.submit_requirements(file, found.items, priority=args.priority, rebuild=args.rebuild,
                                           platforms=args.platform, pythons=args.python)
        print(f"submission {many['submission_id']}: {file}: {len(many['sources'])} sdist(s)")
        for skipped in many["skipped"]:
            print(f"skipped {skipped}")
        for sub in many["sources"]:
            render.lines(render.submitted_lines(sub))
            for warning in sub.get("warnings", []):
                print(f"farm: warning: {warning}", file=sys.stderr, flush=True)
            job_ids += [j["id"] for j in sub["jobs"]]
    for request in args.requests:
        sub = backend.submit(request, priority=args.priority, rebuild=args.rebuild, platforms=args.platform,
                             pythons=args.python)
        render.lines(render.submitted_lines(sub))
        for warning in sub.get("warnings", []):
            print(f"farm: warning: {warning}", file=sys.stderr, flush=True)
        job_ids += [j["id"] for j in sub["jobs"]]
    if not args.wait:
        return EXIT_OK
    return render.wait(backend, job_ids, timeout=args.timeout, quiet=args.quiet)


def cmd_status(args: argparse.Namespace, backend: Backend) -> int:
    views = backend.jobs(submission=args.submission, limit=args.limit, active=args.active)
    if args.json:
        print(json.dumps(views, default=str, indent=1))
    else:
        sys.stdout.write(render.status_table(views))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, backend: Backend) -> int:
    if args.follow:
        if args.json:
            raise UsageError("--follow prints the log as it grows; --json prints it once: give one of them")
        return render.follow(backend, args.job)
    text = backend.log(args.job)
    if args.json:
        print(json.dumps({"job": args.job, "log": text}, indent=1))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, backend: Backend) -> int:
    code = EXIT_OK
    for job_id in args.jobs:
        try:
            print(backend.cancel(job_id))
        except FarmError as exc:
            print(f"farm: error: {exc}", file=sys.stderr)
            code = exc.exit_code
    return code


def cmd_yank(args: argparse.Namespace, backend: Backend) -> int:
    return render.lines(backend.yank(args.pin, reason=args.reason, undo=args.undo))


def cmd_promote(args: argparse.Namespace, backend: Backend) -> int:
    return render.lines(backend.promote(args.pin, to=args.to, upload=not args.no_upload))


# recipes, images, tokens, database, rebuilds: on this host ---------------------------------------


def cmd_rebuild(args: argparse.Namespace) -> int:
    """Plan the rebuilds an input calls for (farm.coordinator.cascade); unless --dry-run, submit them
    round by round, each round once the one before it has ended (what depends on a rebuilt project
    is verified against its rebuild)."""
    import time

    from farm.cli import ensure_db
    from farm.cli.backend import LocalBackend
    from farm.coordinator import cascade
    from farm.db.session import session_scope
    from farm.storage import get_storage

    settings = get_settings()
    if settings.server_url:
        raise UsageError("farm rebuild runs on the farm's host (it reads the provenance of every published "
                         "wheel); run it there without --server")
    selector = cascade.parse_selector(args.affected_by)
    ensure_db(create=False)
    with session_scope() as session:
        plan = cascade.plan_rebuilds(session, settings, selector, dependents=not args.only_direct)
    render.lines(render.rebuild_plan(plan))
    if args.dry_run or not plan.items:
        return EXIT_OK
    backend, storage = LocalBackend(settings), get_storage()
    deadline = time.monotonic() + args.timeout
    for n, rnd in enumerate(plan.rounds, 1):
        job_ids: list[int] = []
        for path, platform, pythons, reason in cascade.requests(rnd, storage.local_path):
            sub = backend.submit(path, priority=args.priority, rebuild=reason, platforms=[platform], pythons=pythons)
            render.lines(render.submitted_lines(sub))
            job_ids += [j["id"] for j in sub["jobs"]]
        print(f"round {n} of {len(plan.rounds)}: waiting for job(s) {', '.join(map(str, job_ids))}", flush=True)
        code = render.wait(backend, job_ids, timeout=max(deadline - time.monotonic(), 0.0), quiet=args.quiet)
        if code != EXIT_OK:
            if n < len(plan.rounds):
                print(f"farm: round {n} did not succeed; rounds {n + 1}-{len(plan.rounds)} were not submitted "
                      f"(run the same command again once it is mended)", file=sys.stderr)
            return code
    return EXIT_OK


# recipes, images, tokens, database: on this host -------------------------------------------------


def cmd_recipe_check(args: argparse.Namespace) -> int:
    from farm.recipes import check_paths

    from farm.config import builtin_recipe_dir

    paths = [Path(p) for p in args.paths] or get_settings().all_recipe_dirs
    if not args.paths:  # the folders the farm searches: say which, and what each holds
        builtin = builtin_recipe_dir()
        if not sorted(builtin.glob("*.toml")):
            raise RecipeError([(str(builtin), "", "no built-in recipe here: this copy of the farm is incomplete")])
        for folder in paths:
            names = sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []
            kind = "built-in" if folder == builtin else "recipes_dirs"
            print(f"{folder} ({kind}): {', '.join(names) if names else 'no recipes'}")
    problems = check_paths([p for p in paths if p.exists()] if not args.paths else paths)
    for file, key, message in problems:
        print(f"{file}: {key or '<root>'}: {message}")
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return RecipeError.exit_code
    print("recipes ok")
    _offer_rebuilds()
    return EXIT_OK


def _offer_rebuilds() -> None:
    """After a recipe change: the farm's published wheels an older recipe built, and the command that
    rebuilds them (only where this host has a farm; nothing is created)."""
    from farm.cli import ensure_db
    from farm.coordinator.cascade import stale_recipes
    from farm.db.session import session_scope
    from farm.errors import NoFarm

    settings = get_settings()
    if settings.server_url:
        return
    try:
        ensure_db(create=False)
        with session_scope() as session:
            stale = stale_recipes(session, settings)
    except NoFarm:
        return
    render.lines(render.stale_recipes(stale))


def cmd_recipe_suggest(args: argparse.Namespace) -> int:
    from farm.cli import ensure_db
    from farm.db.session import session_scope
    from farm.recipes.suggest import for_project

    name, _, version = args.name.partition("==")
    ensure_db(create=False)
    with session_scope() as session:
        text, job_id = for_project(session, name.strip(), version.strip() or None)
    if args.json:
        print(json.dumps({"name": name.strip(), "job": job_id, "recipe": text}, indent=1))
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_recipe_docs(args: argparse.Namespace) -> int:
    from farm.recipes.docs import main

    return main([*(["--check"] if args.check else []), *(["--root", args.root] if args.root else [])])


def cmd_image_build(args: argparse.Namespace) -> int:
    from farm.images import cli_build

    return cli_build(args)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from farm.db.migrate import upgrade

    upgrade()
    print("database at the newest schema")
    return EXIT_OK


# the parser -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farm", description="Wheel Farm: sdists in; repaired, tested wheels out.",
                                epilog="Exit codes: docs/cli.md.")
    p.add_argument("--home", help="where the farm keeps its state (FARM_HOME; default ./.farm)")
    p.add_argument("--server", help="a farm's API URL: submit/status/logs/cancel/yank/promote go there (FARM_SERVER_URL)")
    p.add_argument("--token", help="API token for --server (FARM_TOKEN); default for a loopback --server: "
                   "the local admin token `farm up` made ($FARM_HOME/admin.token)")
    sub = p.add_subparsers(dest="command", required=True)

    def on_backend(s: argparse.ArgumentParser, command: OnBackend) -> None:
        s.set_defaults(on_backend=command)

    s = sub.add_parser("submit", help="submit sdist files or NAME==VERSION requirements")
    s.add_argument("requests", nargs="*", metavar="PATH.tar.gz|NAME==VERSION")
    s.add_argument("-r", "--requirements", action="append", default=[], metavar="FILE",
                   help="a requirements file, read as pip reads it (continuations, --hash, -r, -c, extras, markers); "
                   "one submission per file")
    s.add_argument("--wait", action="store_true", help="block until the jobs end; exit 1 if one failed, "
                   "124 if --timeout passed first")
    s.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits (default %(default).0f)")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--priority", type=int, default=0, choices=range(10), metavar="0-9",
                   help="higher is built first when workers are busy (default 0)")
    s.add_argument("--rebuild", metavar="REASON", help="build again what was built already: the wheels get the "
                   "next build tag (-1, -2, ...) beside the published ones; REASON goes into the job and provenance")
    s.add_argument("--python", action="append", default=[], metavar="3.12",
                   help="only for this Python (repeat for more; 3.14t: the free-threaded build); default: every "
                        "Python the workers offer")
    s.add_argument("--platform", action="append", default=[], metavar="linux-aarch64",
                   help="only for this platform (repeat for more); default: the configured ones")
    on_backend(s, cmd_submit)

    s = sub.add_parser("status", help="jobs with state and step durations")
    s.add_argument("--submission", type=int)
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--active", action="store_true", help="only jobs that have not ended")
    s.add_argument("--json", action="store_true")
    on_backend(s, cmd_status)

    s = sub.add_parser("logs", help="a job's log")
    s.add_argument("job", type=int)
    s.add_argument("-f", "--follow", action="store_true", help="print the log as it grows until the job ends")
    s.add_argument("--json", action="store_true", help='{"job": N, "log": TEXT}')
    on_backend(s, cmd_logs)

    s = sub.add_parser("rebuild", help="build again, in dependency order and with new build tags, every published "
                       "wheel built with an input: NAME[==VERSION], recipe:NAME or image:REF")
    s.add_argument("--affected-by", required=True, metavar="NAME[==V]|recipe:NAME|image:REF",
                   help="a build requirement or runtime dependency (a version specifier optional); recipe:NAME, "
                   "the wheels of NAME built with another recipe than its current one; image:REF, a build image's "
                   "digest or reference")
    s.add_argument("--dry-run", action="store_true", help="print the plan; submit nothing")
    s.add_argument("--only-direct", action="store_true", help="leave out what depends at runtime on a rebuilt project")
    s.add_argument("--priority", type=int, default=0, choices=range(10), metavar="0-9")
    s.add_argument("--timeout", type=float, default=3600 * 6, help="seconds to wait for every round (default %(default).0f)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_rebuild)

    s = sub.add_parser("cancel", help="cancel jobs: nothing of theirs is published; workers stop at the next step")
    s.add_argument("jobs", type=int, nargs="+", metavar="JOB")
    on_backend(s, cmd_cancel)

    s = sub.add_parser("up", help="run the embedded farm: API/index, coordinator, a local worker")
    s.add_argument("--port", type=int)
    s.add_argument("--jobs", type=int, metavar="N", help="jobs the local worker runs at once (default worker_jobs: "
                   "the core count, as far as the memory holds build_memory for each)")
    s.set_defaults(func=processes.cmd_up)

    s = sub.add_parser("worker", help="a platform worker (Celery, the platform's queue)")
    s.add_argument("--platform")
    s.add_argument("--name", help="Celery node name before the @ (default worker-PLATFORM); distinct per worker on a host")
    s.add_argument("--jobs", type=int, metavar="N", help="jobs run at once, one worker process each, named NAME-1 ... "
                   "(default worker_jobs: the core count, as far as the memory holds build_memory for each; "
                   "a matrix's Pythons build in parallel)")
    s.add_argument("--self-test", action="store_true", help="build, repair and verify a bundled sample sdist on this "
                   "host with the configured platform and engine (no coordinator or broker), then exit")
    s.add_argument("--keep", metavar="DIR", help="with --self-test: keep its work tree, logs and wheels in DIR")
    s.set_defaults(func=processes.cmd_worker)

    s = sub.add_parser("coordinator", help="the coordinator (Celery, the coordinator queue)")
    s.set_defaults(func=processes.cmd_coordinator)

    s = sub.add_parser("api", help="the HTTP API and index")
    s.add_argument("--port", type=int)
    s.set_defaults(func=processes.cmd_api)

    recipe = sub.add_parser("recipe", help="recipes").add_subparsers(dest="recipe_command", required=True)
    s = recipe.add_parser("check", help="validate recipe files; every error with file and key path")
    s.add_argument("paths", nargs="*")
    s.set_defaults(func=cmd_recipe_check)
    s = recipe.add_parser("suggest", help="print the recipe the farm suggests for NAME: the system packages it "
                          "found for a build that lacked them (TOML for recipes/NAME.toml)")
    s.add_argument("name", metavar="NAME[==VERSION]")
    s.add_argument("--json", action="store_true", help='{"name": NAME, "job": N, "recipe": TEXT}')
    s.set_defaults(func=cmd_recipe_suggest)
    s = recipe.add_parser("docs", help="regenerate recipes/recipe.schema.json and docs/recipes.md")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is out of date")
    s.add_argument("--root", help="the repository root (default: the one this farm package is in)")
    s.set_defaults(func=cmd_recipe_docs)

    image = sub.add_parser("image", help="build images").add_subparsers(dest="image_command", required=True)
    s = image.add_parser("build", help="make a manylinux-compatible build image from a Debian archive")
    from farm.images import add_arguments

    add_arguments(s)
    s.set_defaults(func=cmd_image_build)

    tokens.add_commands(sub)  # token create list revoke

    db = sub.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    s = db.add_parser("upgrade", help="apply migrations")
    s.set_defaults(func=cmd_db_upgrade)

    s = sub.add_parser("yank", help="PEP 592: mark NAME==VERSION yanked (or --undo) and rewrite its pages")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.add_argument("--reason", default=None)
    s.add_argument("--undo", action="store_true")
    on_backend(s, cmd_yank)

    s = sub.add_parser("promote", help="add NAME==VERSION to a higher channel, through the gate")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.add_argument("--to", required=True, metavar="CHANNEL")
    s.add_argument("--no-upload", action="store_true", help="do not upload to the targets bound to the channel")
    on_backend(s, cmd_promote)

    publishing.add_commands(sub)  # init verify publish-to reindex find show gc
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
        reset_settings()
    try:
        if args.command == "submit":
            if not args.requests and not args.requirements:
                raise FarmError("nothing to submit: give sdist paths, requirements, or -r FILE")
        command: OnBackend | None = getattr(args, "on_backend", None)
        if command is not None:
            return command(args, choose())
        return args.func(args)
    except FarmError as exc:
        print(f"farm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `farm status | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
