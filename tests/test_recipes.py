"""Recipes: the built-in recipe files, the generated schema and docs, parsing, overrides, lookup.

Bad inputs covered (each must name the file and the exact TOML key path):
  * TOML syntax error (key path "", line and column in the message)
  * unknown key, and a snake_case spelling of a known key (with a "did you mean")
  * wrong types: a number for a string, a string for an array, a number as an environment
    value (top level and inside an override), a number as a config-settings value
  * `select` of the wrong type (a number; an array holding a number)
  * an empty shell command in `before-build`
  * a shell command with a stray brace or an unknown `{placeholder}` (the engines fill
    commands in with str.format), at the top level and inside an override
  * a bad PEP 440 specifier in `versions` (top level and in an override)
  * a bad requirement in `test-requires`, in `build-requires.add` and in
    `build-requires.override`
  * an override without `select`
  * a file named with a non-normalized project name (`PyYAML.toml`, `zope.interface.toml`)
    or with something that is no project name at all
  * a file that is not UTF-8, a path that does not exist
  * several problems in one file (all reported at once, together with a bad file name) and
    problems in two files (both reported by one `check_paths`)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from farm.config import reset_settings
from farm.errors import RecipeError
from farm.recipes import (
    LoadedRecipe,
    Options,
    check_paths,
    clear_cache,
    default_options,
    find_recipe,
    load_recipe,
    parse_recipe_file,
    select_matches,
)
from farm.recipes import docs as recipe_docs
from farm.recipes import load as recipe_load
from farm.util.hashing import digest_json

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
BUILTIN = ["cffi", "lxml", "pillow", "psycopg2", "pyyaml"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(RecipeError) as info:
        parse_recipe_file(path)
    return info.value.problems


# The built-in recipes and the generated files ---------------------------------------------


def test_builtin_recipes_are_valid():
    assert sorted(p.stem for p in RECIPES.glob("*.toml")) == BUILTIN
    assert check_paths([RECIPES]) == []


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_recipe_shape(name):
    loaded = parse_recipe_file(RECIPES / f"{name}.toml")
    recipe = loaded.recipe
    assert loaded.name == name
    for options in [recipe, *recipe.overrides]:
        if options.test_command is not None:
            assert options.test_command.startswith("{python} -c ")
    assert not any("pytest" in r for r in recipe.test_requires)
    packages = recipe.system_packages
    assert packages.apt and packages.yum and packages.apk


def test_builtin_pyyaml_options():
    pyyaml = find_recipe("PyYAML", "6.0.2", [RECIPES])
    assert pyyaml is not None
    linux = pyyaml.options_for("cp312-manylinux_x86_64", "6.0.2")
    assert linux.environment == {"PYYAML_FORCE_LIBYAML": "1"}
    assert linux.system_packages.yum == ["libyaml-devel"]
    assert "__with_libyaml__" in (linux.test_command or "")
    assert linux.build_requires.override == {}
    mac = pyyaml.options_for("cp312-macosx_arm64", "6.0.2")
    assert mac.environment["PYYAML_FORCE_LIBYAML"] == "1" and "CFLAGS" in mac.environment
    windows = pyyaml.options_for("cp311-win_amd64", "6.0.2")
    assert windows.environment == {"PYYAML_FORCE_LIBYAML": "0"}
    assert "__with_libyaml__" not in (windows.test_command or "")
    old = pyyaml.options_for("cp39-manylinux_x86_64", "6.0")
    assert old.build_requires.override == {"cython": "cython<3"}


def test_builtin_psycopg2_skips():
    psycopg2 = find_recipe("psycopg2", "2.9.10", [RECIPES])
    assert psycopg2 is not None
    assert psycopg2.selects("cp312-manylinux_x86_64")
    assert not psycopg2.selects("pp310-manylinux_x86_64")
    assert not psycopg2.selects("cp312-win_amd64")
    assert psycopg2.recipe.test_imports == ["psycopg2", "psycopg2.extensions"]


def test_generated_json_schema_is_current():
    committed = (REPO / recipe_docs.SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == recipe_docs.render_json_schema(), "run: python -m farm.recipes.docs"


def test_generated_docs_are_current():
    committed = (REPO / recipe_docs.DOCS_PATH).read_text(encoding="utf-8")
    assert committed == recipe_docs.render_markdown(), "run: python -m farm.recipes.docs"


def test_json_schema_uses_toml_keys():
    schema = recipe_docs.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]
    assert schema["additionalProperties"] is False
    assert {"before-all", "test-command", "system-packages", "overrides", "versions"} <= set(schema["properties"])
    assert not any("_" in key for key in schema["properties"])


def test_docs_cover_every_option():
    page = recipe_docs.render_markdown()
    for model in (recipe_docs.Recipe, recipe_docs.SystemPackages, recipe_docs.BuildRequires, recipe_docs.Override):
        for name, field in model.model_fields.items():
            assert f"`{field.alias or name}`" in page or f".{field.alias or name}`" in page, name


def test_docs_main_check_and_write(tmp_path, capsys):
    assert recipe_docs.main(["--check", "--root", str(REPO)]) == 0
    assert recipe_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert recipe_docs.main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs/recipes.md").read_text() == recipe_docs.render_markdown()
    assert recipe_docs.main(["--check", "--root", str(tmp_path)]) == 0


# Bad inputs ----------------------------------------------------------------------------------

BAD = [
    pytest.param('environment = { A = "1"\n', "", "line 1, column", id="toml-syntax"),
    pytest.param('enviroment = { A = "1" }\n', "enviroment", "did you mean 'environment'", id="unknown-key"),
    pytest.param('before_all = ["true"]\n', "before_all", "did you mean 'before-all'", id="snake-case-key"),
    pytest.param("test-command = 3\n", "test-command", "valid string", id="number-for-string"),
    pytest.param('build = "cp39-*"\n', "build", "valid list", id="string-for-array"),
    pytest.param("environment = { A = 1 }\n", "environment.A", "valid string", id="environment-value"),
    pytest.param('config-settings = { "setup.args" = 1 }\n', 'config-settings."setup.args"', "valid string or a valid list",
                 id="config-settings-value"),
    pytest.param('before-build = ["make", ""]\n', "before-build[1]", "at least 1 character", id="empty-command"),
    pytest.param('versions = ">>1.0"\n', "versions", "not a version specifier", id="bad-specifier"),
    pytest.param('test-requires = ["pytest>>8"]\n', "test-requires[0]", "not a requirement", id="bad-test-requires"),
    pytest.param('[build-requires]\nadd = ["cython<3", "not a req!"]\n', "build-requires.add[1]", "not a requirement",
                 id="bad-build-requires-add"),
    pytest.param('build-requires.override = { cython = "cython<<3" }\n', "build-requires.override.cython",
                 "not a requirement", id="bad-build-requires-override"),
    pytest.param('[[overrides]]\nenvironment = { A = "1" }\n', "overrides[0].select", "required key is missing",
                 id="override-without-select"),
    pytest.param('[[overrides]]\nselect = "*"\nversions = "=>2"\n', "overrides[0].versions", "not a version specifier",
                 id="bad-override-specifier"),
    pytest.param('[[overrides]]\nselect = "*"\n[[overrides]]\nselect = "cp39-*"\nenvironment = { A = 1 }\n',
                 "overrides[1].environment.A", "valid string", id="override-environment-value"),
    pytest.param('[[overrides]]\nselect = 39\n', "overrides[0].select", "valid string or a valid list",
                 id="select-number"),
    pytest.param('[[overrides]]\nselect = ["cp39-*", 3]\n', "overrides[0].select[1]", "valid string",
                 id="select-array-with-number"),
    pytest.param('[[overrides]]\nselect = "*"\nskip = ["*"]\n', "overrides[0].skip", "unknown key",
                 id="top-level-key-in-override"),
    pytest.param("""test-command = '''{python} -c "print({'a': 1})"'''\n""", "test-command",
                 "unknown placeholder {'a'",
                 id="test-command-brace"),
    pytest.param('[[overrides]]\nselect = "*"\nbefore-build = ["true", "echo {pyhton}"]\n',
                 "overrides[0].before-build[1]", "unknown placeholder {pyhton}", id="before-build-placeholder"),
    pytest.param("before-all = ['echo }']\n", "before-all[0]", "Single '}'", id="before-all-lone-brace"),
]


@pytest.mark.parametrize(("text", "key_path", "message"), BAD)
def test_bad_input_names_file_and_key_path(tmp_path, text, key_path, message):
    path = write(tmp_path, "example.toml", text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    file, key, msg = problems[0]
    assert file == str(path)
    assert key == key_path
    assert message in msg
    with pytest.raises(RecipeError) as info:
        parse_recipe_file(path)
    assert str(path) in str(info.value) and (key_path or "<root>") in str(info.value)


@pytest.mark.parametrize(("filename", "expected"), [("PyYAML.toml", "'pyyaml.toml'"),
                                                    ("zope.interface.toml", "'zope-interface.toml'"),
                                                    ("Foo__Bar.toml", "'foo-bar.toml'")])
def test_non_normalized_file_name(tmp_path, filename, expected):
    path = write(tmp_path, filename, 'environment = { A = "1" }\n')
    (file, key, msg), = problems_of(path)
    assert (file, key) == (str(path), "")
    assert expected in msg and "normalized" in msg


def test_file_name_that_is_no_project_name(tmp_path):
    path = write(tmp_path, "-bad-.toml", "")
    (file, key, msg), = problems_of(path)
    assert (file, key) == (str(path), "") and "not a project name" in msg


def test_not_utf8_and_missing(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes('test-command = "caf\xe9"\n'.encode("latin-1"))
    (file, key, msg), = problems_of(path)
    assert (file, key) == (str(path), "") and "UTF-8" in msg
    missing = tmp_path / "nope.toml"
    assert check_paths([missing]) == [(str(missing), "", "no such file or folder")]
    with pytest.raises(RecipeError):
        load_recipe(missing)


def test_every_problem_of_a_file_at_once(tmp_path):
    path = write(tmp_path, "Many_Problems.toml", """\
versions = "~=1"
test-command = 3
colour = "blue"
test-requires = ["ok>=1", "bad>>1"]

[build-requires]
add = ["!!"]

[[overrides]]
environment = { A = 1 }

[[overrides]]
select = "cp39-*"
versions = "1.0"
test-command = "echo {}"
""")
    problems = problems_of(path)
    assert {p[0] for p in problems} == {str(path)}
    assert sorted(p[1] for p in problems) == sorted([
        "",
        "versions",
        "build-requires.add[0]",
        "test-requires[1]",
        "test-command",
        "overrides[0].environment.A",
        "overrides[0].select",
        "overrides[1].versions",
        "overrides[1].test-command",
        "colour",
    ])
    assert "many-problems.toml" in problems[0][2]


def test_syntax_error_and_bad_name_reported_together(tmp_path):
    path = write(tmp_path, "Bad_Name.toml", "a = [1,\nb = 2\n")
    problems = problems_of(path)
    assert [(p[0], p[1]) for p in problems] == [(str(path), ""), (str(path), "")]
    assert "bad-name.toml" in problems[0][2]
    assert "TOML syntax error" in problems[1][2] and "line 2" in problems[1][2]


def test_check_paths_reports_every_file(tmp_path):
    good = write(tmp_path, "good.toml", 'skip = ["pp*"]\n')
    first = write(tmp_path, "first.toml", "test-command = 1\n")
    second = write(tmp_path, "second.toml", "[[overrides]]\nbefore-all = []\n")
    (tmp_path / "notes.txt").write_text("not a recipe")
    problems = check_paths([tmp_path])
    assert problems == [
        (str(first), "test-command", "Input should be a valid string"),
        (str(second), "overrides[0].select", "required key is missing"),
    ]
    assert check_paths([good]) == []
    assert check_paths([good, second]) == [(str(second), "overrides[0].select", "required key is missing")]
    assert check_paths([]) == []


# Options, overrides and selection ------------------------------------------------------------

OVERRIDES = """\
environment = { A = "1", B = "2" }
before-build = ["make"]
config-settings = { "--build-option" = "--fast" }
test-imports = ["example"]
build = ["cp3*-*"]
skip = ["*-win32", "cp38-*"]

[system-packages]
apt = ["libfoo-dev"]
yum = ["foo-devel"]

[[overrides]]
select = "cp39-*"
environment = { B = "39" }
before-build = ["make legacy"]

[[overrides]]
select = ["*-musllinux_*", "*-macosx_*"]
system-packages = { apk = ["foo-dev"] }
config-settings = { "setup-args" = ["-Dx=1", "-Dy=2"] }

[[overrides]]
select = "cp3{10,11}-manylinux_x86_64 pp*"
versions = ">=2.0"
environment = { C = "new" }
test-imports = []

[[overrides]]
select = "*"
versions = "<1.5"
environment = { B = "old" }
"""


@pytest.fixture
def example(tmp_path) -> LoadedRecipe:
    return parse_recipe_file(write(tmp_path, "example.toml", OVERRIDES))


def test_override_selected_by_build_id(example):
    cp39 = example.options_for("cp39-manylinux_x86_64", "1.7")
    cp311 = example.options_for("cp311-manylinux_aarch64", "1.7")
    assert cp39.environment == {"A": "1", "B": "39"}
    assert cp39.before_build == ["make legacy"]
    assert cp311.environment == {"A": "1", "B": "2"}
    assert cp311.before_build == ["make"]
    assert cp311 == example.base_options


def test_environment_merges_lists_and_tables_replace(example):
    musl = example.options_for("cp39-musllinux_x86_64", "1.7")
    assert musl.environment == {"A": "1", "B": "39"}  # merged, not replaced
    assert musl.before_build == ["make legacy"]  # replaced, not appended
    assert musl.config_settings == {"--build-option": "--fast", "setup-args": ["-Dx=1", "-Dy=2"]}
    assert musl.system_packages.apk == ["foo-dev"]
    assert musl.system_packages.apt == [] and musl.system_packages.yum == []  # the table is replaced
    assert musl.test_imports == ["example"]  # not set by the override: kept
    # The recipe itself is never changed by applying overrides.
    assert example.recipe.environment == {"A": "1", "B": "2"}
    assert example.recipe.system_packages.apt == ["libfoo-dev"]


def test_version_scoped_overrides(example):
    new = example.options_for("cp310-manylinux_x86_64", "2.0")
    assert new.environment == {"A": "1", "B": "2", "C": "new"}
    assert new.test_imports == []
    prerelease = example.options_for("cp311-manylinux_x86_64", "2.1rc1")
    assert prerelease.environment["C"] == "new"  # a pre-release counts as matching
    older = example.options_for("cp310-manylinux_x86_64", "1.9")
    assert "C" not in older.environment and older.test_imports == ["example"]
    ancient = example.options_for("cp39-manylinux_x86_64", "1.0")
    assert ancient.environment == {"A": "1", "B": "old"}  # later override wins over an earlier one
    assert example.options_for("cp312-manylinux_x86_64", "2.0").environment == {"A": "1", "B": "2"}
    assert example.options_for("pp310-manylinux_x86_64", "2.0").environment["C"] == "new"


def test_matching_overrides_in_file_order(example):
    selected = example.matching_overrides("cp39-macosx_arm64", "1.0")
    assert [o.select for o in selected] == ["cp39-*", ["*-musllinux_*", "*-macosx_*"], "*"]


def test_selects_build_and_skip(example):
    assert example.selects("cp311-manylinux_x86_64")
    assert not example.selects("cp311-win32")
    assert not example.selects("cp38-manylinux_x86_64")
    assert not example.selects("pp310-manylinux_x86_64")  # not in `build`


def test_select_matches_like_cibuildwheel():
    assert select_matches("cp39-*", "cp39-manylinux_x86_64")
    assert not select_matches("cp39-*", "cp311-manylinux_x86_64")
    assert select_matches("cp38-* cp39-*", "cp39-win_amd64")
    assert select_matches("cp3{9,10}-*", "cp310-macosx_arm64")
    assert not select_matches("cp3{9,10}-*", "cp311-macosx_arm64")
    assert select_matches(["pp*", "*-musllinux_*"], "cp312-musllinux_aarch64")
    assert not select_matches("CP39-*", "cp39-manylinux_x86_64")
    assert not select_matches([], "cp39-manylinux_x86_64")


def test_applies_to_versions(tmp_path):
    everything = parse_recipe_file(write(tmp_path, "everything.toml", ""))
    assert everything.applies_to("1.0") and everything.applies_to("not-pep440")
    scoped = parse_recipe_file(write(tmp_path, "scoped.toml", 'versions = ">=2,<3"\n'))
    assert scoped.applies_to("2.5") and scoped.applies_to("2.1rc1")
    assert not scoped.applies_to("1.9") and not scoped.applies_to("3.0")
    assert not scoped.applies_to("not-pep440")


def test_default_options_and_empty_recipe(tmp_path):
    assert default_options() == Options()
    assert default_options().test_imports is None  # import the wheel's top-level modules
    assert default_options().system_packages.apt == []
    empty = parse_recipe_file(write(tmp_path, "empty.toml", "# nothing to change\n"))
    assert empty.options_for("cp312-manylinux_x86_64", "1.0") == default_options()
    assert empty.selects("cp312-manylinux_x86_64")


def test_digest_ignores_formatting(tmp_path):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    a = parse_recipe_file(write(tmp_path / "a", "foo.toml", 'skip = ["pp*"]\nenvironment = { A = "1" }\n'))
    b = parse_recipe_file(write(tmp_path / "b", "foo.toml", '# comment\nenvironment.A = "1"\n\nskip = [\n  "pp*",\n]\n'))
    assert a.digest == b.digest == digest_json(a.recipe.model_dump(mode="json"))
    assert len(a.digest) == 64
    c = parse_recipe_file(write(tmp_path / "c", "foo.toml", 'skip = ["pp*"]\nenvironment = { A = "2" }\n'))
    assert c.digest != a.digest


def test_loaded_recipe_is_frozen(example):
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.name = "other"  # type: ignore[misc]


# Finding recipes and the cache ---------------------------------------------------------------


@pytest.fixture
def two_dirs(tmp_path):
    site, builtin = tmp_path / "site", tmp_path / "builtin"
    site.mkdir()
    builtin.mkdir()
    write(site, "foo.toml", 'versions = ">=2"\nenvironment = { WHERE = "site" }\n')
    write(builtin, "foo.toml", 'environment = { WHERE = "builtin" }\n')
    write(builtin, "zope-interface.toml", 'versions = "<6"\n')
    return site, builtin


def test_find_recipe_respects_versions(two_dirs):
    site, builtin = two_dirs
    assert find_recipe("zope.interface", "5.5", [site, builtin]).name == "zope-interface"
    assert find_recipe("Zope_Interface", "6.0", [site, builtin]) is None
    assert find_recipe("zope.interface", "6.0b1", [site, builtin]) is None
    assert find_recipe("zope.interface", "5.6rc1", [site, builtin]).name == "zope-interface"
    assert find_recipe("bar", "1.0", [site, builtin]) is None
    assert find_recipe(str(builtin / "foo"), "1.0", [site]) is None  # not a project name, not a path
    assert find_recipe("../builtin/foo", "1.0", [site]) is None
    assert find_recipe("foo", "1.0", [site / "missing", builtin]).path == builtin / "foo.toml"


def test_find_recipe_first_folder_wins(two_dirs):
    site, builtin = two_dirs
    assert find_recipe("FOO", "2.1", [site, builtin]).recipe.environment == {"WHERE": "site"}
    assert find_recipe("foo", "2.1", [builtin, site]).recipe.environment == {"WHERE": "builtin"}
    # The site recipe replaces the built-in one entirely, versions included.
    assert find_recipe("foo", "1.0", [site, builtin]) is None


def test_find_recipe_default_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    site.mkdir()
    write(site, "pyyaml.toml", 'environment = { WHERE = "site" }\n')
    monkeypatch.delenv("FARM_RECIPES_DIRS", raising=False)
    reset_settings()
    try:
        builtin = find_recipe("PyYAML", "6.0.2")
        assert builtin is not None and builtin.path.resolve() == (RECIPES / "pyyaml.toml").resolve()
        monkeypatch.setenv("FARM_RECIPES_DIRS", f'["{site}"]')
        reset_settings()
        assert find_recipe("pyyaml", "6.0.2").recipe.environment == {"WHERE": "site"}
    finally:
        reset_settings()


def test_find_recipe_raises_on_invalid_recipe(tmp_path):
    write(tmp_path, "broken.toml", "test-command = 1\n")
    with pytest.raises(RecipeError) as info:
        find_recipe("broken", "1.0", [tmp_path])
    assert info.value.problems == [(str(tmp_path / "broken.toml"), "test-command", "Input should be a valid string")]
    with pytest.raises(RecipeError):  # a cached failure is reported again
        find_recipe("broken", "1.0", [tmp_path])


def test_cache_reuses_unchanged_and_rereads_changed(tmp_path, monkeypatch):
    calls: list[Path] = []
    real = recipe_load.parse_recipe_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(recipe_load, "parse_recipe_file", counting)
    path = write(tmp_path, "foo.toml", 'environment = { V = "1" }\n')
    first = find_recipe("foo", "1.0", [tmp_path])
    again = find_recipe("Foo", "1.0", [tmp_path])
    assert again is first
    assert load_recipe(path) is first
    assert len(calls) == 1

    stamp = path.stat().st_mtime_ns
    path.write_text('environment = { V = "2" }\n', encoding="utf-8")
    os.utime(path, ns=(stamp + 2_000_000_000, stamp + 2_000_000_000))
    changed = find_recipe("foo", "1.0", [tmp_path])
    assert changed is not first
    assert changed.recipe.environment == {"V": "2"}
    assert changed.digest != first.digest
    assert len(calls) == 2
    assert find_recipe("foo", "1.0", [tmp_path]) is changed
    assert len(calls) == 2

    clear_cache()
    assert find_recipe("foo", "1.0", [tmp_path]) is not changed
    assert len(calls) == 3
