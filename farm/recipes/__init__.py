"""Recipes: per-project build and test options, `recipes/<normalized-name>.toml`.

See docs/recipes.md (generated from the schema by `python -m farm.recipes.docs`).
"""

from farm.recipes.load import (
    LoadedRecipe,
    Problem,
    check_paths,
    clear_cache,
    default_options,
    find_recipe,
    load_recipe,
    parse_recipe_file,
    parse_recipe_text,
    select_matches,
    version_matches,
)
from farm.recipes.schema import BuildRequires, Options, Override, Recipe, SystemPackages, merge_options

__all__ = [
    "BuildRequires",
    "LoadedRecipe",
    "Options",
    "Override",
    "Problem",
    "Recipe",
    "SystemPackages",
    "check_paths",
    "clear_cache",
    "default_options",
    "find_recipe",
    "load_recipe",
    "merge_options",
    "parse_recipe_file",
    "parse_recipe_text",
    "select_matches",
    "version_matches",
]
