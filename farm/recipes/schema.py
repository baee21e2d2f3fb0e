"""The recipe schema: one source for validation, the editor JSON Schema and docs/recipes.md.

Option names follow cibuildwheel's where the concept is the same (`environment`, `before-all`,
`before-build`, `config-settings`, `test-requires`, `test-command`, `build`, `skip`,
`[[overrides]]` with `select`).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _specifier(value: str) -> str:
    try:
        SpecifierSet(value)
    except InvalidSpecifier as exc:
        raise ValueError(f"not a version specifier: {value!r}") from exc
    return value


def _requirement(value: str) -> str:
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid"
        raise ValueError(f"not a requirement: {value!r} ({reason})") from exc
    return value


def _override_requirement(value: str) -> str:
    return value if value == "" else _requirement(value)


def _sha256(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"not a SHA-256 digest (64 lower-case hex digits): {value!r}")
    return value


Specifier = Annotated[str, AfterValidator(_specifier)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
RequirementStr = Annotated[str, AfterValidator(_requirement)]
ShellCommand = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=_kebab, populate_by_name=True, frozen=True)


class SystemPackages(_Model):
    """System packages to install before building, per package-manager family."""

    apt: list[str] = Field(default_factory=list, description="Debian/Ubuntu packages (apt-get)")
    yum: list[str] = Field(default_factory=list, description="RHEL/manylinux packages (yum/dnf)")
    apk: list[str] = Field(default_factory=list, description="Alpine/musllinux packages (apk)")
    brew: list[str] = Field(default_factory=list, description="macOS Homebrew formulae")
    choco: list[str] = Field(default_factory=list, description="Windows Chocolatey packages")


class BuildRequires(_Model):
    """Changes to the build requirements the sdist declares (old sdists break under new backends)."""

    override: dict[str, Annotated[str, AfterValidator(_override_requirement)]] = Field(
        default_factory=dict,
        description='Replace the declared requirement NAME by this one (`cython = "cython<3"`); "" removes it')
    add: list[RequirementStr] = Field(default_factory=list, description="Requirements added to the build environment")


class Source(_Model):
    """The sdist to build instead of the one submitted or found upstream (a fixed re-release, a fork's
    sdist). It must be an sdist of the same project and version; it is checked against `sha256`."""

    url: str | None = Field(None, description="Where to download it (https:// or file://)")
    path: str | None = Field(None, description="A file, relative to the recipe's folder (made absolute when the recipe "
                             "is loaded; a worker must be able to read it)")
    sha256: Sha256 = Field(description="Its SHA-256; a download with another digest fails the build")

    @model_validator(mode="after")
    def _one_place(self) -> Source:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of `url` and `path`")
        return self


class Patch(_Model):
    """A unified diff applied to the unpacked sdist (as `patch -p1` would) before anything else runs.
    In a recipe, a string is the path of a patch file relative to the recipe's folder; the farm reads
    it when the recipe is loaded, so a patch travels with the job (to remote workers too)."""

    path: str | None = Field(None, description="The patch file, relative to the recipe's folder")
    diff: str | None = Field(None, description="The diff itself (inline, or read from `path` when the recipe is loaded)")
    sha256: Sha256 | None = Field(None, description="The diff's SHA-256: checked if given, else computed on load")

    @model_validator(mode="before")
    @classmethod
    def _digest(cls, data: Any) -> Any:
        """A diff's sha256 is computed (and a given one checked) wherever a Patch is made."""
        if isinstance(data, dict) and isinstance(data.get("diff"), str):
            digest = hashlib.sha256(data["diff"].encode()).hexdigest()
            if data.get("sha256") not in (None, digest):
                raise ValueError(f"the patch's SHA-256 is {digest}, not {data['sha256']}")
            data = {**data, "sha256": digest}
        elif isinstance(data, dict) and data.get("path") is None:
            raise ValueError("a patch needs `path` or `diff`")
        return data


def _patch_entry(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


PatchEntry = Annotated[Patch, BeforeValidator(_patch_entry, json_schema_input_type=str | Patch)]


def _size(value: str) -> str:
    from farm.worker.sandbox import parse_size

    parse_size(value)
    return value


Size = Annotated[str, AfterValidator(_size)]


class Limits(_Model):
    """Resource limits of the sandbox that package code runs in; unset: the farm's defaults (docs/security.md)."""

    memory: Size | None = Field(None, description="Address space per process, e.g. `16g`")
    processes: int | None = Field(None, ge=16, description="Processes and threads at once")
    file_size: Size | None = Field(None, description="Largest file a build or test may write, e.g. `8g`")
    cpu_time: int | None = Field(None, ge=1, description="CPU seconds per process")


class Options(_Model):
    """Build and test options: the part of a recipe that an override may change."""

    source: Source | None = Field(None, description="Build this sdist instead of the submitted one: a table with `url` "
                                  "or `path`, and `sha256`")
    patches: list[PatchEntry] = Field(default_factory=list, description="Unified diffs applied in order to the unpacked "
                                      "sdist before the build (`-p1` paths: `a/setup.py`); patch files relative to the "
                                      "recipe's folder. Their digests are part of the cache key and the provenance")
    environment: dict[str, str] = Field(default_factory=dict, description="Environment variables for the build")
    before_all: list[ShellCommand] = Field(default_factory=list, description="Commands run once per build host/container before any build")
    before_build: list[ShellCommand] = Field(default_factory=list, description="Commands run in the source tree before each build")
    config_settings: dict[str, str | list[str]] = Field(default_factory=dict, description="PEP 517 config settings passed to the backend")
    build_requires: BuildRequires = Field(default_factory=BuildRequires, description="Overrides of the sdist's build requirements")
    build_requires_as_of: Literal["auto", "release", "today"] = Field(
        "auto", description="Resolve build requirements as of: `today`; `release`, the sdist's upload time "
        "(uv's `--exclude-newer`, for old sdists that today's backends reject); `auto`, today and, if the build "
        "fails, once more as of the release")
    system_packages: SystemPackages = Field(default_factory=SystemPackages, description="System packages per platform family")
    repair_exclude: list[str] = Field(default_factory=list, description="Libraries the repair tool must not graft (auditwheel/delocate/delvewheel --exclude)")
    test_requires: list[RequirementStr] = Field(default_factory=list, description="Requirements installed (from the farm's index) for the tests")
    test_command: str | None = Field(None, description="Shell command run in the clean environment; {python} is its interpreter, {project} the unpacked sdist")
    test_imports: list[str] | None = Field(None, description="Modules to import as a test; default: the top-level packages and "
                                                "modules the wheel's RECORD lists (not top_level.txt; no tests, no private ones beside public ones)")
    network: bool = Field(False, description="Give the build (recipe commands and the PEP 517 hooks) network access; "
                          "recorded in the provenance. Tests never have network")
    limits: Limits = Field(default_factory=Limits, description="Sandbox resource limits for this package's builds and tests")


class Override(Options):
    """Options for the builds whose identifier matches `select` (and version matches `versions`)."""

    select: str | list[str] = Field(description="Build identifier glob(s), e.g. `cp39-*` or `*-musllinux_*`")
    versions: Specifier | None = Field(None, description="Only for package versions in this specifier")


class Recipe(Options):
    """A recipe file, `recipes/<normalized-name>.toml`."""

    versions: Specifier = Field("", description="Package versions the recipe applies to (PEP 440 specifier); empty: all")
    build: list[str] = Field(default_factory=lambda: ["*"], description="Build identifier globs to build (`cp311-*`)")
    skip: list[str] = Field(default_factory=list, description="Build identifier globs to skip")
    platforms: list[str] | None = Field(None, description="Platforms to build for (`linux-x86_64`, `macos-arm64`, ...); default: every platform with a worker")
    overrides: list[Override] = Field(default_factory=list, description="Options selected by build identifier, applied in order")


OPTION_FIELDS: tuple[str, ...] = tuple(Options.model_fields)


def merge_options(base: Options, override: Options, fields_set: set[str]) -> Options:
    """Apply an override's explicitly set options on top of `base`; tables merge, lists replace."""
    data: dict[str, Any] = base.model_dump(include=set(OPTION_FIELDS))
    for name in fields_set & set(OPTION_FIELDS):
        value = getattr(override, name)
        if isinstance(value, dict) and isinstance(data[name], dict) and name in ("environment", "config_settings"):
            data[name] = {**data[name], **value}
        else:
            data[name] = value.model_dump() if isinstance(value, BaseModel) else value
    return Options.model_validate(data)
