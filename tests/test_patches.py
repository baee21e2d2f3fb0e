"""A recipe's `patches` and `source`: the diff applier, the loader that reads patch files into the
recipe (digest, cache key), the fetch step, and a real sdist built through a running farm with a
patch that fixes it, the patch recorded in its provenance."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import textwrap
from pathlib import Path

import pytest

from farm.errors import PackageFailure, RecipeError
from farm.recipes import clear_cache, load_recipe, parse_recipe_file
from farm.recipes.schema import Options, Patch
from farm.util.archive import Limits
from farm.util.hashing import digest_json
from farm.worker import patches
from farm.worker.source import SdistSource
from tests.helpers.env import free_port, installed_and_run
from tests.helpers.farms import Farm
from tests.helpers.sdists import make_project, make_sdist


def _git_diff(tmp: Path, before: dict[str, str], after: dict[str, str]) -> str:
    """The diff git itself writes between two trees (a/ and b/ prefixes, -p1)."""
    for side, files in (("a", before), ("b", after)):
        for name, text in files.items():
            (tmp / side / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / side / name).write_text(text)
        (tmp / side).mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["git", "diff", "--no-index", "--no-prefix", "--src-prefix=a/", "--dst-prefix=b/", "a", "b"],
                         cwd=tmp, capture_output=True, text=True)
    assert res.returncode == 1, res.stderr
    # git names the folders themselves (a/a/x): drop one level, as a patch made inside the tree would be
    return res.stdout.replace(" a/a/", " a/").replace(" b/b/", " b/").replace("--- a/a/", "--- a/") \
        .replace("+++ b/b/", "+++ b/")


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


BEFORE = {"setup.py": "".join(f"line {i}\n" for i in range(1, 40)), "pkg/old.py": "gone = True\n",
          "pkg/keep.py": "x = 1"}
AFTER = {"setup.py": BEFORE["setup.py"].replace("line 3\n", "line three\n").replace("line 30\n", "line 30\nadded\n"),
         "pkg/new.py": "fresh = True\n", "pkg/keep.py": "x = 2"}


def test_a_git_diff_applies_changes_adds_and_deletes_files(tmp_path: Path) -> None:
    diff = _git_diff(tmp_path / "d", BEFORE, AFTER)
    tree = _tree(tmp_path / "t", BEFORE)
    assert sorted(patches.apply(diff, tree)) == ["pkg/keep.py", "pkg/new.py", "pkg/old.py", "setup.py"]
    assert {p.relative_to(tree).as_posix(): p.read_text() for p in tree.rglob("*") if p.is_file()} == AFTER


def test_a_shifted_file_still_takes_the_hunk_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    diff = _git_diff(tmp_path / "d", {"setup.py": BEFORE["setup.py"]}, {"setup.py": AFTER["setup.py"]})
    shifted = _tree(tmp_path / "s", {"setup.py": "# a header\n# more\n" + BEFORE["setup.py"]})
    patches.apply(diff, shifted)
    assert (shifted / "setup.py").read_text() == "# a header\n# more\n" + AFTER["setup.py"]
    other = _tree(tmp_path / "o", {"setup.py": BEFORE["setup.py"].replace("line 2\n", "line two\n")})
    with pytest.raises(PackageFailure, match="hunk 1 of setup.py does not apply"):
        patches.apply(diff, other)
    with pytest.raises(PackageFailure, match="exists already"):
        patches.apply(_git_diff(tmp_path / "n", {}, {"new.py": "x\n"}), _tree(tmp_path / "n2", {"new.py": "x\n"}))


def test_paths_outside_the_tree_and_through_symlinks_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    tree = _tree(tmp_path / "t", {"ok.py": "secret = 1\n"})
    (tree / "link").symlink_to(tmp_path)
    evil = "--- a/link/outside.py\n+++ b/link/outside.py\n@@ -1 +1 @@\n-secret = 1\n+secret = 2\n"
    with pytest.raises(PackageFailure, match="symbolic link"):
        patches.apply(evil, tree)
    with pytest.raises(PackageFailure, match="outside the tree"):
        patches.apply(evil.replace("link/", "../"), tree)
    assert outside.read_text() == "secret = 1\n"
    with pytest.raises(PackageFailure, match="no file changes"):
        patches.apply("just some text\n", tree)


def _recipe(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_loader_reads_patch_files_into_the_recipe_and_their_change_changes_the_digest(tmp_path: Path) -> None:
    clear_cache()
    folder = tmp_path / "recipes"
    (folder / "patches").mkdir(parents=True)
    patch = folder / "patches" / "fix.patch"
    patch.write_text("--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n")
    path = _recipe(folder, """
        patches = ["patches/fix.patch", {diff = "--- a/y\\n+++ b/y\\n@@ -1 +1 @@\\n-c\\n+d\\n"}]
        source = {path = "../sdists/demo-1.0.tar.gz", sha256 = "%s"}

        [[overrides]]
        select = "cp312-*"
        patches = ["patches/fix.patch"]
        """ % ("ab" * 32))
    loaded = load_recipe(path)
    opts = loaded.options_for("cp311-manylinux_x86_64", "1.0")
    first, inline = opts.patches
    assert first.path == "patches/fix.patch" and first.diff == patch.read_text()
    assert first.sha256 == hashlib.sha256(patch.read_bytes()).hexdigest()
    assert inline.sha256 == hashlib.sha256(inline.diff.encode()).hexdigest()
    assert opts.source is not None and opts.source.path == str((tmp_path / "sdists/demo-1.0.tar.gz").resolve())
    assert [p.path for p in loaded.options_for("cp312-manylinux_x86_64", "1.0").patches] == ["patches/fix.patch"]
    # what the job carries (and the cache key is made of) holds the diff and its digest
    dumped = opts.model_dump(mode="json")
    assert dumped["patches"][0]["diff"] == patch.read_text() and Options.model_validate(dumped) == opts

    # the recipe file is unchanged, the patch file changed: the cache notices, the digest moves
    patch.write_text("--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+c\n")
    os.utime(patch, ns=(1, 1))
    again = load_recipe(path)
    assert again.digest != loaded.digest
    assert digest_json(again.options_for("cp311-x", "1.0").model_dump(mode="json")) != digest_json(dumped)


def test_missing_patch_files_and_wrong_digests_are_recipe_problems(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    (folder / "p.patch").parent.mkdir(parents=True, exist_ok=True)
    (folder / "p.patch").write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    path = _recipe(folder, """
        patches = ["missing.patch", {path = "p.patch", sha256 = "%s"}]
        source = {url = "https://example.org/demo-1.0.tar.gz", path = "x", sha256 = "%s"}
        """ % ("0" * 64, "1" * 64))
    with pytest.raises(RecipeError) as info:
        parse_recipe_file(path)
    text = str(info.value)
    assert "source" in text and "exactly one of `url` and `path`" in text
    path = _recipe(folder, """patches = ["missing.patch", {path = "p.patch", sha256 = "%s"}]\n""" % ("0" * 64))
    with pytest.raises(RecipeError) as info:
        parse_recipe_file(path)
    problems = {key: msg for _, key, msg in info.value.problems}
    assert "cannot read the patch file" in problems["patches[0].path"]
    assert "SHA-256 is" in problems["patches[1].sha256"]
    with pytest.raises(ValueError, match="SHA-256 is"):
        Patch.model_validate({"diff": "x", "sha256": "0" * 64})


def test_patched_tree_is_what_the_archive_holds_too(tmp_path: Path) -> None:
    proj = make_project(tmp_path, "farmtest-patched", c_extension=False, body="return a - b")
    sdist = make_sdist(proj, tmp_path / "dist")
    source = SdistSource(sdist, tmp_path / "work" / "src", Limits(10**8, 10**9, 10**5))
    diff = ("--- a/farmtest_patched/__init__.py\n+++ b/farmtest_patched/__init__.py\n"
            "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n")
    log = io.StringIO()
    source.apply_patches([Patch(diff=diff, path="fix.patch")], log)
    assert "return a + b" in (source.path / "farmtest_patched/__init__.py").read_text()
    assert source.sdist != sdist and source.sdist.name == sdist.name
    with tarfile.open(source.sdist) as tf:
        member = tf.extractfile(f"{source.path.name}/farmtest_patched/__init__.py")
        assert member is not None and b"return a + b" in member.read()
        assert f"{source.path.name}/PKG-INFO" in tf.getnames()
    assert source.patched == [{"name": "fix.patch", "sha256": hashlib.sha256(diff.encode()).hexdigest(),
                               "files": ["farmtest_patched/__init__.py"]}]
    assert "patch fix.patch" in log.getvalue()


@pytest.mark.slow
def test_a_recipe_patch_and_source_build_through_the_farm(tmp_path: Path) -> None:
    """A real sdist whose add() is wrong, replaced by the recipe's `source` (a local copy with another
    digest would fail) and fixed by a patch file; the recipe's test command proves the fix."""
    name = "farmtest-needs-patch"
    mod = name.replace("-", "_")
    proj = make_project(tmp_path, name, body="return a - b")
    submitted = make_sdist(proj, tmp_path / "dist")
    local = tmp_path / "sdists" / submitted.name
    local.parent.mkdir()
    local.write_bytes(submitted.read_bytes())
    recipes = tmp_path / "recipes"
    (recipes / "patches").mkdir(parents=True)
    # the C extension's add is right; the Python wrapper is what the patch fixes
    (proj / mod / "__init__.py").write_text(f"from ._native import add as _add\n\ndef add(a, b):\n    return _add(a, -b)\n")
    broken = make_sdist(proj, tmp_path / "dist2")
    local.write_bytes(broken.read_bytes())
    patch = (f"--- a/{mod}/__init__.py\n+++ b/{mod}/__init__.py\n@@ -3,2 +3,2 @@\n def add(a, b):\n"
             f"-    return _add(a, -b)\n+    return _add(a, b)\n")
    (recipes / "patches" / "fix-add.patch").write_text(patch)
    (recipes / f"{name}.toml").write_text(textwrap.dedent(f"""
        patches = ["patches/fix-add.patch"]
        source = {{path = "../sdists/{local.name}", sha256 = "{hashlib.sha256(local.read_bytes()).hexdigest()}"}}
        test-command = "{{python}} -c 'import {mod}; assert {mod}.add(40, 2) == 42'"
        """))
    farm = Farm(tmp_path / "home", free_port())
    farm.env["FARM_RECIPES_DIRS"] = json.dumps([str(recipes)])
    farm.start()
    try:
        res = farm.farm("submit", "--wait", "--timeout", "900", str(submitted))
        assert res.returncode == 0, res.stdout + res.stderr + farm.farm("logs", "1").stdout[-4000:]
        log = farm.farm("logs", "1").stdout
        assert "source from the recipe:" in log and f"patch patches/fix-add.patch" in log
        assert installed_and_run(farm.index_url, tmp_path, name, f"import {mod}; print({mod}.add(40, 2))") == "42"
    finally:
        farm.stop()
    (wheel,) = (farm.home / "index/files" / name).glob("*.whl")
    statement = json.loads((wheel.parent / f"{wheel.name}.provenance.json").read_text())
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["patch:patches/fix-add.patch"]["digest"]["sha256"] == hashlib.sha256(patch.encode()).hexdigest()
    assert deps["recipe-source"]["digest"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
