"""`farm` sub-commands of the publishing end, on this host's farm: init, verify, publish-to,
reindex, find, show, gc (yank and promote, which also run over the API, are in `commands`);
find and show read from a farm's API with `--server`.
Registered by `farm.cli.parser()`; the work lives in farm/index/, farm/provenance/ and
farm/records.py.

Only `init` creates a farm; the others raise `NoFarm` where there is none (`verify` of a URL, of an
index's NAME==VERSION, of a file with --key away from a farm, or with --no-db needs none and makes none)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from farm.cli import ensure_db, render
from farm.config import get_settings
from farm.errors import EXIT_DOCTOR_FOUND, EXIT_NOT_VERIFIED, EXIT_OK, UsageError


def _db() -> None:
    ensure_db(create=False)


def cmd_init(args: argparse.Namespace) -> int:
    from farm.index import channels
    from farm.provenance import keys

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_db()
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
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from farm.provenance import remote

    target = args.target
    local_file = not remote.is_url(target) and (target.endswith(".whl") or Path(target).exists())
    if args.no_db and not (local_file or remote.is_url(target) or args.index):
        raise UsageError("NAME==VERSION needs the farm's database, or an index to read it from: --index URL --key KEY")
    if args.index or remote.is_url(target) or (local_file and (args.no_db or (args.key and not _farm_here()))):
        reports = _verify_remote(args, remote)  # no farm read or made: only the key and what is served
    else:
        reports = _verify_local(args, local_file)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        for r in reports:
            print(r.wheel)
            for c in r.checks:
                mark = {True: "ok  ", False: "FAIL", None: "warn" if c.detail.startswith("warning") else "skip"}[c.ok]
                print(f"  {mark}  {c.name:<12} {c.detail}")
            print("  verified" if r.ok else "  NOT VERIFIED")
    return EXIT_OK if reports and all(r.ok for r in reports) else EXIT_NOT_VERIFIED


def _farm_here() -> bool:
    """Whether a farm exists where the settings point (its database), without making one."""
    from farm.cli import _check_farm_exists
    from farm.errors import NoFarm

    try:
        _check_farm_exists()
    except NoFarm:
        return False
    return True


def _verify_remote(args: argparse.Namespace, remote: Any) -> list[Any]:
    from farm.provenance.keys import keyid_of, load_public

    if not args.key and args.no_db and not args.index and not remote.is_url(args.target):
        from farm.provenance.verify import load_keys

        return [remote.verify_file(Path(args.target), keys=load_keys(get_settings(), None), provenance=args.provenance,
                                   offline=args.offline)]
    if not args.key:
        raise UsageError("verifying a URL, an index or a wheel away from its farm needs the farm's public key: "
                         "--key farm.pub (served at <index>/keys/farm.pub; take it from a source you trust)")
    pub = load_public(Path(args.key).read_bytes(), args.key)
    keys = {keyid_of(pub): pub}
    target = args.target
    if args.index or (remote.is_url(target) and not target.split("#", 1)[0].endswith(".whl")):
        index, pin = (args.index, target) if args.index else (target, args.pin)
        if not pin:
            raise UsageError("with an index URL, name the version: farm verify INDEX_URL NAME==VERSION --key KEY")
        return [remote.verify_url(url, keys=keys, provenance=prov, listed_sha256=sha, offline=args.offline)
                for url, sha, prov in remote.wheels_of(index, pin)]
    if remote.is_url(target):
        return [remote.verify_url(target, keys=keys, provenance=args.provenance, offline=args.offline)]
    return [remote.verify_file(Path(target), keys=keys, provenance=args.provenance, offline=args.offline)]


def _verify_local(args: argparse.Namespace, local_file: bool) -> list[Any]:
    from farm.db.session import session_scope
    from farm.index.promote import parse_pin
    from farm.provenance.verify import load_keys, served_copies, verify_copy, verify_wheel

    settings = get_settings()
    _db()
    keys = load_keys(settings, Path(args.key) if args.key else None)
    reports = []
    with session_scope() as session:
        if local_file:
            reports.append(verify_wheel(Path(args.target), settings=settings, session=session, keys=keys,
                                        provenance=Path(args.provenance) if args.provenance else None,
                                        offline=args.offline))
        else:
            # Every served copy (each tree listing the file), against the record and the signature.
            for copy in served_copies(settings, session, *parse_pin(args.target)):
                reports.append(verify_copy(copy, settings=settings, session=session, keys=keys,
                                           provenance=Path(args.provenance) if args.provenance else None,
                                           offline=args.offline))
    return reports


def cmd_publish_to(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.index.targets import publish_to

    _db()
    with session_scope() as session:
        for up in publish_to(session, get_settings(), args.target, args.pin):
            listed = "" if up.listed is None else ", listed"
            print(f"{up.status} to {up.target}: {up.filename} ({up.seconds:.2f} s{listed})")
    return EXIT_OK


def cmd_reindex(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from farm.db.models import Artifact
    from farm.db.session import session_scope
    from farm.index import channels

    _db()
    settings = get_settings()
    with session_scope() as session:
        names = args.projects or sorted(set(session.scalars(select(Artifact.name))))
        for name in names:
            channels.regenerate(session, settings, name)
            print(f"rewrote {name}")
    return EXIT_OK


def _server() -> Any:
    """The API client when a server URL is set (`--server`): show and find read from there."""
    if not get_settings().server_url:
        return None
    from farm.cli.remote import client_from_settings

    return client_from_settings()


_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d)?")


def _with_dates(data: Any) -> Any:
    """A record read from the API with its times as datetimes again (JSON has them as `str(datetime)`),
    so it prints as the local one does."""
    if isinstance(data, dict):
        return {k: _with_dates(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_with_dates(v) for v in data]
    if isinstance(data, str) and _DATETIME.fullmatch(data):
        return dt.datetime.fromisoformat(data)
    return data


def cmd_find(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.records import find_sha256

    if (api := _server()) is not None:
        render.record(_with_dates(api.find(args.sha256)), args.json)
        return EXIT_OK
    _db()
    with session_scope() as session:
        found = find_sha256(session, args.sha256)
    render.record(found, args.json)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.records import show

    if (api := _server()) is not None:
        render.record(_with_dates(api.show(args.pin)), args.json)
        return EXIT_OK
    _db()
    with session_scope() as session:
        found = show(session, get_settings(), args.pin)
    render.record(found, args.json)
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from farm.records import gc

    _db()
    result = gc(get_settings(), dry_run=args.dry_run, keep=args.keep, min_age_days=args.min_age_days,
                logs_older_than_days=args.logs_older_than)
    render.record(result, args.json)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from farm.db.session import session_scope
    from farm.index import doctor

    _db()
    with session_scope() as session:
        findings = doctor.examine(session, get_settings(), fix=args.fix, deep=args.deep, grace=args.grace)
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=1))
    else:
        for f in findings:
            print(f)
        left = sum(not f.fixed for f in findings)
        print(f"doctor: {len(findings)} finding(s)" + (f", {left} not fixed (run with --fix)" if left else "")
              if findings else "doctor: the index agrees with the database")
    return EXIT_OK if all(f.fixed for f in findings) else EXIT_DOCTOR_FOUND


def cmd_backup(args: argparse.Namespace) -> int:
    from farm.backup import backup

    manifest = backup(get_settings(), Path(args.dest))
    size = Path(args.dest).stat().st_size
    print(f"backup    {args.dest}  ({len(manifest['members'])} files, {size / 1e6:.1f} MB, database {manifest['database']}); "
          "it holds the signing key: keep it as safe as the farm")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from farm.backup import restore

    settings = get_settings()
    manifest = restore(Path(args.archive), settings)
    print(f"restored  {args.archive} (made {manifest['created']} by farm {manifest['farm']}) into {settings.home}; "
          "the index was written again from the database")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    s = sub.add_parser("init", help="create the farm's state, database, signing key and index trees")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("verify", help="check a wheel's signed provenance (signature, digest, sdist, verification); "
                                      "NAME==VERSION: every served copy, also against the farm's record; a URL "
                                      "(wheel or index) with --key: from anywhere, no farm needed")
    s.add_argument("target", metavar="WHEEL|URL|NAME==VERSION")
    s.add_argument("pin", nargs="?", metavar="NAME==VERSION", help="with an index URL: the version to check")
    s.add_argument("--key", help="public key (PEM) to verify with; default the farm's (needed away from the farm)")
    s.add_argument("--index", metavar="URL", help="check NAME==VERSION as this index serves it (with --key; no farm)")
    s.add_argument("--provenance", help="the .provenance document (file or URL); default beside the wheel, the "
                                        "index, the database")
    s.add_argument("--offline", action="store_true", help="do not ask the upstream index about the sdist")
    s.add_argument("--no-db", action="store_true", help="without the farm's database (needs --key; the sdist is "
                                                        "checked upstream)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_verify)

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

    s = sub.add_parser("doctor", help="compare the index with the database: orphan and missing files and listings, "
                                      "changed bytes, temporary files; --fix repairs them")
    s.add_argument("--fix", action="store_true", help="repair what is found")
    s.add_argument("--deep", action="store_true", help="also hash every served file against its record")
    s.add_argument("--grace", type=float, default=600.0,
                   help="leave files younger than this many seconds alone (a publish may be writing them)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("backup", help="the database, key, configuration and storage in one tar file (the farm may run)")
    s.add_argument("dest", metavar="FILE.tar")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="a backup into an empty farm (FARM_HOME, database); the index is rewritten")
    s.add_argument("archive", metavar="FILE.tar")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("gc", help="apply the retention policy; never removes what a channel serves")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--keep", type=int, help="versions kept per project in each pruned channel (overrides config)")
    s.add_argument("--min-age-days", type=float, help="only remove files older than this (overrides config)")
    s.add_argument("--logs-older-than", type=float, metavar="DAYS",
                   help="also remove the build logs of ended jobs older than DAYS, even where their wheels are served")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_gc)
