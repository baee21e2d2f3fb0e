"""Plan: from one sdist and its recipe to build targets (platform x Python) with their cache keys.

The matrix is what the workers serve (farm.coordinator.workers): the configured platforms (none
configured: those live workers serve, else this host's), each with the Pythons its workers offer,
less those Requires-Python or the recipe's build/skip selectors leave out. `--platform` and
`--python` select a subset; a selected pair no worker offers is planned all the same, and
`Target.unserved` says why it will wait.

What the sdist builds decides how many jobs (`sdist_kind`, read from the archive before any
build): a pure-Python wheel (`py3-none-any`) is built once, in one job, with the newest Python it
admits; an abi3 wheel once per platform, with the oldest. The worker verifies such a wheel on the
oldest and newest Python it admits (farm.worker.verify.targets_for).
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from packaging.markers import Marker
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from farm.config import Settings
from farm.recipes import LoadedRecipe, default_options, find_recipe
from farm.coordinator.workers import Workers, python_sort_key, python_tag
from farm.util.hashing import digest_json
from farm.util.python_tags import dotted, is_threaded
from farm.worker.platforms import get_platform, host_platform_name

SdistKind = Literal["platform", "abi3", "pure"]

DEFAULTS_DIGEST = digest_json({"recipe": None, "options": default_options().model_dump(mode="json")})


@dataclass(frozen=True, kw_only=True)
class Target:
    platform: str
    python: str
    build_id: str
    engine: str
    recipe_name: str | None
    recipe_digest: str
    options: dict[str, Any]
    image: str | None
    cache_key: str
    kind: SdistKind = "platform"
    unserved: str | None = None  # why no live worker will take the job (None: one will)


def platforms_for(settings: Settings, recipe: LoadedRecipe | None, workers: Workers | None = None,
                  only: Sequence[str] | None = None) -> list[str]:
    """The configured platforms (none configured: those live workers serve, else this host's),
    or the `only` ones asked for (which may be others), less those the recipe leaves out."""
    configured = settings.platforms or (workers.live_platforms() if workers else []) or [host_platform_name()]
    chosen = [p for p in only if get_platform(p)] if only else configured
    if recipe is not None and recipe.recipe.platforms is not None:
        return [p for p in chosen if p in recipe.recipe.platforms]
    return chosen


def pythons_for(settings: Settings, platform: str, workers: Workers | None = None) -> list[tuple[str, str | None]]:
    """(python tag, image) pairs this farm builds on `platform`, oldest first: what its workers offer
    (farm.coordinator.workers; before any registered, what a worker with these settings offers)."""
    return (workers or Workers(settings)).offers(platform)


def target_pythons(settings: Settings, *, only_platforms: Sequence[str] | None = None,
                   only_pythons: Sequence[str] | None = None, marker: Marker | None = None,
                   workers: Workers | None = None) -> list[str]:
    """The Pythons (cp39, ...) of the targets the farm would plan for a requirement, oldest first:
    those offered on the chosen platforms (or the `only_pythons` asked for) whose marker environment
    (python_version, sys_platform, platform_machine, ...) `marker` holds for. Known before any build;
    what a release is chosen for (farm.coordinator.submit)."""
    workers = workers or Workers(settings)
    wanted = [python_tag(p) for p in only_pythons or []]
    found: set[str] = set()
    for platform_name in platforms_for(settings, None, workers, only_platforms):
        platform = get_platform(platform_name)
        for python in wanted or [p for p, _ in pythons_for(settings, platform_name, workers)]:
            if marker is None or marker.evaluate({**platform.marker_environment(python), "extra": ""}):
                found.add(python)
    return sorted(found, key=python_sort_key)


def _admits(requires_python: str | None, python: str, *, python2: bool = False) -> bool:
    """Whether an sdist with this Requires-Python gets a job for `python`. Python 2 only when the sdist
    declares it: a Requires-Python that admits it, or a Python 2 classifier (`python2`), which is
    how sdists from before Requires-Python say so; an sdist that says nothing is Python 3's."""
    version = dotted(python)
    if not requires_python:
        return version is None or not version.startswith("2.") or python2
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True
    return version is None or spec.contains(version, prereleases=True)


_PYTHON2_CLASSIFIER = re.compile(r"^Classifier:\s*Programming Language :: Python :: 2(\.\d+)?(\s|$)", re.MULTILINE)


def declares_python2(path: Path | None) -> bool:
    """Whether the sdist's PKG-INFO names Python 2 in a classifier (`Programming Language :: Python ::
    2.7`): a Python 2 job is planned for it even without a Requires-Python (`_admits`)."""
    if path is None or not path.is_file():
        return False
    st = path.stat()
    return _read_sdist(str(path), st.st_size, st.st_mtime)[1]


_COMPILED = re.compile(r"\.(c|cc|cpp|cxx|h|hpp|pyx|pxd|f|f90|f95|rs|go|m|mm|swig|i)$|(^|/)(Cargo\.toml|CMakeLists\.txt|"
                       r"meson\.build|binding\.gyp)$", re.IGNORECASE)
_ABI3 = re.compile(r"py_limited_api|Py_LIMITED_API|py-api\s*=\s*[\"']cp3|[\"']abi3|abi3-py3", re.IGNORECASE)
_BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "Cargo.toml", "CMakeLists.txt")
_SETUP_EXT = re.compile(r"\b(Extension|ext_modules|cythonize|CFFI|cffi_modules|build_ext)\b")


@lru_cache(maxsize=256)
def _read_sdist(path: str, _size: int, _mtime: float) -> tuple[SdistKind, bool]:
    """One pass over the archive for the planner: what it builds (`sdist_kind`) and whether its PKG-INFO
    declares Python 2 (`declares_python2`)."""
    names: list[str] = []
    texts: list[str] = []
    pkg_info = ""
    try:
        if path.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                for n in names:
                    if n.count("/") <= 1 and n.rsplit("/", 1)[-1] in _BUILD_FILES:
                        texts.append(zf.read(n)[:1_000_000].decode("utf-8", "replace"))
                    elif n.count("/") == 1 and n.endswith("/PKG-INFO"):
                        pkg_info = zf.read(n)[:1_000_000].decode("utf-8", "replace")
        else:
            with tarfile.open(path) as tf:
                for member in tf:
                    names.append(member.name)
                    top = member.isfile() and member.name.count("/") <= 1
                    if top and member.name.rsplit("/", 1)[-1] in (*_BUILD_FILES, "PKG-INFO"):
                        f = tf.extractfile(member)
                        text = f.read(1_000_000).decode("utf-8", "replace") if f else ""
                        if member.name.endswith("/PKG-INFO"):
                            pkg_info = text
                        else:
                            texts.append(text)
    except (OSError, tarfile.TarError, zipfile.BadZipFile):
        return "platform", False
    python2 = bool(_PYTHON2_CLASSIFIER.search(pkg_info.split("\n\n", 1)[0]))  # the headers, not the description
    compiled = any(_COMPILED.search(n) for n in names) or any(_SETUP_EXT.search(t) for t in texts)
    if not compiled:
        return "pure", python2
    return ("abi3" if any(_ABI3.search(t) for t in texts) else "platform"), python2


def sdist_kind(path: Path | None) -> SdistKind:
    """What the sdist at `path` builds, read from its file list and build files without building:
    `pure` (no compiled sources, no extension modules), `abi3` (a limited-API extension), else
    `platform`. A heuristic that errs towards `platform` (a job per Python), which is never wrong,
    only slower; None (the file is not at hand) is `platform`."""
    if path is None or not path.is_file():
        return "platform"
    st = path.stat()
    return _read_sdist(str(path), st.st_size, st.st_mtime)[0]


def plan(*, name: str, version: str, sdist_sha256: str, requires_python: str | None, settings: Settings,
         only_platforms: Sequence[str] | None = None, only_pythons: Sequence[str] | None = None,
         kind: SdistKind = "platform", workers: Workers | None = None, marker: Marker | None = None,
         python2: bool = False) -> list[Target]:
    """The targets of one sdist; `marker` (a requirement's PEP 508 marker, as in `foo; python_version <
    "3.11"`) leaves out the targets whose marker environment it does not hold for; `python2`: the
    sdist declares Python 2 by classifier (`declares_python2`)."""
    workers = workers or Workers(settings)
    recipe = find_recipe(name, version, settings.all_recipe_dirs)
    digest = recipe.digest if recipe else DEFAULTS_DIGEST
    wanted = [python_tag(p) for p in only_pythons or []]
    targets = []
    for platform_name in platforms_for(settings, recipe, workers, only_platforms):
        platform = get_platform(platform_name)
        offered = dict(pythons_for(settings, platform_name, workers))
        pairs = sorted({**offered, **{p: offered.get(p) for p in wanted}}.items(),
                       key=lambda item: python_sort_key(item[0]))
        candidates = []
        for python, image in pairs:
            # Python 2 asked for by name (`--python 2.7`, a dependency of a cp27 job) needs no classifier
            if (wanted and python not in wanted) or not _admits(requires_python, python,
                                                                  python2=python2 or python in wanted):
                continue
            if marker is not None and not marker.evaluate({**platform.marker_environment(python), "extra": ""}):
                continue
            build_id = platform.build_identifier(python)
            if recipe is not None and not recipe.selects(build_id):
                continue
            candidates.append((python, image, build_id))
        if kind == "pure" and candidates:  # the newest Python builds it; verified on the oldest too
            candidates = [c for c in candidates if not is_threaded(c[0])][-1:] or candidates[-1:]
        elif kind == "abi3" and candidates:
            # The oldest: the wheel installs on every newer one, but for free-threaded builds, where
            # abi3 does not install (PEP 703): each of those gets its own job and its own wheel.
            gil = [c for c in candidates if not is_threaded(c[0])]
            candidates = gil[:1] + [c for c in candidates if is_threaded(c[0])]
        for python, image, build_id in candidates:
            options = (recipe.options_for(build_id, version) if recipe else default_options()).model_dump(mode="json")
            key = digest_json({"sdist": sdist_sha256, "recipe": digest, "options": options, "engine": settings.engine,
                               "python": python, "platform": platform_name, "image": image})
            targets.append(Target(platform=platform_name, python=python, build_id=build_id, engine=settings.engine,
                                  recipe_name=recipe.path.name if recipe else None, recipe_digest=digest,
                                  options=options, image=image, cache_key=key, kind=kind,
                                  unserved=workers.unserved(platform_name, python)))
    if kind == "pure" and targets:  # one job in all: the wheel is the same on every platform; a served one
        return [next((t for t in targets if t.unserved is None), targets[0])]
    return targets
