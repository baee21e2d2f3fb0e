"""The `farm` command on bad submissions, recipe checks and a folder with no farm.

One FARM_HOME for the module, pointed at a static PEP 503 upstream on 127.0.0.1
(FARM_UPSTREAM_INDEX), where `farm submit good-1.0.tar.gz` succeeded first (the real command,
`python -m farm.cli` in a subprocess: two queued jobs, two build messages in the broker folder, no
worker running). Then each bad input of tests/test_submit.py (BAD) is submitted through the CLI's
`main` in this process (its stdout and stderr captured, the environment and cwd as a subprocess
would have them):
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
One bad sdist also goes through the real command in a subprocess (the smoke case: the entry point,
the exit status and stderr as a shell sees them).

Also: a request longer than a file name is an error message, not a traceback; a directory is
reported as a directory.

With `--server`: the same bad inputs through the remote backend against the farm's API (the app in
this process, on the same FARM_HOME) exit with the same code, the error class travelling with the
answer; the few the API refuses before the farm's submit (a file name that is no sdist name, a body
over the size limit) are listed with the code the API gives them.

No farm: `farm status`, `logs`, `cancel`, `show`, `find`, `gc` and `verify` in a folder without one
exit 11 (`NoFarm`) saying where they looked, and create nothing (no ./.farm/farm.db).

`farm recipe check`: exit 0 and "recipes ok" on the repository's recipes/ (the real command, in a
subprocess); exit 3 for a folder with two broken recipe files (and one good one), every problem
listed as `file: key path: message` and the count on stderr. `farm recipe docs --check`: the
generated files are up to date.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

import farm.cli
from farm.config import reset_settings
from farm.db.models import Source
from farm.db.session import session_scope
from farm.errors import FarmError, NoFarm, SdistError
from tests.helpers.indexes import StaticIndex, populate
from tests.helpers.intake import BAD, Bad, EVIL_NAMES, PLATFORMS, home_tree, rows, sha256_of, tree
from tests.helpers.sdists import make_good


ROOT = Path(__file__).resolve().parent.parent
MAIN_SETS = ("FARM_HOME", "FARM_SERVER_URL", "FARM_TOKEN")  # `main` sets these for --home, --server, --token


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    root: Path
    home: Path
    cwd: Path
    index: StaticIndex
    env: dict[str, str]
    good_digest: str

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """The real command: `python -m farm.cli` in a subprocess."""
        r = subprocess.run([sys.executable, "-m", "farm.cli", *args], env={**self.env, **(env or {})},
                           cwd=self.cwd, capture_output=True, text=True, timeout=120)
        return Result(r.returncode, r.stdout, r.stderr)

    def at_home(self) -> pytest.MonkeyPatch:
        mp = pytest.MonkeyPatch()
        mp.setenv("FARM_HOME", str(self.home))
        reset_settings()
        return mp

    def rows(self) -> dict[str, list[tuple]]:
        mp = self.at_home()
        try:
            return rows()
        finally:
            mp.undo()
            reset_settings()

    def stored_good(self) -> str:
        mp = self.at_home()
        try:
            with session_scope() as s:
                (source,) = s.scalars(select(Source).where(Source.name == "good")).all()
                assert source.sha256 == self.good_digest
                return sha256_of(self.home / "storage" / source.storage_key)
        finally:
            mp.undo()
            reset_settings()


def clean_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's environment as a subprocess started with `env` would have it: only its FARM_ variables."""
    for var in {*(v for v in os.environ if v.startswith("FARM_")), *MAIN_SETS}:
        monkeypatch.setenv(var, "")  # recorded, so that undoing also removes what `main` sets
        monkeypatch.delenv(var)
    for var, value in env.items():
        if var.startswith("FARM_"):
            monkeypatch.setenv(var, value)
    reset_settings()
    farm.cli._db_ready = False


@pytest.fixture
def in_process(cli: Cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Result]]:
    """`farm.cli.main` in this process, with the module's environment and cwd; its output captured."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        with pytest.MonkeyPatch.context() as mp:
            clean_env(mp, {**cli.env, **(env or {})})
            mp.chdir(cli.cwd)
            capsys.readouterr()
            try:
                code = farm.cli.main(list(args))
            finally:
                reset_settings()
                farm.cli._db_ready = False
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    yield run


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
        assert len(lines) == 1  # a pure-Python sdist: one job serves every platform (coordinator/plan.py)
        assert all(re.fullmatch(r"job \d+: good 1\.0 cp\d+-manylinux_\w+ queued", line) for line in lines), lines
        assert len(list((home / "broker" / "queue").glob("*.msg"))) == 1
        yield c
    finally:
        index.stop()


def test_good_submission_recorded(cli: Cli) -> None:
    r = cli.rows()
    assert [(s[1], s[2], s[3], s[7]) for s in r["source"]] == [(cli.good_digest, "good", "1.0", None)]
    assert len(r["submission"]) == 1 and r["submission"][0][1] == "file"
    assert len(r["job"]) == 1 and all(j[8] == "queued" for j in r["job"])
    assert cli.stored_good() == cli.good_digest


def check_cli_refused(cli: Cli, case: Bad, run: Callable[..., Result]) -> Result:
    request = case.make(cli.root, cli.index)
    rows_before, home_before = cli.rows(), home_tree(cli.home)
    outside_before = tree(cli.root, skip=cli.home)
    result = run("submit", request, env=case.env)

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
def test_cli_bad_submission(cli: Cli, case: Bad, in_process: Callable[..., Result]) -> None:
    check_cli_refused(cli, case, in_process)


def test_cli_bad_sdist_in_a_subprocess(cli: Cli) -> None:
    """The smoke case: the real command, as a shell runs it."""
    (case,) = [c for c in BAD if c.id == "random-bytes-tar-gz"]
    assert case.exit_code == SdistError.exit_code
    check_cli_refused(cli, case, cli.run)


def test_cli_overlong_request(cli: Cli, in_process: Callable[..., Result]) -> None:
    check_cli_refused(cli, Bad("overlong", lambda _r, _i: "x" * 300 + " y", FarmError, 1,
                               ("neither an sdist file nor a requirement",)), in_process)


def test_cli_directory(cli: Cli, in_process: Callable[..., Result]) -> None:
    folder = cli.root / "inputs" / "a-folder"
    folder.mkdir(parents=True, exist_ok=True)
    result = check_cli_refused(cli, Bad("directory", lambda _r, _i: str(folder), FarmError, 1, ("a-folder",)),
                               in_process)
    assert "no such file" not in result.stderr and "directory" in result.stderr


# The same with --server ---------------------------------------------------------------------------

# Refused by the API's routes before the farm's submit runs, in the route's own words: an HTTP error
# that is none of the farm's errors, exit 1. A file name that is no sdist name and a body over
# max_sdist_bytes are SdistError (4) locally; a path the client does not have is sent as a
# requirement, which the route refuses (1, as locally).
REFUSED_BY_THE_ROUTE = {"wheel": 1, "txt": 1, "too-big": 1, "missing-path": 1}


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_cli_bad_submission_with_server(cli: Cli, case: Bad, in_process: Callable[..., Result],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`farm --server URL submit BAD`: the API (this process, the module's FARM_HOME) answers with the
    error's class, and the CLI exits with the code it has locally."""
    from starlette.testclient import TestClient

    from farm.api.app import create_app
    from farm.cli.remote import ApiClient
    from farm.config import get_settings
    from farm.tokens import ensure_local_admin_token

    request = case.make(cli.root, cli.index)
    rows_before = cli.rows()
    with pytest.MonkeyPatch.context() as mp:
        clean_env(mp, {**cli.env, **case.env})
        token, _ = ensure_local_admin_token(cli.home)
        http = TestClient(create_app(get_settings()))
    monkeypatch.setattr("farm.cli.remote.client_from_settings", lambda: ApiClient("http://testserver", token, client=http))
    with http:
        result = in_process("--server", "http://testserver", "submit", request, env=case.env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "" and result.stderr.startswith("farm: error: "), result.stderr
    assert result.returncode == REFUSED_BY_THE_ROUTE.get(case.id, case.exit_code), result.stderr
    if case.id not in REFUSED_BY_THE_ROUTE:
        for word in case.words:
            assert re.search(word, result.stderr), f"{word!r} not in {result.stderr!r}"
    assert cli.rows() == rows_before
    assert cli.stored_good() == cli.good_digest


# No farm here -------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["logs", "1"], ["cancel", "1"],
                                  ["show", "good==1.0"], ["find", "--sha256", "0" * 64], ["gc", "--dry-run"],
                                  ["verify", "good==1.0"], ["yank", "good==1.0"]], ids=" ".join)
def test_no_farm_here(tmp_path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """Run in the wrong folder: says there is no farm and where it looked; creates nothing."""
    clean_env(monkeypatch, {})
    monkeypatch.chdir(tmp_path)
    try:
        code = farm.cli.main(args)
    finally:
        reset_settings()
        farm.cli._db_ready = False
    out = capsys.readouterr()
    assert code == NoFarm.exit_code == 11, out.err
    assert out.out == ""
    assert out.err.startswith(f"farm: error: no farm at {tmp_path / '.farm'}: ") and "--home" in out.err, out.err
    assert list(tmp_path.iterdir()) == []


def test_no_farm_in_a_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    r = subprocess.run([sys.executable, "-m", "farm.cli", "--home", str(tmp_path / "nowhere"), "status"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (11, "") and "no farm at" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


# farm recipe check / docs -------------------------------------------------------------------------


def _recipe_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(cwd / "farm-home")
    return subprocess.run([sys.executable, "-m", "farm.cli", "recipe", "check", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_recipe_check_builtin_recipes(tmp_path: Path) -> None:
    result = _recipe_cli(str(ROOT / "recipes"), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "recipes ok\n", "")


def test_recipe_check_lists_every_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    alpha = folder / "alpha.toml"
    alpha.write_text('enviroment = { A = "1" }\ntest-command = 3\n')
    beta = folder / "beta.toml"
    beta.write_text('[[overrides]]\nenvironment = { A = "1" }\n\n[build-requires]\nadd = ["not a req !!"]\n')
    (folder / "gamma.toml").write_text('test-imports = ["gamma"]\n')

    clean_env(monkeypatch, {"FARM_HOME": str(tmp_path / "farm-home")})
    monkeypatch.chdir(tmp_path)
    code = farm.cli.main(["recipe", "check", str(folder)])
    result = capsys.readouterr()
    assert code == 3
    problems = [tuple(line.split(": ", 2)) for line in result.out.splitlines()]
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
    assert "gamma" not in result.out
    assert result.err == "4 problem(s)\n"


def test_recipe_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`farm recipe docs` parses its own arguments (not the process's): it writes the generated files
    where it is told, and `--check` finds the repository's up to date and a stale copy out of date."""
    monkeypatch.setattr(sys, "argv", ["farm", "--unrelated", "argv"])
    assert farm.cli.main(["recipe", "docs", "--check", "--root", str(ROOT)]) == 0
    assert farm.cli.main(["recipe", "docs", "--root", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["docs/recipes.md", "recipes/recipe.schema.json"]
    assert (tmp_path / "docs/recipes.md").read_text() == (ROOT / "docs/recipes.md").read_text()
    (tmp_path / "docs/recipes.md").write_text("stale\n")
    assert farm.cli.main(["recipe", "docs", "--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
