"""Finding, parsing, validating and applying recipes.

A recipe is `recipes/<normalized-name>.toml`. Parsing reports every problem of a file at once,
each as (file, key path, message) with the key path spelled the way the TOML file spells it
(`overrides[0].environment.CFLAGS`), so one run of the check shows everything to fix.

`find_recipe` sits on the submit path: parsed files are cached by (path, mtime, size), so a
repeated lookup costs one `stat` per recipe folder (and one per recipe file found). A recipe file
whose name is not the normalized project name (`PyYAML.toml`, `foo_bar.toml`) would never be used:
when its name normalizes to the project submitted, that is a `RecipeError` (exit 3) rather than a
build without the recipe; each folder's listing is cached by the folder's mtime.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import stat
import string
import tomllib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import bracex
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ValidationError

from farm.config import get_settings
from farm.errors import RecipeError
from farm.recipes.files import resolve_files
from farm.recipes.schema import OPTION_FIELDS, Options, Override, Recipe, merge_options
from farm.util.hashing import digest_json

Problem = tuple[str, str, str]

__all__ = [
    "LoadedRecipe",
    "Problem",
    "check_paths",
    "clear_cache",
    "default_options",
    "find_recipe",
    "load_recipe",
    "parse_recipe_file",
    "parse_recipe_text",
    "select_matches",
    "validation_problems",
    "version_matches",
]


# Matching ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _expand(patterns: str) -> tuple[str, ...]:
    """Whitespace-separated globs with shell-like brace expansion: `cp3{9,10}-*` is two globs."""
    return tuple(p for word in patterns.split() for p in bracex.expand(word))


def select_matches(patterns: str | Iterable[str], build_id: str) -> bool:
    """Whether a build identifier matches any of the globs, the way cibuildwheel matches `select`.

    Each string may hold several whitespace-separated globs and `{a,b}` alternatives; matching
    is fnmatch's, case-sensitive on every host.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    return any(fnmatchcase(build_id, glob) for p in patterns for glob in _expand(p))


@functools.lru_cache(maxsize=256)
def _specifier_set(spec: str) -> SpecifierSet:
    return SpecifierSet(spec)


def version_matches(spec: str | None, version: str) -> bool:
    """Whether `version` is in the specifier; empty or None means every version.

    Pre-releases count (`>=2` contains `3.0rc1`); a version PEP 440 cannot parse matches only
    the empty specifier.
    """
    if not spec:
        return True
    try:
        parsed = Version(version)
    except InvalidVersion:
        return False
    return _specifier_set(spec).contains(parsed, prereleases=True)


# The loaded recipe ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadedRecipe:
    """A validated recipe file. `digest` identifies its content (not its formatting)."""

    name: str
    path: Path
    recipe: Recipe
    digest: str  # of the content, with the patch files it names (farm.recipes.files)
    files: tuple[Path, ...] = ()  # the patch files read with it

    @functools.cached_property
    def base_options(self) -> Options:
        """The recipe's options before any override."""
        return Options.model_validate(self.recipe.model_dump(include=set(OPTION_FIELDS)))

    def applies_to(self, version: str) -> bool:
        """Whether the recipe's `versions` contains this package version (empty: all)."""
        return version_matches(self.recipe.versions, version)

    def selects(self, build_id: str) -> bool:
        """Whether this build identifier is built: it matches a `build` glob and no `skip` glob."""
        return select_matches(self.recipe.build, build_id) and not select_matches(self.recipe.skip, build_id)

    def matching_overrides(self, build_id: str, version: str) -> list[Override]:
        """The overrides that apply to this build of this version, in file order."""
        return [
            o for o in self.recipe.overrides
            if select_matches(o.select, build_id) and version_matches(o.versions, version)
        ]

    def options_for(self, build_id: str, version: str) -> Options:
        """The effective options: the base options with every matching override applied in order."""
        options = self.base_options
        for override in self.matching_overrides(build_id, version):
            options = merge_options(options, override, override.model_fields_set)
        return options


def default_options() -> Options:
    """What a package without a recipe gets: build, repair, import its top-level modules."""
    return Options()


# Parsing -------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _format_key_path(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f".{key}" if out else key
    return out


def _unwrap(tp: Any) -> Any:
    """Strip `Annotated[...]` and a `| None` that leaves one type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _union_tag(tp: Any) -> str:
    """The tag pydantic puts in an error location for a union member (`str`, `list[str]`)."""
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_union_tag(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", repr(tp))


def _model_field(model: type[BaseModel], key: Any) -> Any | None:
    for name, field in model.model_fields.items():
        if key in (field.alias, name):
            return field
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


@dataclass
class _Located:
    parts: list[str | int]  # the key path, union tags removed
    parent: Any  # the type holding the last part (a model class for an unknown key)
    union: tuple[tuple[str | int, ...], int] | None  # (key path of the first union, loc index of its tag)
    deeper: bool  # the error lies inside the union member (the value had that member's shape)


def _locate(loc: Sequence[str | int]) -> _Located:
    """Walk the schema along a pydantic error location, dropping the union member tags."""
    tp: Any = Recipe
    parent: Any = Recipe
    parts: list[str | int] = []
    union: tuple[tuple[str | int, ...], int] | None = None
    for i, seg in enumerate(loc):
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            match = next((m for m in members if _union_tag(m) == seg), None)
            if union is None:
                union = (tuple(parts), i)
            tp = match if match is not None else Any
            continue
        parent = tp
        parts.append(seg)
        if _is_model(tp):
            field = _model_field(tp, seg)
            tp = field.annotation if field is not None else Any
        elif origin is list and isinstance(seg, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            tp = Any
    deeper = union is not None and len(loc) > union[1] + 1
    return _Located(parts, parent, union, deeper)


def _message(error: dict[str, Any], located: _Located) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = located.parts[-1] if located.parts else ""
        msg = f"unknown key {key!r}"
        if _is_model(located.parent) and isinstance(key, str):
            known = [f.alias or n for n, f in located.parent.model_fields.items()]
            close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        return msg
    if kind == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _combine(messages: list[str]) -> str:
    """`Input should be a valid string` + `Input should be a valid list` -> one sentence."""
    unique = list(dict.fromkeys(messages))
    lead = "Input should be "
    if len(unique) > 1 and all(m.startswith(lead) for m in unique):
        return lead + " or ".join(m[len(lead):] for m in unique)
    return "; ".join(unique)


def validation_problems(file: str, exc: ValidationError) -> list[Problem]:
    """Every pydantic error as (file, TOML key path, message), union alternatives folded into one."""
    items: list[tuple[_Located, str]] = []
    for error in exc.errors(include_url=False):
        located = _locate(error["loc"])
        items.append((located, _message(error, located)))
    # A value that fits no member of a union gets one error per member. When some member's
    # errors lie inside the value (the value had that member's shape), those are the useful
    # ones; otherwise say once what the value should have been.
    groups: dict[tuple[tuple[str | int, ...], int], list[tuple[_Located, str]]] = {}
    for located, msg in items:
        if located.union is not None:
            groups.setdefault(located.union, []).append((located, msg))
    problems: list[Problem] = []
    done: set[tuple[tuple[str | int, ...], int]] = set()
    for located, msg in items:
        if located.union is None:
            problems.append((file, _format_key_path(located.parts), msg))
            continue
        if located.union in done:
            continue
        done.add(located.union)
        group = groups[located.union]
        inside = [(lc, m) for lc, m in group if lc.deeper]
        if inside:
            problems.extend((file, _format_key_path(lc.parts), m) for lc, m in inside)
        else:
            problems.append((file, _format_key_path(located.union[0]), _combine([m for _, m in group])))
    return problems


# The engines fill these in with str.format: a stray brace would fail the build, not the check.
PLACEHOLDERS = frozenset({"python", "project", "package"})
_COMMAND_KEYS = ("before-all", "before-build", "test-command")


def _placeholder_error(command: str) -> str | None:
    hint = "only {python} and {project} are replaced; write a literal brace as {{ or }}"
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(command) if name is not None]
    except ValueError as exc:
        return f"{exc} ({hint})"
    for name in names:
        if name not in PLACEHOLDERS:
            return f"unknown placeholder {{{name}}} ({hint})"
    return None


def _placeholder_problems(file: str, data: dict[str, Any]) -> list[Problem]:
    """Check the shell commands of the raw TOML data, whatever else is wrong with it."""
    scopes: list[tuple[list[str | int], Any]] = [([], data)]
    overrides = data.get("overrides")
    if isinstance(overrides, list):
        scopes += [(["overrides", i], o) for i, o in enumerate(overrides)]
    problems: list[Problem] = []
    for prefix, scope in scopes:
        if not isinstance(scope, dict):
            continue
        for key in _COMMAND_KEYS:
            value = scope.get(key)
            items = [([key], value)] if isinstance(value, str) else (
                [([key, i], v) for i, v in enumerate(value) if isinstance(v, str)] if isinstance(value, list) else [])
            for parts, command in items:
                error = _placeholder_error(command)
                if error:
                    problems.append((file, _format_key_path([*prefix, *parts]), error))
    return problems


def _name_problems(path: Path) -> list[Problem]:
    stem = path.stem
    try:
        canonical = canonicalize_name(stem, validate=True)
    except InvalidName:
        return [(str(path), "", f"the file name {path.name!r} is not a project name: "
                 "name the file <normalized-project-name>.toml")]
    if canonical != stem:
        return [(str(path), "", f"the file name must be the normalized project name: "
                 f"rename {path.name!r} to '{canonical}.toml'")]
    return []


def parse_recipe_text(text: str, path: Path) -> LoadedRecipe:
    """Validate the TOML text of the recipe file `path`; raise `RecipeError` listing every problem."""
    path = Path(path)
    file = str(path)
    problems = _name_problems(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([*problems, (file, "", f"TOML syntax error: {exc}")]) from None
    try:
        recipe = Recipe.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems += validation_problems(file, exc)
        recipe = None
    problems += _placeholder_problems(file, data)
    files: tuple[Path, ...] = ()
    if recipe is not None:
        recipe, file_problems, files = resolve_files(recipe, path)
        problems += file_problems
    if problems or recipe is None:
        raise RecipeError(problems)
    return LoadedRecipe(
        name=path.stem,
        path=path,
        recipe=recipe,
        digest=digest_json(recipe.model_dump(mode="json")),
        files=files,
    )


def parse_recipe_file(path: Path) -> LoadedRecipe:
    """Read and validate one recipe file; raise `RecipeError` listing every problem in it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RecipeError([*_name_problems(path), (str(path), "", f"cannot read the file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([*_name_problems(path), (str(path), "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from None
    return parse_recipe_text(text, path)


# Finding and caching -------------------------------------------------------------------------

_cache: dict[Path, tuple[tuple[Any, ...], LoadedRecipe | RecipeError]] = {}


def clear_cache() -> None:
    """Forget every parsed recipe (the cache also notices changed files by itself)."""
    _cache.clear()
    _misnamed_cache.clear()


def _stamp(st: os.stat_result, files: Iterable[Path]) -> tuple[Any, ...]:
    """What tells a changed recipe: its (mtime, size), and those of the patch files it read."""
    stamps: list[Any] = [st.st_mtime_ns, st.st_size]
    for f in files:
        try:
            fst = os.stat(f)
            stamps.append((fst.st_mtime_ns, fst.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def _load_stat(path: Path, st: os.stat_result) -> LoadedRecipe:
    hit = _cache.get(path)
    if hit is not None and hit[0] == _stamp(st, hit[1].files if isinstance(hit[1], LoadedRecipe) else ()):
        result = hit[1]
    else:
        try:
            result = parse_recipe_file(path)
        except RecipeError as exc:
            result = exc
        _cache[path] = (_stamp(st, result.files if isinstance(result, LoadedRecipe) else ()), result)
    if isinstance(result, RecipeError):
        raise RecipeError(list(result.problems))
    return result


def load_recipe(path: Path) -> LoadedRecipe:
    """`parse_recipe_file`, cached by (path, mtime, size): unchanged files are not parsed again."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RecipeError([(str(path), "", f"cannot read the file: {exc.strerror or exc}")]) from None
    return _load_stat(path, st)


_settings_dirs: tuple[object, tuple[Path, ...]] | None = None


def _default_dirs() -> tuple[Path, ...]:
    """The configured recipe folders, computed once per settings object (resolving costs syscalls)."""
    global _settings_dirs
    settings = get_settings()
    if _settings_dirs is None or _settings_dirs[0] is not settings:
        _settings_dirs = (settings, tuple(settings.all_recipe_dirs))
    return _settings_dirs[1]


# folder -> (its mtime, normalized project name -> recipe files named for it but not normalized)
_misnamed_cache: dict[Path, tuple[int, dict[str, list[Path]]]] = {}


def _misnamed(folder: Path) -> dict[str, list[Path]]:
    """The `*.toml` files of `folder` whose stem is a project name but not a normalized one, by that name."""
    try:
        mtime = os.stat(folder).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return {}
    hit = _misnamed_cache.get(folder)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    found: dict[str, list[Path]] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        stem = entry.name[: -len(".toml")] if entry.name.endswith(".toml") else None
        if not stem or not _ASCII_NAME.fullmatch(stem):
            continue
        canonical = canonicalize_name(stem)
        if canonical != stem:
            found.setdefault(canonical, []).append(Path(folder, entry.name))
    _misnamed_cache[folder] = (mtime, found)
    return found


# PEP 508 names, ASCII only (IGNORECASE alone would let "ſ" and the Kelvin sign "K" through)
_ASCII_NAME = re.compile(r"([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])", re.IGNORECASE | re.ASCII)


def find_recipe(name: str, version: str, dirs: Sequence[Path] | None = None) -> LoadedRecipe | None:
    """The recipe for this project version, or None.

    The first folder holding `<normalized-name>.toml` wins (extra folders come before the
    built-in one); if that recipe's `versions` does not contain `version`, there is no recipe
    for this version: later folders are not consulted. An invalid recipe raises `RecipeError`,
    and so does a file in any folder named for this project but not normalized (`PyYAML.toml`).
    """
    if not _ASCII_NAME.fullmatch(name):
        return None  # no file can be named after it (and "/etc/x" must not become a path)
    try:
        canonical = canonicalize_name(name, validate=True)
    except InvalidName:
        return None
    filename = f"{canonical}.toml"
    if dirs is None:
        dirs = _default_dirs()
    misnamed = [p for folder in dirs for p in _misnamed(Path(folder)).get(canonical, [])]
    if misnamed:
        raise RecipeError([problem for p in misnamed for problem in _name_problems(p)])
    for folder in dirs:
        path = Path(folder, filename)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        loaded = _load_stat(path, st)
        return loaded if loaded.applies_to(version) else None
    return None


def check_paths(paths: Sequence[Path]) -> list[Problem]:
    """Every problem of every recipe file named or found (`*.toml`) in the given folders."""
    problems: list[Problem] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.glob("*.toml") if p.is_file())
        elif path.exists():
            files = [path]
        else:
            problems.append((str(path), "", "no such file or folder"))
            continue
        for file in files:
            try:
                parse_recipe_file(file)
            except RecipeError as exc:
                problems.extend(exc.problems)
    return problems
