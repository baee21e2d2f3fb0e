"""Plan: from one sdist and its recipe to build targets (platform x Python) with their cache keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from farm.config import Settings
from farm.recipes import LoadedRecipe, default_options, find_recipe
from farm.util.hashing import digest_json
from farm.worker.platforms import get_platform, host_platform_name

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


def platforms_for(settings: Settings, recipe: LoadedRecipe | None) -> list[str]:
    configured = settings.platforms or [host_platform_name()]
    if recipe is not None and recipe.recipe.platforms is not None:
        return [p for p in configured if p in recipe.recipe.platforms]
    return configured


def pythons_for(settings: Settings, platform: str) -> list[tuple[str, str | None]]:
    """(python tag, image) pairs this farm builds on `platform`: what a worker of that platform with
    these settings offers (`Platform.offered_pythons`), asked of this host's configuration for now;
    the workers are to report it themselves (issue 10)."""
    return [(offer.python, offer.image) for offer in get_platform(platform).offered_pythons(settings)]


def _admits(requires_python: str | None, python: str) -> bool:
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True
    return spec.contains(f"{python[2]}.{python[3:]}", prereleases=True)


def plan(*, name: str, version: str, sdist_sha256: str, requires_python: str | None, settings: Settings,
         only_platforms: Sequence[str] | None = None, only_pythons: Sequence[str] | None = None) -> list[Target]:
    recipe = find_recipe(name, version, settings.all_recipe_dirs)
    digest = recipe.digest if recipe else DEFAULTS_DIGEST
    targets = []
    for platform_name in platforms_for(settings, recipe):
        if only_platforms and platform_name not in only_platforms:
            continue
        platform = get_platform(platform_name)
        for python, image in pythons_for(settings, platform_name):
            if (only_pythons and python not in only_pythons) or not _admits(requires_python, python):
                continue
            build_id = platform.build_identifier(python)
            if recipe is not None and not recipe.selects(build_id):
                continue
            options = (recipe.options_for(build_id, version) if recipe else default_options()).model_dump(mode="json")
            key = digest_json({"sdist": sdist_sha256, "recipe": digest, "options": options, "engine": settings.engine,
                               "python": python, "platform": platform_name, "image": image})
            targets.append(Target(platform=platform_name, python=python, build_id=build_id, engine=settings.engine,
                                  recipe_name=recipe.path.name if recipe else None, recipe_digest=digest,
                                  options=options, image=image, cache_key=key))
    return targets
