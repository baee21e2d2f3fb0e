"""`farm token create|list|revoke`: the API tokens in this host's farm database (farm/tokens.py).

Run where the farm's database is (its FARM_HOME, or its `database_url`). A token is printed once, on
stdout, when it is made; only its sha256 is stored. Revocation takes effect on the API's next request.
"""

from __future__ import annotations

import argparse
import sys


def cmd_create(args: argparse.Namespace) -> int:
    from farm.cli import ensure_db
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import issue, parse_expiry

    settings = get_settings()
    expires = parse_expiry(args.expires) if args.expires else None
    ensure_db()
    with session_scope() as session:
        token = issue(session, settings, args.name, args.role, channel=args.channel, expires=expires)
    print(token)
    scope = f", channel {args.channel}" if args.channel else ""
    until = f", until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
    print(f"token {args.name!r} ({args.role}{scope}{until}): shown only now; the farm keeps its sha256",
          file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from farm.cli import ensure_db
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import list_tokens

    settings = get_settings()
    ensure_db(create=False)
    with session_scope() as session:
        tokens = list_tokens(session, settings)
    rows = [("NAME", "ROLE", "CHANNEL", "STATE", "CREATED", "EXPIRES", "FROM")]
    for t in tokens:
        rows.append((t.name, t.role, t.channel or "*", t.state(),
                     f"{t.created_at:%Y-%m-%d}" if t.created_at else "-",
                     f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "-", t.origin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from farm.cli import ensure_db
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import revoke

    settings = get_settings()
    ensure_db(create=False)
    with session_scope() as session:
        info = revoke(session, settings, args.name)
    print(f"token {info.name!r} revoked; the API refuses it from its next request on")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from farm.tokens import ROLES

    token = sub.add_parser("token", help="API tokens (in the farm's database)").add_subparsers(
        dest="token_command", required=True)
    s = token.add_parser("create", help="make a token, print it once, store its sha256")
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=list(ROLES),
                   help="read: private channels; upload: read and upload; submit: read and submit builds; "
                        "promote: submit, promote and yank; admin: everything; worker: remote workers' storage")
    s.add_argument("--channel", help="limit the token to this channel (reading and uploading)")
    s.add_argument("--expires", metavar="DATE", help="YYYY-MM-DD (UTC) or an ISO date-time; default: never")
    s.set_defaults(func=cmd_create)
    s = token.add_parser("list", help="every token: name, role, channel, state (active, revoked, expired)")
    s.set_defaults(func=cmd_list)
    s = token.add_parser("revoke", help="refuse a token from the API's next request on")
    s.add_argument("name")
    s.set_defaults(func=cmd_revoke)
