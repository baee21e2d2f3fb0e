"""Names that arrive from outside (URL paths, request bodies), checked before they reach a file
system path or a database column.

- a project name (PEP 508): ASCII letters and digits, with `.`, `_`, `-` inside; at most
  `PROJECT_NAME_MAX` characters (the database's name columns, far below a file name's limit);
- a pin `NAME==VERSION` with such a name and a version of PEP 440 characters;
- a tree name (a channel or virtual index, farm/index/channels.py): lowercase, as in `trees.json`.

Each `*_problem` function says what is wrong, or None; `check_*` raises ValueError with that.
"""

from __future__ import annotations

import re

PROJECT_NAME_MAX = 200  # Source.name and Artifact.name are String(200)
VERSION_MAX = 100  # Artifact.version is String(100)

_PROJECT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*")
_TREE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def project_name_problem(name: str) -> str | None:
    if len(name) > PROJECT_NAME_MAX:
        return f"a project name has at most {PROJECT_NAME_MAX} characters, not {len(name)}"
    if not _PROJECT_NAME.fullmatch(name):
        return (f"{name!r} is not a valid project name (PEP 508: ASCII letters, digits, and . _ - "
                "between them)")
    return None


def check_project_name(name: str) -> str:
    if problem := project_name_problem(name):
        raise ValueError(problem)
    return name


def check_pin(pin: str) -> str:
    """`NAME==VERSION` as written (spaces around the parts allowed), or ValueError."""
    name, sep, version = (part.strip() for part in pin.partition("=="))
    if not sep:
        raise ValueError(f"{pin[:100]!r}: expected NAME==VERSION")
    check_project_name(name)
    if len(version) > VERSION_MAX or not _VERSION.fullmatch(version):
        raise ValueError(f"{version[:VERSION_MAX]!r} is not a version (at most {VERSION_MAX} of A-Z a-z 0-9 . _ + ! -)")
    return pin


def is_tree_name(name: str) -> bool:
    return _TREE_NAME.fullmatch(name) is not None


def check_text(text: str) -> str:
    """Free text kept and shown later (a yank reason): no control characters (NUL included)."""
    if not text.isprintable():
        raise ValueError("control characters are not allowed")
    return text
