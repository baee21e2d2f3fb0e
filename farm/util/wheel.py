"""Reading what a built wheel says about itself (PEP 427 layout, core metadata)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import zipfile
from collections.abc import Collection
from email.message import Message
from email.parser import BytesParser
from pathlib import Path, PurePosixPath

from packaging.utils import parse_wheel_filename

# never imported by default: tests, examples, docs, and scripts that act when imported (setup.py)
_NOT_MODULES = {"test", "tests", "testing", "docs", "doc", "examples", "example", "benchmarks", "bench", "setup",
                "conftest", "noxfile"}


def _dist_info(names: list[str]) -> str:
    dirs = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    if len(dirs) != 1:
        raise ValueError(f"expected one .dist-info folder, found {sorted(dirs)}")
    return dirs.pop()


def read_metadata_bytes(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"{_dist_info(zf.namelist())}/METADATA")


def read_metadata(wheel: Path) -> Message:
    return BytesParser().parsebytes(read_metadata_bytes(wheel))


def requires_dist(meta: Message) -> list[str]:
    return [str(r) for r in meta.get_all("Requires-Dist") or []]


def _record_paths(zf: zipfile.ZipFile, info: str) -> list[str]:
    """The installed files as the wheel's RECORD lists them (its zip listing if it has none)."""
    names = zf.namelist()
    if f"{info}/RECORD" not in names:
        return names
    text = zf.read(f"{info}/RECORD").decode("utf-8", errors="replace")
    return [row[0] for row in csv.reader(text.splitlines()) if row and row[0]]


def _site_path(path: str) -> PurePosixPath | None:
    """Where a wheel's file lands relative to site-packages (PEP 427: `.data/purelib|platlib` too)."""
    parts = PurePosixPath(path).parts
    if not parts or ".." in parts:
        return None
    top = parts[0]
    if top.endswith(".data"):
        if len(parts) > 2 and parts[1] in ("purelib", "platlib"):
            return PurePosixPath(*parts[2:])
        return None
    if top.endswith((".dist-info", ".libs")) or "__pycache__" in parts:
        return None
    return PurePosixPath(*parts)


def _module_name(filename: str, *, top: bool) -> str | None:
    """The module a file is: `x.py`; an extension module `x.<ABI tag>.so|.pyd` (and, at top level only,
    a bare `x.so`, not a `lib*.so` library). None for anything else."""
    if filename.endswith(".py"):
        return filename[:-3]
    if filename.endswith(".pyd"):
        return filename.split(".", 1)[0]
    if filename.endswith(".so"):
        stem, _, rest = filename.partition(".")
        if rest != "so":  # foo.cpython-312-x86_64-linux-gnu.so, foo.abi3.so, foo.pypy39-pp73-x86_64-linux-gnu.so
            return stem if rest.split(".", 1)[0].startswith(_ABI_TAGS) else None
        return stem if top and not stem.startswith("lib") else None
    return None


_ABI_TAGS = ("cpython-", "abi3", "pypy", "graalpy", "cp3")


class _Tree:
    """A folder of the installed wheel: its modules and sub-folders."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.extensions: set[str] = set()  # the modules that are compiled
        self.dirs: dict[str, _Tree] = {}

    def add(self, path: PurePosixPath) -> None:
        node = self
        for part in path.parts[:-1]:
            node = node.dirs.setdefault(part, _Tree())
        if (name := _module_name(path.name, top=node is self)) is not None:
            node.modules.add(name)
            if not path.name.endswith(".py"):
                node.extensions.add(name)

    @property
    def has_code(self) -> bool:
        return bool(self.modules) or any(d.has_code for d in self.dirs.values())


def _public(names: set[str], *, extensions: Collection[str] = ()) -> list[str]:
    """Names worth importing: identifiers, no test/example/setup modules; `_private` ones only when there
    is nothing public (an extension module is kept: loading compiled code is what verification is for)."""
    names = {n for n in names if n.isidentifier() and n not in _NOT_MODULES and not n.startswith(("test_", "__"))
             and not n.endswith(("_test", "_tests"))}
    public = {n for n in names if not n.startswith("_")}
    if not public:
        return sorted(names)
    return sorted(public) + sorted(n for n in names - public if n in extensions)


def _importable(tree: _Tree, prefix: str, depth: int) -> list[str]:
    """A folder's importable names: its modules, its packages (with `__init__`), and inside a namespace
    package (PEP 420, no `__init__`) the packages and modules it holds (importing the bare namespace
    proves nothing)."""
    candidates = set(tree.modules) - {"__init__"}
    namespaces = []
    for name, sub in tree.dirs.items():
        if "__init__" in sub.modules:
            candidates.add(name)
        elif sub.has_code and name.isidentifier():
            candidates.add(name)
            namespaces.append(name)
    found: list[str] = []
    for name in _public(candidates, extensions=tree.extensions):
        if name in namespaces and depth < 4:
            found += _importable(tree.dirs[name], f"{prefix}{name}.", depth + 1)
        else:
            found.append(prefix + name)
    return found


def top_level_modules(wheel: Path) -> list[str]:
    """What verification imports by default: the wheel's importable top-level packages and modules, from
    the files its RECORD lists (packages with an `__init__`, `.py` modules, extension modules with their
    ABI suffix stripped; inside namespace packages, what they hold). `top_level.txt` is not read: it
    can be stale (a wheel whose extension module moved into its package still lists it)."""
    with zipfile.ZipFile(wheel) as zf:
        info = _dist_info(zf.namelist())
        paths = _record_paths(zf, info)
    tree = _Tree()
    for path in paths:
        if (site := _site_path(path)) is not None:
            tree.add(site)
    return _importable(tree, "", 0)


def with_build_tag(wheel: Path, tag: str, dest_dir: Path) -> Path:
    """A copy of `wheel` with build tag `tag` (PEP 427: digits first): in its file name, in the
    `Build:` field of its WHEEL file, and in RECORD's line for WHEEL. Every other member is copied as
    it is (same bytes, same compression). An intentional rebuild of a published version gets a new
    file name this way, instead of other bytes under a name that is taken."""
    if not re.fullmatch(r"\d[A-Za-z0-9_.]*", tag):
        raise ValueError(f"build tag {tag!r}: must start with a digit (PEP 427)")
    parse_wheel_filename(wheel.name)  # a valid wheel name, or InvalidWheelFilename
    fields = wheel.name[:-4].split("-")
    name = "-".join([fields[0], fields[1], tag, *fields[-3:]]) + ".whl"
    return _rewritten(wheel, Path(dest_dir) / name,
                      lambda lines: [ln for ln in lines if not ln.startswith("Build:")] + [f"Build: {tag}"])


def with_tags(wheel: Path, tags: Collection[str], dest_dir: Path) -> Path:
    """A copy of `wheel` for `tags` only (a subset of its own, e.g. `py3-none-any` of a
    `py2.py3-none-any` wheel): its file name (compressed tag sets, PEP 425), the `Tag:` lines of its
    WHEEL file and RECORD's line for WHEEL; every other member as it is."""
    name, version, build, own = parse_wheel_filename(wheel.name)
    wanted = [t for t in sorted(str(t) for t in own) if t in set(tags)]
    if not wanted:
        raise ValueError(f"{wheel.name} has none of the tags {sorted(tags)}")
    parts = [t.split("-") for t in wanted]
    compressed = "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))
    fields = wheel.name[:-4].split("-")
    dest = Path(dest_dir) / ("-".join([*fields[:-3], compressed]) + ".whl")
    return _rewritten(wheel, dest, lambda lines: [ln for ln in lines if not ln.startswith("Tag:")]
                      + [f"Tag: {t}" for t in wanted])


def _rewritten(wheel: Path, dest: Path, edit_wheel_file) -> Path:  # type: ignore[no-untyped-def]
    """`wheel` copied to `dest` with its WHEEL file's lines passed through `edit_wheel_file` and
    RECORD's line for WHEEL updated; every other member keeps its bytes and compression."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as src:
        info = _dist_info(src.namelist())
        wheel_meta = src.read(f"{info}/WHEEL").decode()
        new_meta = ("\n".join(edit_wheel_file(wheel_meta.rstrip("\n").splitlines())) + "\n").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(new_meta).digest()).rstrip(b"=").decode()
        record_rows = []
        for row in csv.reader(io.StringIO(src.read(f"{info}/RECORD").decode())):
            if row and row[0] == f"{info}/WHEEL":
                row = [row[0], f"sha256={digest}", str(len(new_meta))]
            record_rows.append(row)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(record_rows)
        new_record = out.getvalue().encode()
        with zipfile.ZipFile(dest, "w") as dst:
            for item in src.infolist():
                if item.filename == f"{info}/WHEEL":
                    dst.writestr(item, new_meta, compress_type=item.compress_type)
                elif item.filename == f"{info}/RECORD":
                    dst.writestr(item, new_record, compress_type=item.compress_type)
                else:
                    dst.writestr(item, src.read(item.filename), compress_type=item.compress_type)
    return dest
