"""Pin, replace, drop or add build requirements of an unpacked sdist before it is built.

Old sdists declare build requirements that today's backends or compilers reject (an unpinned
Cython 3, a retired setuptools plugin). The recipe's `build-requires` rewrites `[build-system]
requires` of the tree's pyproject.toml; a tree without one gets the legacy setuptools backend.

Without a recipe, a failed build is tried once more with its build requirements resolved as they
were when the sdist was released (`release_time`, uv's `--exclude-newer`); a recipe's
`build-requires-as-of = "release"` does that from the start, `"today"` never.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import tomli_w
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from farm.errors import CommandTimeout, PackageFailure, UpstreamError
from farm.recipes.schema import BuildRequires
from farm.worker.source import SdistSource

if TYPE_CHECKING:
    from farm.worker.engines.base import BuildContext, BuildOutput

LEGACY_REQUIRES = ["setuptools>=40.8.0"]
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"


def checked(requirements: Sequence[str], how: str) -> list[str]:
    """Requirements from the package (pyproject.toml, the hook's answer) as PEP 508 text, nothing else:
    they become arguments and requirement-file lines of pip and uv on the host, where an option
    (`--index-url`, `-r FILE`) or a local path (`name @ file:///...`) would be an injection."""
    out = []
    for text in requirements:
        try:
            req = Requirement(text)
        except (InvalidRequirement, TypeError) as exc:
            raise PackageFailure("build", f"the package {how} a build requirement that is not PEP 508: {text!r}") from exc
        if req.url and not req.url.startswith(("https://", "http://")):
            raise PackageFailure("build", f"the package {how} a build requirement from a local path: {text!r}")
        out.append(str(req))
    return out


def declared(source: SdistSource) -> list[str]:
    """[build-system] requires of the tree's pyproject.toml; the legacy backend's without one."""
    requires = _parse(source.top_level("pyproject.toml")).get("build-system", {}).get("requires", LEGACY_REQUIRES)
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):  # "setuptools": not 10 names
        raise PackageFailure("build", "the sdist's pyproject.toml [build-system] requires is not a list of strings")
    return list(requires)


def apply(source: SdistSource, changes: BuildRequires) -> list[str] | None:
    """Rewrite the tree's build requirements; return the new list, or None when nothing changed
    (and then the sdist need not be unpacked for it)."""
    if not changes.override and not changes.add:
        return None
    data = _parse(source.top_level("pyproject.toml"))
    system = data.setdefault("build-system", {})
    if "requires" not in system:
        system["requires"] = list(LEGACY_REQUIRES)
        system.setdefault("build-backend", LEGACY_BACKEND)
    overrides = {canonicalize_name(k): v for k, v in changes.override.items()}
    result: list[str] = []
    for req in system["requires"]:
        name = canonicalize_name(Requirement(req).name)
        if name in overrides:
            if overrides[name]:
                result.append(overrides.pop(name))
            else:
                overrides.pop(name)
        else:
            result.append(req)
    # An override for a requirement the sdist does not declare is added as well.
    result += [r for r in overrides.values() if r] + list(changes.add)
    system["requires"] = result
    (source.path / "pyproject.toml").write_text(tomli_w.dumps(data))
    return result


def _parse(text: bytes | None) -> dict:
    if text is None:
        return {}
    try:
        return tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PackageFailure("build", f"the sdist's pyproject.toml is not valid TOML: {exc}") from exc


# Build requirements as of the sdist's release -------------------------------------------------


@dataclass(frozen=True)
class AsOf:
    """A point in time build requirements are resolved as of (uv's `--exclude-newer`), and where it came from."""

    time: dt.datetime
    origin: str  # "upstream upload-time" or "the sdist's PKG-INFO time"

    @property
    def exclude_newer(self) -> str:
        return self.time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def record(self) -> dict[str, str]:
        return {"time": self.exclude_newer, "origin": self.origin}


def release_time(name: str, version: str, source: SdistSource, upstream_index: str) -> AsOf | None:
    """When this sdist was released: the upstream index's PEP 700 `upload-time` of `name==version`,
    else the time its PKG-INFO was written into the archive (a submitted file the index lacks); None
    when neither is known."""
    from farm.index.upstream import Upstream

    try:
        with Upstream(upstream_index) as upstream:
            found = upstream.find_sdist(name, version).upload_time
    except (UpstreamError, httpx.HTTPError, OSError):
        found = None
    if found is not None:
        return AsOf(found if found.tzinfo else found.replace(tzinfo=dt.UTC), "upstream upload-time")
    if source.timestamp > 315532800:  # 1980-01-01 is what an sdist without a time gets
        return AsOf(dt.datetime.fromtimestamp(source.timestamp, dt.UTC), "the sdist's PKG-INFO time")
    return None


def build_as_of_release(ctx: BuildContext, attempt: Callable[[AsOf | None], BuildOutput], *,
                        reset: Callable[[], None]) -> BuildOutput:
    """An engine's build by `attempt(as_of)` (its output records `buildRequiresAsOf` with `resolved` when
    `as_of` is given). With `build-requires-as-of = "auto"` (the default) a failed build is tried once
    more with its build requirements as of the sdist's release, in a fresh tree after `reset()`
    (which removes the first attempt's build environment); `"release"` resolves as of it from the start."""
    mode = ctx.options.build_requires_as_of
    as_of = _release(ctx) if mode == "release" else None
    if mode == "release" and as_of is None:
        ctx.log.write("build requirements as of the release: the release time is unknown; resolving as of today\n")
    try:
        return attempt(as_of)
    except PackageFailure as exc:
        if (mode != "auto" or getattr(exc, "missing", None) or not getattr(exc, "retry_as_of", True)
                or isinstance(exc, CommandTimeout)):
            raise  # what is missing from the system, a timeout, or what the source itself does (`retry_as_of`
            # False on the failure) is not cured by older build requirements
        as_of = _release(ctx)
        if as_of is None:
            ctx.log.write("\nnot retried as of the release: its time is unknown\n")
            raise
        ctx.log.write(f"\n===== retry: build requirements as of the release, {as_of.exclude_newer} "
                      f"({as_of.origin}) =====\n")
        first = str(exc).splitlines()[0][:300]
        ctx.src = ctx.src.fresh()
        reset()
        try:
            out = attempt(as_of)
        except PackageFailure as again:
            failure = PackageFailure("build", f"{str(again).removeprefix('build: ')}\n(also tried with the build "
                                     f"requirements as of the release, {as_of.exclude_newer}; the first attempt "
                                     f"failed with: {first})")
            if getattr(again, "missing", None):  # what the retry found missing, for the system-packages round
                failure.missing = again.missing  # type: ignore[attr-defined]
            raise failure from again
        resolved = out.adjustments["buildRequiresAsOf"]["resolved"]  # type: ignore[index]
        out.adjustments["buildRequiresAsOf"] = {**as_of.record(), "retry": True, "resolved": resolved,
                                                "firstFailure": first}
        ctx.log.write(f"built with the build requirements as of {as_of.exclude_newer}: {', '.join(resolved)}\n")
        return out


def _release(ctx: BuildContext) -> AsOf | None:
    return release_time(ctx.spec.name, ctx.spec.version, ctx.src, ctx.spec.upstream_index)
