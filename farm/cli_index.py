"""`farm` sub-commands of the publishing end: init, verify, yank, promote, publish-to, reindex,
find, show, gc. Registered by `farm.cli.parser()`; the work lives in farm/index/,
farm/provenance/ and farm/records.py."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any


def _settings():  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    return get_settings()


def _db() -> None:
    from farm.cli import ensure_db

    ensure_db()


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_init(args: argparse.Namespace) -> int:
    from farm.index import channels
    from farm.provenance import keys

    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    _db()
    key, created = keys.ensure_key(settings.home)
    lay = channels.ensure_trees(settings)
    kid = keys.keyid_of(key.public_key())
    print(f"farm home      {settings.home}")
    print(f"signing key    {keys.key_dir(settings.home) / keys.KEY_FILE} ({'new' if created else 'existing'}, "
          f"ed25519, key id {kid})")
    print(f"public key     {lay.base_url}keys/farm.pub  ({lay.index / 'keys' / keys.PUB_FILE})")
    for t in lay.trees():
        kind = "channel" if t in lay.channels else "virtual " + "+".join(lay.virtual[t])
        extra = "  (also /simple/)" if t == lay.first else ""
        print(f"index {t:<8} {lay.base_url}{t}/simple/  [{kind}]{extra}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.index.promote import parse_pin
    from farm.provenance.verify import load_keys, served_copies, verify_copy, verify_wheel

    settings = _settings()
    keys = load_keys(settings, Path(args.key) if args.key else None)
    session_cm = None
    if not args.no_db:
        _db()
        session_cm = session_scope()
    reports = []
    with session_cm if session_cm is not None else _Null() as session:
        target = args.target
        if target.endswith(".whl") or Path(target).exists():
            reports.append(verify_wheel(Path(target), settings=settings, session=session, keys=keys,
                                        provenance=Path(args.provenance) if args.provenance else None,
                                        offline=args.offline))
        else:
            if session is None:
                print("farm: error: NAME==VERSION needs the database", file=sys.stderr)
                return 2
            # Every served copy (each tree listing the file), against the record and the signature.
            for copy in served_copies(settings, session, *parse_pin(target)):
                reports.append(verify_copy(copy, settings=settings, session=session, keys=keys,
                                           provenance=Path(args.provenance) if args.provenance else None,
                                           offline=args.offline))
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        for r in reports:
            print(r.wheel)
            for c in r.checks:
                mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
                print(f"  {mark}  {c.name:<12} {c.detail}")
            print("  verified" if r.ok else "  NOT VERIFIED")
    return 0 if reports and all(r.ok for r in reports) else 1


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def cmd_yank(args: argparse.Namespace) -> int:
    from farm.cli import _remote

    if _remote():
        return _lines(_api().yank(args.pin, reason=args.reason, undo=args.undo))
    from farm.index.promote import yank_and_rewrite

    _db()
    return _lines(yank_and_rewrite(_settings(), args.pin, reason=args.reason, undo=args.undo))


def cmd_promote(args: argparse.Namespace) -> int:
    from farm.cli import _remote

    if _remote():
        return _lines(_api().promote(args.pin, to=args.to, upload=not args.no_upload))
    from farm.index.promote import promote_and_publish

    _db()
    return _lines(promote_and_publish(_settings(), args.pin, args.to, by=f"farm promote ({_who()})",
                                      upload=not args.no_upload))


def _api():  # type: ignore[no-untyped-def]
    from farm.cli_remote import client_from_settings

    return client_from_settings()


def _lines(lines: list[str]) -> int:
    for line in lines:
        print(line)
    return 0


def cmd_publish_to(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.index.targets import publish_to

    _db()
    with session_scope() as session:
        for up in publish_to(session, _settings(), args.target, args.pin):
            listed = "" if up.listed is None else ", listed"
            print(f"{up.status} to {up.target}: {up.filename} ({up.seconds:.2f} s{listed})")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from farm.db.models import Artifact
    from farm.db.session import session_scope
    from farm.index import channels

    _db()
    settings = _settings()
    with session_scope() as session:
        names = args.projects or sorted(set(session.scalars(select(Artifact.name))))
        for name in names:
            channels.regenerate(session, settings, name)
            print(f"rewrote {name}")
    return 0


def cmd_find(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.records import find_sha256

    _db()
    with session_scope() as session:
        found = find_sha256(session, args.sha256)
    _print(found, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.records import show

    _db()
    with session_scope() as session:
        found = show(session, _settings(), args.pin)
    _print(found, args.json)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from farm.records import gc

    _db()
    result = gc(_settings(), dry_run=args.dry_run, keep=args.keep, min_age_days=args.min_age_days)
    _print(result, args.json)
    return 0


def _print(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=1, default=str))
        return
    from farm.records import render

    sys.stdout.write(render(data))


def add_commands(sub: Any) -> None:
    s = sub.add_parser("init", help="create the farm's state, database, signing key and index trees")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("verify", help="check a wheel's signed provenance (signature, digest, sdist, verification); "
                                      "NAME==VERSION: every served copy, also against the farm's record")
    s.add_argument("target", metavar="WHEEL|NAME==VERSION")
    s.add_argument("--key", help="public key (PEM) to verify with; default the farm's")
    s.add_argument("--provenance", help="the .provenance document; default beside the wheel, the index, the database")
    s.add_argument("--offline", action="store_true", help="do not ask the upstream index about the sdist")
    s.add_argument("--no-db", action="store_true", help="without the farm's database (the sdist check is skipped)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("yank", help="PEP 592: mark NAME==VERSION yanked (or --undo) and rewrite its pages")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.add_argument("--reason", default=None)
    s.add_argument("--undo", action="store_true")
    s.set_defaults(func=cmd_yank)

    s = sub.add_parser("promote", help="add NAME==VERSION to a higher channel, through the gate")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.add_argument("--to", required=True, metavar="CHANNEL")
    s.add_argument("--no-upload", action="store_true", help="do not upload to the targets bound to the channel")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("publish-to", help="upload NAME==VERSION to a configured index (upload_targets)")
    s.add_argument("target")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.set_defaults(func=cmd_publish_to)

    s = sub.add_parser("reindex", help="rewrite the pages of every tree from the database")
    s.add_argument("projects", nargs="*")
    s.set_defaults(func=cmd_reindex)

    s = sub.add_parser("find", help="an artifact by sha256, with its build record")
    s.add_argument("--sha256", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_find)

    s = sub.add_parser("show", help="NAME==VERSION: wheels, inputs, logs, verification, channels")
    s.add_argument("pin", metavar="NAME==VERSION")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("gc", help="apply the retention policy; never removes what a channel serves")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--keep", type=int, help="versions kept per project in each pruned channel (overrides config)")
    s.add_argument("--min-age-days", type=float, help="only remove files older than this (overrides config)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_gc)
