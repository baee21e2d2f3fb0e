"""The files a recipe names beside itself: patch files and a `source` path, resolved when it is loaded.

A patch file's text is read into the recipe (`Patch.diff`, with its `sha256`), so that the options a
job carries hold the patch itself: a remote worker needs no access to the recipe's folder, and the
recipe's digest, the cache key and the provenance all change when a patch file changes. A `source`
path is made absolute (the file is only read by the worker that builds, and checked there).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from farm.recipes.schema import Options, Patch, Recipe

Problem = tuple[str, str, str]


def _patch(patch: Patch, folder: Path, file: str, where: str, problems: list[Problem], read: list[Path]) -> Patch:
    if patch.path is None:  # inline: its digest was computed when it was validated
        return patch
    target = (folder / patch.path).resolve()
    try:
        text = target.read_bytes().decode("utf-8")
    except OSError as exc:
        problems.append((file, f"{where}.path", f"cannot read the patch file {target}: {exc.strerror or exc}"))
        return patch
    except UnicodeDecodeError:
        problems.append((file, f"{where}.path", f"the patch file {target} is not UTF-8 text"))
        return patch
    read.append(target)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if patch.sha256 is not None and patch.sha256 != digest:
        problems.append((file, f"{where}.sha256", f"the patch file's SHA-256 is {digest}, not {patch.sha256}"))
        return patch
    return Patch.model_validate({"path": patch.path, "diff": text, "sha256": digest})


def _resolved(options: Options, folder: Path, file: str, prefix: str, problems: list[Problem],
              read: list[Path]) -> dict[str, object]:
    update: dict[str, object] = {}
    if options.patches:
        update["patches"] = [_patch(p, folder, file, f"{prefix}patches[{i}]", problems, read)
                             for i, p in enumerate(options.patches)]
    if options.source is not None and options.source.path is not None:
        update["source"] = options.source.model_copy(update={"path": str((folder / options.source.path).resolve())})
    return update


def resolve_files(recipe: Recipe, path: Path) -> tuple[Recipe, list[Problem], tuple[Path, ...]]:
    """The recipe with its patch files read and its source path absolute; the problems found; the files read."""
    folder, file = path.parent, str(path)
    problems: list[Problem] = []
    read: list[Path] = []
    update = _resolved(recipe, folder, file, "", problems, read)
    overrides = []
    for i, override in enumerate(recipe.overrides):
        changes = _resolved(override, folder, file, f"overrides[{i}].", problems, read)
        # model_copy keeps model_fields_set, which merge_options reads: only what the override set is applied
        overrides.append(override.model_copy(update=changes) if changes else override)
    if overrides:
        update["overrides"] = overrides
    return (recipe.model_copy(update=update) if update else recipe), problems, tuple(read)
