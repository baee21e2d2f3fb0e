"""Requirements files read as pip reads them, into the items of one submission (`submit_many`).

- comments (`#` at the start or after whitespace) and blank lines are dropped; a line ending in `\\`
  continues on the next;
- `-r FILE` / `--requirement FILE` includes another file, `-c FILE` / `--constraint FILE` a
  constraints file, both relative to the file that names them (a cycle is an error);
- `--hash=sha256:HEX` (or `--hash sha256:HEX`) on a line: the sdist the line selects must have one
  of those digests (other algorithms cannot be checked against the index's sha256: refused);
- a constraint narrows the requirement of the same name (its specifier and hashes are added);
  a name only in a constraints file is not submitted;
- a marker stays with its requirement: the farm evaluates it for each of its targets (platform x
  Python) and skips a line whose marker admits none of them (`submit_many`);
- extras are kept in the requirement;
- index options (`-i`, `--index-url`, `--extra-index-url`, `-f`, `--find-links`, `--no-index`,
  `--trusted-host`, `--pre`, `--prefer-binary`, `--only-binary`, `--no-binary`, `--require-hashes`)
  are ignored: the farm's upstream index is its configuration's; editables, URLs and other options
  are refused with the file and line.

Built on `packaging` (Requirement, markers, specifiers); pip's own parser is not a library.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from farm.errors import UsageError
from farm.util.archive import SDIST_SUFFIXES

_COMMENT = re.compile(r"(^|\s+)#.*$")
_IGNORED = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host"}  # take a value
_IGNORED_FLAGS = {"--no-index", "--pre", "--prefer-binary", "--require-hashes", "--only-binary", "--no-binary"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class Item:
    """One requirement or sdist path of a requirements file, with the sha256 digests its sdist must
    have (`--hash`; empty: not checked) and where it was written."""

    request: str
    from_file: bool
    sha256: frozenset[str] = frozenset()
    origin: str = ""


@dataclass
class Read:
    """What a requirements file asks for: the items, and the options that do not apply to the farm."""

    items: list[Item] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # options that do not apply to the farm


@dataclass
class _Line:
    file: Path
    number: int
    text: str

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.number}"


def logical_lines(path: Path) -> Iterator[_Line]:
    """The file's lines with comments removed and continuations joined, blank ones dropped."""
    try:
        raw = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    # pip's join_lines, then its comment removal: a line ending in "\\" continues on the next, unless
    # it is a comment; a comment line ends a continuation
    joined: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, line in enumerate(raw, 1):
        is_comment = _COMMENT.match(line) is not None
        if not line.endswith("\\") or is_comment:
            if is_comment:
                line = " " + line
            if parts:
                joined.append((start, "".join([*parts, line])))
                parts = []
            else:
                joined.append((number, line))
        else:
            if not parts:
                start = number
            parts.append(line.rstrip("\\"))
    if parts:
        joined.append((start, "".join(parts)))
    for number, line in joined:
        text = _COMMENT.sub("", line).strip()
        if text:
            yield _Line(path, number, text)


def _option(tokens: list[str], i: int, line: _Line) -> tuple[str, str | None, int]:
    """(option, value, next index) for the option at tokens[i]: `--opt=value`, `--opt value`, `-rFILE`."""
    tok = tokens[i]
    if tok.startswith("--") and "=" in tok:
        name, value = tok.split("=", 1)
        return name, value, i + 1
    if not tok.startswith("--") and len(tok) > 2:  # -rFILE
        return tok[:2], tok[2:], i + 1
    if tok in _IGNORED_FLAGS:
        return tok, None, i + 1
    if i + 1 >= len(tokens):
        raise UsageError(f"{line.origin}: {tok} needs a value")
    return tok, tokens[i + 1], i + 2


def _hashes(values: list[str], line: _Line) -> frozenset[str]:
    out = set()
    for value in values:
        algo, _, digest = value.partition(":")
        if algo != "sha256":
            raise UsageError(f"{line.origin}: --hash={value}: only sha256 digests can be checked (the index gives sha256)")
        if not _HEX64.fullmatch(digest):
            raise UsageError(f"{line.origin}: --hash={value}: not a sha256 digest (64 lowercase hex digits)")
        out.add(digest)
    return frozenset(out)


@dataclass
class _Entry:
    line: _Line
    req: Requirement | None  # None: an sdist path
    path: Path | None
    sha256: frozenset[str]


def _entries(path: Path, seen: tuple[Path, ...], out: Read, *, constraints: list[_Entry],
             requirements: list[_Entry], as_constraint: bool) -> None:
    resolved = path.resolve()
    if resolved in seen:
        raise UsageError(f"{path}: included again by {seen[-1]} (a cycle of -r/-c)")
    if not path.is_file():
        where = f" (named in {seen[-1]})" if seen else ""
        raise UsageError(f"{path}: no such requirements file{where}")
    for line in logical_lines(path):
        tokens = line.text.split()
        if tokens[0].startswith("-"):
            name, value, i = _option(tokens, 0, line)
            if i != len(tokens):
                raise UsageError(f"{line.origin}: {line.text!r}: one option per line")
            if name in ("-r", "--requirement", "-c", "--constraint"):
                assert value is not None
                nested = path.parent / value
                _entries(nested, (*seen, resolved), out, constraints=constraints, requirements=requirements,
                         as_constraint=as_constraint or name in ("-c", "--constraint"))
            elif name in _IGNORED or name in _IGNORED_FLAGS:
                out.ignored.append(f"{line.origin}: {line.text} (the farm fetches from its own upstream index)")
            elif name in ("-e", "--editable"):
                raise UsageError(f"{line.origin}: an editable requirement cannot be built into a wheel by the farm")
            else:
                raise UsageError(f"{line.origin}: {name}: an option the farm does not take")
            continue
        # pip's split: the requirement up to the first token that starts with "-", then options
        first_opt = next((k for k, t in enumerate(tokens) if t.startswith("-")), len(tokens))
        spec = " ".join(tokens[:first_opt])
        hashes: list[str] = []
        i = first_opt
        while i < len(tokens):
            if tokens[i].split("=", 1)[0] != "--hash":
                raise UsageError(f"{line.origin}: {tokens[i].split('=', 1)[0]}: the only option a requirement line "
                                 "may have here is --hash")
            name, value, i = _option(tokens, i, line)
            if name != "--hash" or value is None:
                raise UsageError(f"{line.origin}: {name}: the only option a requirement line may have here is --hash")
            hashes.append(value)
        sha = _hashes(hashes, line)
        if spec.endswith(SDIST_SUFFIXES) and "==" not in spec and " @ " not in spec:
            entry = _Entry(line, None, path.parent / spec, sha)
        else:
            try:
                req = Requirement(spec)
            except InvalidRequirement as exc:
                raise UsageError(f"{line.origin}: {spec!r} is not a requirement: {exc}") from None
            if req.url:
                raise UsageError(f"{line.origin}: {spec!r}: a URL requirement; give NAME==VERSION or an sdist path")
            entry = _Entry(line, req, None, sha)
        (constraints if as_constraint else requirements).append(entry)


def read(path: Path) -> Read:
    """The items of the requirements file at `path`. A requirement keeps its marker: the farm that
    takes the submission evaluates it for its own targets (`submit_many`)."""
    out = Read()
    constraints: list[_Entry] = []
    requirements: list[_Entry] = []
    _entries(path, (), out, constraints=constraints, requirements=requirements, as_constraint=False)

    narrow: dict[str, list[_Entry]] = {}
    for c in constraints:
        if c.req is None:
            raise UsageError(f"{c.line.origin}: a constraint must be a requirement, not a file")
        narrow.setdefault(canonicalize_name(c.req.name), []).append(c)
    by_name: dict[str, str] = {}
    for e in requirements:
        if e.req is None:
            assert e.path is not None
            out.items.append(Item(request=str(e.path), from_file=True, sha256=e.sha256, origin=e.line.origin))
            continue
        key = canonicalize_name(e.req.name)
        specifier, sha = e.req.specifier, e.sha256
        for c in narrow.get(key, []):
            assert c.req is not None
            specifier &= c.req.specifier
            if c.sha256:
                sha = sha & c.sha256 if sha else c.sha256
                if not sha:
                    raise UsageError(f"{e.line.origin}: its --hash values and those of {c.line.origin} have none in common")
        extras = f"[{','.join(sorted({canonicalize_name(x) for x in e.req.extras}))}]" if e.req.extras else ""  # PEP 685
        text = f"{e.req.name}{extras}{specifier}" + (f"; {e.req.marker}" if e.req.marker else "")
        if key in by_name and by_name[key] != text:
            raise UsageError(f"{e.line.origin}: {text} is asked for again, unlike before ({by_name[key]})")
        if key in by_name:
            continue
        by_name[key] = text
        out.items.append(Item(request=text, from_file=False, sha256=sha, origin=e.line.origin))
    return out
