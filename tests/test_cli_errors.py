"""The real `farm` command (`python -m farm.cli` in a subprocess) on bad submissions and recipe checks.

One FARM_HOME for the module, pointed at a static PEP 503 upstream on 127.0.0.1
(FARM_UPSTREAM_INDEX), where `farm submit good-1.0.tar.gz` succeeded first (two queued jobs, two
build messages in the broker folder, no worker running). Then each bad input of
tests/test_submit.py (BAD) is submitted through the CLI:
  * not an sdist: random bytes named .tar.gz / .zip, a wheel renamed .tar.gz / .zip, a .whl,
    a .txt file
  * PEP 625 mismatches: foo-1.0.tar.gz holding bar-2.0 PKG-INFO, or holding foo 2.0
  * hostile members: absolute path, `..` (tar, first member, zip), symlinks out of the tree
    (relative, absolute, zip)
  * over FARM_MAX_SDIST_BYTES; archive bombs over FARM_MAX_UNPACKED_BYTES (declared tar sizes,
    gzip stream, zip)
  * paths that do not exist (with and without an sdist suffix)
  * "foo bar baz" and `remote===one`, which are not requirements
  * upstream: unknown project, unknown version, wheel-only version, nothing satisfying a range,
    sha256 mismatch between index record and download, no sha256 in the index, a downloaded
    sdist whose PKG-INFO names another project
For each: the exit code is the error's (SdistError 4, UpstreamError 5, other FarmError 1), stderr
is one `farm: error: ...` message naming the problem and no traceback, nothing is printed on
stdout, no Source/Submission/Job row is added, the good sdist's rows and stored file are
unchanged, nothing new is in FARM_HOME, nothing is written outside it, the cwd stays empty.

Also: a request longer than a file name is an error message, not a traceback; a directory is
reported as a directory.

`farm recipe check`: exit 0 and "recipes ok" on the repository's recipes/; exit 3 for a folder
with two broken recipe files (and one good one), every problem listed as `file: key path: message`
and the count on stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from farm.config import reset_settings
from farm.db.models import Source
from farm.db.session import session_scope
from farm.errors import FarmError
from tests.test_submit import (
    BAD,
    EVIL_NAMES,
    PLATFORMS,
    Bad,
    StaticIndex,
    home_tree,
    make_good,
    populate,
    rows,
    sha256_of,
    tree,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Cli:
    root: Path
    home: Path
    cwd: Path
    index: StaticIndex
    env: dict[str, str]
    good_digest: str

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env={**self.env, **(env or {})},
                              cwd=self.cwd, capture_output=True, text=True, timeout=120)

    def rows(self) -> dict[str, list[tuple]]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FARM_HOME", str(self.home))
            reset_settings()
            try:
                return rows()
            finally:
                reset_settings()

    def stored_good(self) -> str:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("FARM_HOME", str(self.home))
            reset_settings()
            try:
                with session_scope() as s:
                    (source,) = s.scalars(select(Source).where(Source.name == "good")).all()
                    assert source.sha256 == self.good_digest
                    return sha256_of(self.home / "storage" / source.storage_key)
            finally:
                reset_settings()


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("cli")
    index = StaticIndex(root / "upstream")
    populate(index, root / "upstream-build")
    home, cwd = root / "farm", root / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(home), FARM_UPSTREAM_INDEX=index.url, FARM_PLATFORMS=json.dumps(PLATFORMS))
    good = make_good(root / "good")
    c = Cli(root=root, home=home, cwd=cwd, index=index, env=env, good_digest=sha256_of(good))
    try:
        result = c.run("submit", str(good))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == len(PLATFORMS)
        assert all(re.fullmatch(r"job \d+: good 1\.0 cp\d+-manylinux_\w+ queued", line) for line in lines), lines
        assert len(list((home / "broker" / "queue").glob("*.msg"))) == len(PLATFORMS)
        yield c
    finally:
        index.stop()


def test_good_submission_recorded(cli: Cli) -> None:
    r = cli.rows()
    assert [(s[1], s[2], s[3], s[7]) for s in r["source"]] == [(cli.good_digest, "good", "1.0", None)]
    assert len(r["submission"]) == 1 and r["submission"][0][1] == "file"
    assert len(r["job"]) == len(PLATFORMS) and all(j[8] == "queued" for j in r["job"])
    assert cli.stored_good() == cli.good_digest


def check_cli_refused(cli: Cli, case: Bad) -> subprocess.CompletedProcess[str]:
    request = case.make(cli.root, cli.index)
    rows_before, home_before = cli.rows(), home_tree(cli.home)
    outside_before = tree(cli.root, skip=cli.home)
    result = cli.run("submit", request, env=case.env)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == case.exit_code, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("farm: error: "), result.stderr
    for word in case.words:
        assert re.search(word, result.stderr), f"{word!r} not in {result.stderr!r}"

    assert cli.rows() == rows_before
    assert home_tree(cli.home) == home_before
    tmp = cli.home / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    assert tree(cli.root, skip=cli.home) == outside_before
    for name in EVIL_NAMES:
        assert not list(cli.root.rglob(name)), name
    assert list(cli.cwd.iterdir()) == []
    assert cli.stored_good() == cli.good_digest
    return result


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_cli_bad_submission(cli: Cli, case: Bad) -> None:
    check_cli_refused(cli, case)


def test_cli_overlong_request(cli: Cli) -> None:
    check_cli_refused(cli, Bad("overlong", lambda _r, _i: "x" * 300 + " y", FarmError, 1,
                               ("neither an sdist file nor a requirement",)))


def test_cli_directory(cli: Cli) -> None:
    folder = cli.root / "inputs" / "a-folder"
    folder.mkdir(parents=True, exist_ok=True)
    result = check_cli_refused(cli, Bad("directory", lambda _r, _i: str(folder), FarmError, 1, ("a-folder",)))
    assert "no such file" not in result.stderr and "directory" in result.stderr


# farm recipe check --------------------------------------------------------------------------------


def _recipe_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(cwd / "farm-home")
    return subprocess.run([sys.executable, "-m", "farm.cli", "recipe", "check", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_recipe_check_builtin_recipes(tmp_path: Path) -> None:
    result = _recipe_cli(str(ROOT / "recipes"), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "recipes ok\n", "")


def test_recipe_check_lists_every_problem(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    alpha = folder / "alpha.toml"
    alpha.write_text('enviroment = { A = "1" }\ntest-command = 3\n')
    beta = folder / "beta.toml"
    beta.write_text('[[overrides]]\nenvironment = { A = "1" }\n\n[build-requires]\nadd = ["not a req !!"]\n')
    (folder / "gamma.toml").write_text('test-imports = ["gamma"]\n')

    result = _recipe_cli(str(folder), cwd=tmp_path)
    assert result.returncode == 3
    problems = [tuple(line.split(": ", 2)) for line in result.stdout.splitlines()]
    assert sorted((f, k) for f, k, _ in problems) == sorted([
        (str(alpha), "enviroment"),
        (str(alpha), "test-command"),
        (str(beta), "overrides[0].select"),
        (str(beta), "build-requires.add[0]"),
    ])
    messages = {(f, k): m for f, k, m in problems}
    assert "did you mean 'environment'" in messages[(str(alpha), "enviroment")]
    assert "valid string" in messages[(str(alpha), "test-command")]
    assert "required key is missing" in messages[(str(beta), "overrides[0].select")]
    assert "not a requirement" in messages[(str(beta), "build-requires.add[0]")]
    assert "gamma" not in result.stdout
    assert result.stderr == "4 problem(s)\n"
