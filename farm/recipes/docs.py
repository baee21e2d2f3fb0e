"""Generate recipes/recipe.schema.json and docs/recipes.md from the recipe schema.

The page is produced from one source: the option tables come from the pydantic models' fields
and descriptions, the prose and the examples live here, and the effective options shown for
the examples are computed by the same code the farm uses. Run `python -m farm.recipes.docs`
after changing the schema or this file; `--check` fails when the committed files are stale.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from farm.errors import RecipeError
from farm.recipes.load import LoadedRecipe, parse_recipe_text
from farm.recipes.schema import BuildRequires, Options, Override, Patch, Recipe, Source, SystemPackages

SCHEMA_ID = "urn:wheel-farm:recipe"
SCHEMA_TITLE = "Wheel Farm recipe"
REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path("recipes/recipe.schema.json")
DOCS_PATH = Path("docs/recipes.md")


# JSON Schema ---------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file (TOML keys), for editors and other tools."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": SCHEMA_TITLE,
        **schema,
    }


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


# Describing fields ---------------------------------------------------------------------------

_VALIDATED_KINDS = {
    "_specifier": "version specifier",
    "_requirement": "requirement",
    "_override_requirement": 'requirement or ""',
}


def _plural(kind: str) -> str:
    if " or " in kind:
        return " or ".join(_plural(k) for k in kind.split(" or "))
    if kind == '""':
        return kind
    head, sep, tail = kind.partition(" of ")
    return f"{head}s{sep}{tail}"


def _validated_kind(metadata: typing.Iterable[Any]) -> str | None:
    for m in metadata:
        if isinstance(m, AfterValidator):
            name = getattr(m.func, "__name__", "")
            if name in _VALIDATED_KINDS:
                return _VALIDATED_KINDS[name]
    return None


def _kind(tp: Any) -> str:
    """A TOML-flavoured name for a field type: `array of strings`, `table of strings`, ..."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        return _validated_kind(meta) or _kind(base)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_kind(m) for m in members)
    if origin is list:
        return "array of " + _plural(_kind(typing.get_args(tp)[0]))
    if origin is dict:
        return "table of " + _plural(_kind(typing.get_args(tp)[1]))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "table"
    if tp is str:
        return "string"
    if tp is bool:
        return "boolean"
    if tp is int:
        return "integer"
    return getattr(tp, "__name__", str(tp))


def _toml_value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if isinstance(value, dict):
        return "{}" if not value else "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    return f"`{_toml_value(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], names: typing.Iterable[str], prefix: str = "") -> str:
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name in names:
        field = model.model_fields[name]
        key = prefix + (field.alias or name)
        rows.append(
            f"| `{key}` | {_cell(_validated_kind(field.metadata) or _kind(field.annotation))} | {_cell(_default(field))} "
            f"| {_cell(field.description or '')} |"
        )
    return "\n".join(rows)


def _own_fields(model: type[BaseModel], base: type[BaseModel]) -> list[str]:
    return [n for n in model.model_fields if n not in base.model_fields]


def _toml_key(name: str) -> str:
    return Options.model_fields[name].alias or name


# Examples ------------------------------------------------------------------------------------

EXAMPLE_SIMPLE = '''\
#:schema ./recipe.schema.json
# lxml against the system libxml2 and libxslt.

test-imports = ["lxml.etree", "lxml.objectify"]
test-command = \'\'\'{python} -c "from lxml import etree; assert etree.XML('<a><b>x</b></a>').findtext('b') == 'x'"\'\'\'

[system-packages]
apt = ["libxml2-dev", "libxslt1-dev"]
yum = ["libxml2-devel", "libxslt-devel"]
apk = ["libxml2-dev", "libxslt-dev"]
'''

EXAMPLE_OVERRIDES = '''\
#:schema ./recipe.schema.json
# PyYAML with its LibYAML bindings; fail the build if they cannot be built.

environment = { PYYAML_FORCE_LIBYAML = "1" }
test-command = \'\'\'{python} -c "import yaml; assert yaml.__with_libyaml__"\'\'\'

[system-packages]
apt = ["libyaml-dev"]
yum = ["libyaml-devel"]
apk = ["yaml-dev"]
brew = ["libyaml"]

[[overrides]]
# Homebrew on Apple silicon lives in /opt/homebrew, which the compiler does not search.
select = "*-macosx_arm64"
environment = { CFLAGS = "-I/opt/homebrew/include", LDFLAGS = "-L/opt/homebrew/lib" }

[[overrides]]
# No libyaml on Windows: build without the extension, test the pure-Python code.
select = "*-win*"
environment = { PYYAML_FORCE_LIBYAML = "0" }
test-command = \'\'\'{python} -c "import yaml; assert yaml.safe_load('a: 1')['a'] == 1"\'\'\'

[[overrides]]
# PyYAML 5.4 to 6.0 declare an unpinned Cython and do not build with Cython 3.
select = "*"
versions = ">=5.4,<6.0.1"
build-requires.override = { cython = "cython<3" }
'''

EXAMPLE_OVERRIDES_BUILDS = [
    ("cp312-manylinux_x86_64", "6.0.2"),
    ("cp312-macosx_arm64", "6.0.2"),
    ("cp312-win_amd64", "6.0.2"),
    ("cp39-manylinux_x86_64", "6.0"),
]

MERGE_EXAMPLE = '''\
environment = { A = "1", B = "2" }
before-build = ["make"]

[[overrides]]
select = "cp39-*"
environment = { B = "3" }
before-build = ["make legacy"]
'''

MERGE_EXAMPLE_BUILDS = [("cp39-manylinux_x86_64", "1.0"), ("cp311-manylinux_x86_64", "1.0")]


BAD_EXAMPLE = '''\
test_command = "{python} -c 'import foo'"
environment = { CFLAGS = ["-O2"] }

[[overrides]]
environment = { FOO_DEBUG = 1 }
'''


def _loaded(name: str, text: str) -> LoadedRecipe:
    """Validate an example exactly as a recipe file is validated; a broken example is a bug."""
    return parse_recipe_text(text, Path(f"recipes/{name}.toml"))


def _problems(name: str, text: str) -> str:
    try:
        parse_recipe_text(text, Path(f"recipes/{name}.toml"))
    except RecipeError as exc:
        return "\n".join(f"{file}: {key or '<root>'}: {msg}" for file, key, msg in exc.problems)
    raise AssertionError("the bad example is valid")


def _effective(loaded: LoadedRecipe, builds: list[tuple[str, str]], keys: list[str]) -> str:
    rows = ["| Build | Version | " + " | ".join(f"`{_toml_key(k)}`" for k in keys) + " |",
            "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for build_id, version in builds:
        options = loaded.options_for(build_id, version)
        cells = [f"`{_cell(_toml_value(getattr(options, k)))}`" for k in keys]
        rows.append(f"| `{build_id}` | {version} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# The page ------------------------------------------------------------------------------------


def render_markdown() -> str:
    """The whole of docs/recipes.md."""
    top_keys = [n for n in _own_fields(Recipe, Options) if n != "overrides"] + ["overrides"]
    override_keys = _own_fields(Override, Options)
    simple = _loaded("lxml", EXAMPLE_SIMPLE)
    overrides = _loaded("pyyaml", EXAMPLE_OVERRIDES)
    merge = _loaded("example", MERGE_EXAMPLE)

    parts = [
        f"""\
# Recipes

<!-- Generated by `python -m farm.recipes.docs` from farm/recipes/schema.py and
     farm/recipes/docs.py. Edit those and regenerate; do not edit this file. -->

A recipe tells the farm what a project needs beyond its sdist to become a repaired, tested
wheel: system packages, environment variables, commands to run before the build, changes to
its build requirements, the builds to make or skip, and how to test the result. Most projects
need no recipe at all.

Recipes are TOML files. Their keys follow [cibuildwheel's options](https://cibuildwheel.pypa.io/en/stable/options/)
wherever the concept is the same (`environment`, `before-all`, `before-build`,
`config-settings`, `test-requires`, `test-command`, `build`, `skip`, `[[overrides]]` with
`select`), so a project's cibuildwheel configuration mostly carries over.

## How a recipe is found

* A project's recipe is `<normalized-name>.toml`, where the name is normalized as on a
  package index (PEP 503: lower case, every run of `-`, `_` and `.` becomes one `-`):
  `PyYAML` is `pyyaml.toml`, `zope.interface` is `zope-interface.toml`. A file whose name is
  not normalized is an error, not a file that is silently never used.
* The farm looks in the folders of the `recipes_dirs` setting (`FARM_RECIPES_DIRS`, or
  `recipes_dirs` in `$FARM_HOME/farm.toml`) in order, then in the farm's own `recipes/`.
  The first folder that has the file wins; a file of the same name in a later folder is not
  read, so a site recipe replaces the built-in one entirely.
* `versions` limits a recipe to some versions of the project (a PEP 440 specifier such as
  `">=2.0,<3"`; empty means all). Pre-releases count: `">=2.0"` applies to `3.0rc1`. A
  version outside `versions` is built as if the project had no recipe.
* Recipes are read when a build is submitted; a changed file is picked up by the next
  submission without a restart. Each loaded recipe has a digest, the SHA-256 of its
  validated content as canonical JSON: comments, key order and formatting do not change it.

## A project without a recipe

A project without a recipe (or whose recipe does not cover the version) gets the defaults:
every build the farm's workers can make, no system packages, the sdist's own build
requirements, a repair of the wheel (auditwheel, delocate or delvewheel) that grafts every
external library in, and as the test, an import of each of the wheel's top-level modules in a
clean environment (the packages, modules and extension modules its RECORD lists; inside a
namespace package, what it holds; not tests, examples or private modules beside public ones). Pure-Python projects and projects whose C code needs nothing from the
system get correct wheels this way.

## Top-level keys

These keys belong to the recipe as a whole; an override cannot change them.

{_table(Recipe, top_keys)}

Every key of the next section may also appear at the top level.

## Build and test options

The options of a build. The top level of a recipe sets them for every build; an
`[[overrides]]` entry changes them for some builds.

{_table(Options, list(Options.model_fields))}

`before-all`, `before-build` and `test-command` are shell commands with two placeholders:
`{{project}}` is the folder of the unpacked sdist and `{{python}}` an interpreter: the one of
the build in `before-build`, the one of the clean test environment in `test-command` (the
wheel and `test-requires` are installed in it, from the farm's index). The placeholders
are filled in like Python's `str.format`, so a literal brace is written `{{{{` or `}}}}`; a
stray brace or another `{{name}}` is an error in the recipe. Keep test commands self-contained
one-liners: a build passes its tests when every module of `test-imports` imports and
`test-command`, if set, exits with status 0. `test-imports = []` turns the import test off.

`environment` values may use other variables as `$NAME` or `${{NAME}}`; they are expanded
when the build starts (`PATH = "/opt/tool/bin:$PATH"`).

### `[system-packages]`

Packages installed before the build, per package-manager family; the worker uses the list of
the family of the build host or container (Debian and Ubuntu: `apt`; manylinux, which is
RHEL-like: `yum`; musllinux: `apk`; macOS: `brew`; Windows: `choco`). Use the names of
development packages, the ones with the headers (`libyaml-dev`, `libyaml-devel`, `yaml-dev`).

{_table(SystemPackages, list(SystemPackages.model_fields), "system-packages.")}

### `[build-requires]`

Old sdists often declare build requirements that newer releases broke (an unpinned Cython, a
setuptools feature that was removed). `build-requires` changes the declared requirements
without repacking the sdist.

{_table(BuildRequires, list(BuildRequires.model_fields), "build-requires.")}

Keys of `override` are project names, compared normalized. An override for a requirement the
sdist does not declare adds it. An sdist without `pyproject.toml` is treated as declaring
the legacy setuptools backend's requirements.

`build-requires-as-of` (a key of its own, beside `[build-requires]`) is the other way to build an
old sdist: its build requirements resolved as they were when it was released (uv's
`--exclude-newer` at the upload time the upstream index gives, PEP 700 `upload-time`; for a
file the index lacks, the time its PKG-INFO was written). By default (`"auto"`) a build that
fails is tried once more that way, in a fresh tree, unless the failure names missing system
packages or hit a timeout; the job's log shows the retry and the provenance records it
(`internalParameters.adjustments.buildRequiresAsOf`: the time, where it came from, the versions
installed and the first attempt's failure). `"release"` builds that way from the start;
`"today"` never does.

### `[source]` and `patches`

`source` builds another sdist of the same project and version instead of the submitted one (a
fixed re-release, a fork's sdist): a table with `url` (https:// or file://) or `path` (relative
to the recipe's folder) and the file's `sha256`. The worker downloads it, checks the digest and
that it is an sdist of the job's project and version; a mismatch fails the build.

{_table(Source, list(Source.model_fields), "source.")}

`patches` are unified diffs with `-p1` paths (`a/setup.py`, as `git diff` writes them), applied
in order to the unpacked sdist before anything else runs; both engines build the patched
tree. An entry is the path of a patch file relative to the recipe's folder, or a table:

{_table(Patch, list(Patch.model_fields), "patches[].")}

Patch files are read when the recipe is loaded and travel with the job, so remote workers
need no access to the recipe's folder. Each patch's SHA-256 is part of the recipe's digest and
the build's cache key, so changing a patch file builds again, and the provenance lists each
patch (`patch:NAME`) and the `source` (`recipe-source`) among the build's resolved
dependencies. A hunk applies only where its context matches exactly (at its line or shifted);
a patch that does not apply fails the build and names the file and hunk.

## Overrides

`[[overrides]]` is an array of tables. Each entry has a `select` and any of the options of
the previous section:

{_table(Override, override_keys)}

**Build identifiers.** A build is named like cibuildwheel's builds:
`<python tag>-<platform tag>`, for example `cp312-manylinux_x86_64`,
`cp311-musllinux_aarch64`, `cp39-macosx_arm64`, `cp313-win_amd64`, `pp310-manylinux_x86_64`.
`build`, `skip` and `select` hold globs matched against it with fnmatch (`*`, `?`, `[...]`),
case-sensitively, as cibuildwheel does: a string may hold several globs separated by spaces,
`{{a,b}}` expands to alternatives (`cp3{{9,10}}-*`), and an array matches when any of its
globs does. A build is made when it matches a `build` glob and no `skip` glob.

**Which overrides apply.** An override applies to a build when a `select` glob matches the
build identifier and, if it has `versions`, the version being built is in it (pre-releases
count).

**How they combine.** The options of a build start from the top level of the recipe; then
each override that applies is merged in, in file order, so a later override wins over an
earlier one. Merging looks only at the keys an override sets:

* `environment` and `config-settings` are tables that merge key by key: the override's keys
  are added, and replace keys of the same name;
* every other key replaces the value it had: arrays are replaced, not appended to, and the
  `system-packages` and `build-requires` tables are replaced as a whole (an override that sets
  `system-packages.apk` alone leaves no `apt` list);
* keys an override does not set keep their value.

For example, with

```toml
{MERGE_EXAMPLE.rstrip()}
```

the builds get:

{_effective(merge, MERGE_EXAMPLE_BUILDS, ["environment", "before_build"])}

## Checking recipes

Every recipe is validated when it is loaded, and every problem of a file is reported at once,
each with the file, the key path as written in the TOML file and what is wrong. This
`recipes/foo.toml`

```toml
{BAD_EXAMPLE.rstrip()}
```

is reported as

```text
{_problems("foo", BAD_EXAMPLE)}
```

Unknown keys are errors (a misspelt key would otherwise be ignored), and so are snake_case
spellings of the keys. `farm recipe check [PATH ...]` checks the given files and folders (by
default every recipe folder) and prints every problem; the farm's tests check `recipes/`.
After changing the schema, `farm recipe docs` (or `python -m farm.recipes.docs`) regenerates
this page and the JSON Schema.

Editors that understand JSON Schema can check recipes as you type:
[`recipes/recipe.schema.json`](../recipes/recipe.schema.json) is generated from the same
schema. Taplo and Even Better TOML pick it up from a first line `#:schema ./recipe.schema.json`.

## Examples

### A library that needs system packages

A shortened `recipes/{simple.name}.toml`: install the development packages of libxml2 and
libxslt, import the compiled modules and run a one-line check.

```toml
{EXAMPLE_SIMPLE.rstrip()}
```

No `brew` packages: macOS builds use the libraries of the SDK. Every build gets the same
options.

### Overrides by platform and by version

A shortened `recipes/{overrides.name}.toml`: build the LibYAML bindings everywhere they can
be built, with a compiler path for Apple silicon, a pure-Python build on Windows, and a build
requirement pinned for old versions only.

```toml
{EXAMPLE_OVERRIDES.rstrip()}
```

The options that differ between builds come out as:

{_effective(overrides, EXAMPLE_OVERRIDES_BUILDS, ["environment", "build_requires"])}

and the Windows builds run the `test-command` of their override instead of the top-level one.
""",
    ]
    return "\n".join(parts)


# Command line --------------------------------------------------------------------------------


def outputs(root: Path = REPO_ROOT) -> dict[Path, str]:
    return {root / SCHEMA_PATH: render_json_schema(), root / DOCS_PATH: render_markdown()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m farm.recipes.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.root).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m farm.recipes.docs): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
