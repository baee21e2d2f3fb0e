"""Applying a recipe's unified diffs to an unpacked sdist, as `patch -p1 --forward` would, in Python.

The tree is package content, so nothing here follows a symbolic link or writes outside it: a
path with `..`, an absolute path or one that passes through a symlink is refused. A hunk applies
where its old lines match exactly, at the line it names or, failing that, at the nearest line
where they do (a shifted file); no fuzz. A patch that does not apply fails the build with the
file and hunk that did not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from farm.errors import PackageFailure

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class _Hunk:
    old_start: int
    old: list[str] = field(default_factory=list)  # lines with their endings
    new: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    old_path: str | None  # None: the file is created
    new_path: str | None  # None: the file is deleted
    hunks: list[_Hunk] = field(default_factory=list)


def _strip(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    parts = PurePosixPath(name).parts
    return str(PurePosixPath(*parts[1:])) if len(parts) > 1 else name  # -p1


def parse(diff: str) -> list[FilePatch]:
    """The file patches of a unified diff (git's extended headers are skipped)."""
    lines = diff.splitlines(keepends=True)
    patches: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            patches.append(FilePatch(_strip(line[4:]), _strip(lines[i + 1][4:])))
            i += 2
            continue
        m = _HUNK.match(line)
        if m and patches:
            old_len = int(m.group(2)) if m.group(2) is not None else 1
            new_len = int(m.group(4)) if m.group(4) is not None else 1
            hunk = _Hunk(old_start=int(m.group(1)))
            i += 1
            last = ""
            while i < len(lines):
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file": the line before has no newline
                    _no_newline(hunk, last)
                    i += 1
                    continue
                if len(hunk.old) >= old_len and len(hunk.new) >= new_len:
                    break
                tag, text = body[:1], body[1:]
                if tag == " " or body in ("\n", "\r\n"):
                    text = text if tag == " " else body
                    hunk.old.append(text)
                    hunk.new.append(text)
                    last = " "
                elif tag in "-+" and tag:
                    (hunk.old if tag == "-" else hunk.new).append(text)
                    last = tag
                else:
                    raise PackageFailure("fetch", f"patch: malformed hunk line {body!r}")
                i += 1
            patches[-1].hunks.append(hunk)
            continue
        i += 1
    if not patches:
        raise PackageFailure("fetch", "patch: no file changes found (is it a unified diff?)")
    return patches


def _no_newline(hunk: _Hunk, tag: str) -> None:
    """`\\ No newline at end of file` after a line (of tag ` `, `-` or `+`): that line ends without one."""
    for side, tags in ((hunk.old, " -"), (hunk.new, " +")):
        if tag and tag in tags and side and side[-1].endswith("\n"):
            side[-1] = side[-1][:-2] if side[-1].endswith("\r\n") else side[-1][:-1]


def _target(tree: Path, rel: str) -> Path:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise PackageFailure("fetch", f"patch: refusing the path {rel!r} (outside the tree)")
    path = tree
    for part in pure.parts:
        path = path / part
        if path.is_symlink():
            raise PackageFailure("fetch", f"patch: refusing {rel!r}: {path.relative_to(tree)} is a symbolic link")
    return path


def _apply_hunks(name: str, text: list[str], hunks: list[_Hunk]) -> list[str]:
    offset = 0
    for n, hunk in enumerate(hunks, 1):
        want = max(hunk.old_start - 1 + offset, 0) if hunk.old else hunk.old_start + offset
        size = len(hunk.old)
        at = None
        for delta in sorted(range(-len(text) - 1, len(text) + 2), key=abs):
            pos = want + delta
            if 0 <= pos <= len(text) - size and text[pos:pos + size] == hunk.old:
                at = pos
                break
        if at is None:
            raise PackageFailure("fetch", f"patch: hunk {n} of {name} does not apply (its context is not in the file)")
        text[at:at + size] = hunk.new
        offset = at - (hunk.old_start - 1) + len(hunk.new) - size
    return text


def apply(diff: str, tree: Path) -> list[str]:
    """Apply a unified diff to `tree` (paths `-p1`); return the files it changed. All or nothing per file."""
    changed = []
    for fp in parse(diff):
        rel = fp.new_path or fp.old_path
        assert rel is not None
        path = _target(tree, rel)
        if fp.old_path is None:  # a new file
            if path.exists():
                raise PackageFailure("fetch", f"patch: {rel} exists already (was the patch applied before?)")
            text: list[str] = []
        else:
            if not path.is_file():
                raise PackageFailure("fetch", f"patch: {rel} is not in the tree")
            text = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines(keepends=True)
        text = _apply_hunks(rel, text, fp.hunks)
        if fp.new_path is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(text), encoding="utf-8", errors="surrogateescape")
        changed.append(rel)
    return changed
