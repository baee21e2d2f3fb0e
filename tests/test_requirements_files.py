"""Requirements files read as pip reads them (farm/cli/requirements.py) and submitted as one
submission (farm/coordinator/submit.py `submit_many`), locally and through the API.

Bad inputs covered: a --hash that does not match the upstream sdist (refused, nothing recorded),
a --hash of another algorithm, a malformed digest, an editable line, a URL requirement, an unknown
option, a missing -r file, a cycle of -r, conflicting lines, a file whose every line a marker excludes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from farm.cli.requirements import Item, logical_lines, read
from farm.errors import UpstreamError, UsageError
from tests.helpers.indexes import StaticIndex
from tests.helpers.sdists import make_good


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_continuations_comments_and_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "r.txt", "# header\n\nfoo==1.0 \\\n    --hash=sha256:" + "a" * 64 + "  # why\n"
                  "bar>=2 \\\n  ,<3\n# a comment ends nothing but itself\nbaz  # trailing\n\\\n")
    assert [(line.number, line.text) for line in logical_lines(path)] == [
        (3, "foo==1.0     --hash=sha256:" + "a" * 64), (5, "bar>=2   ,<3"), (8, "baz")]
    items = read(path).items
    assert [i.request for i in items] == ["foo==1.0", "bar<3,>=2", "baz"]
    assert items[0].sha256 == frozenset({"a" * 64}) and items[0].origin == f"{path}:3"
    assert items[1].sha256 == frozenset()


def test_includes_constraints_extras_and_markers_are_kept(tmp_path: Path) -> None:
    _write(tmp_path / "sub", "more.txt", "-c ../constraints.txt\nqux[socks, Extra2]>=1 ; python_version >= '3.8'\n")
    _write(tmp_path, "constraints.txt", "qux<2 --hash sha256:" + "b" * 64 + "\nonly-constrained==9\n")
    path = _write(tmp_path, "r.txt", "--index-url https://example.invalid/simple\n-r sub/more.txt\nfoo==1\n"
                  "./foo-1.0.tar.gz --hash=sha256:" + "c" * 64 + "\n")
    found = read(path)
    by_name = {i.request.split("[")[0].split("=")[0].split(";")[0]: i for i in found.items}
    sdist_path = str(tmp_path / "foo-1.0.tar.gz")  # relative to the file that names it
    assert set(by_name) == {"qux", "foo", sdist_path}  # the constraint-only name is not submitted
    qux = by_name["qux"]
    assert qux.request == 'qux[extra2,socks]<2,>=1; python_version >= "3.8"'
    assert qux.sha256 == frozenset({"b" * 64})
    sdist = by_name[sdist_path]
    assert sdist.from_file and sdist.sha256 == frozenset({"c" * 64})
    assert found.ignored and "--index-url" in found.ignored[0]


@pytest.mark.parametrize(("text", "message"), [
    ("foo==1 --hash=md5:abc\n", "only sha256 digests can be checked"),
    ("foo==1 --hash=sha256:XYZ\n", "not a sha256 digest"),
    ("-e ./src\n", "editable"),
    ("foo @ https://example.invalid/foo-1.tar.gz\n", "a URL requirement"),
    ("--global-option=x\n", "an option the farm does not take"),
    ("foo==1 --no-deps\n", "the only option a requirement line may have here is --hash"),
    ("-r missing.txt\n", "no such requirements file"),
    ("-r r.txt\n", "a cycle"),
    ("foo==1\nfoo==2\n", "asked for again"),
    ("foo=1\n", "is not a requirement"),
])
def test_bad_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, "r.txt", text)
    with pytest.raises(UsageError, match=message) as err:
        read(path)
    assert str(path) in str(err.value)


# One submission, against a real upstream index over HTTP --------------------------------------


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from farm.config import reset_settings

    index = StaticIndex(tmp_path / "upstream")
    for name, version in (("lib", "1.0"), ("lib", "1.1"), ("other", "2.0")):
        sdist = make_good(tmp_path / "upstream-build", name, version)
        index.add(name, sdist.name, sdist.read_bytes())
    monkeypatch.setenv("FARM_UPSTREAM_INDEX", index.url)
    reset_settings()
    yield index
    index.stop()


def _submissions() -> int:
    """Submissions and sources recorded."""
    from sqlalchemy import func, select

    from farm.db.models import Source, Submission
    from farm.db.session import session_scope

    with session_scope() as s:
        return (s.scalar(select(func.count()).select_from(Submission)) or 0) + \
            (s.scalar(select(func.count()).select_from(Source)) or 0)


def _sha(index: StaticIndex, filename: str) -> str:
    return hashlib.sha256((index.root / "files" / filename).read_bytes()).hexdigest()


def _submission_rows() -> list[tuple[int, str, str, set[str]]]:
    from sqlalchemy import select

    from farm.db.models import Submission
    from farm.db.session import session_scope

    with session_scope() as s:
        return [(sub.id, sub.kind, sub.request, {j.source.name for j in sub.jobs})
                for sub in s.scalars(select(Submission).order_by(Submission.id))]


def test_a_file_is_one_submission_with_hashes_checked(farm_home: Path, upstream: StaticIndex, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from farm.cli import main

    assert main(["init"]) == 0
    good = _sha(upstream, "lib-1.0.tar.gz")
    req = _write(tmp_path / "req", "requirements.txt",
                 f"lib==1.0 \\\n    --hash=sha256:{good}\n-c constraints.txt\nother\n"
                 "never ; sys_platform == 'nonexistent-os'\n")
    _write(tmp_path / "req", "constraints.txt", "other<3\n")
    capsys.readouterr()
    assert main(["submit", "-r", str(req)]) == 0
    out = capsys.readouterr().out
    rows = _submission_rows()
    assert len(rows) == 1
    sub_id, kind, request, names = rows[0]
    assert (kind, request, names) == ("requirements", str(req), {"lib", "other"})
    assert out.startswith(f"submission {sub_id}: {req}: 2 sdist(s)\n")
    assert "skipped" in out and "never" in out  # the marker admits no target of this farm

    # a digest that is not the upstream sdist's: refused with the reason, nothing recorded
    before = _submissions()
    bad = _write(tmp_path / "bad", "requirements.txt", f"other==2.0\nlib==1.1 --hash=sha256:{good}\n")
    assert main(["submit", "-r", str(bad)]) == UpstreamError.exit_code
    err = capsys.readouterr().err
    assert f"{bad}:2: lib==1.1: the sdist's sha256 is {_sha(upstream, 'lib-1.1.tar.gz')}" in err
    assert "not among the --hash values" in err
    assert _submissions() == before


def test_a_hash_is_checked_for_a_known_release_and_a_local_sdist(farm_home: Path, upstream: StaticIndex,
                                                                  tmp_path: Path) -> None:
    from farm.config import get_settings
    from farm.coordinator.submit import submit, submit_many
    from farm.cli import main
    from farm.errors import SdistError

    assert main(["init"]) == 0
    submit("lib==1.0", settings=get_settings())  # now known: the hash is checked without asking upstream
    with pytest.raises(UpstreamError, match="not among the --hash values"):
        submit_many([Item(request="lib==1.0", from_file=False, sha256=frozenset({"0" * 64}), origin="r.txt:1")],
                    settings=get_settings(), request="r.txt")
    sdist = make_good(tmp_path / "local", "mine", "3.0")
    with pytest.raises(SdistError, match="r.txt:7: .*not among the --hash values"):
        submit_many([Item(request=str(sdist), from_file=True, sha256=frozenset({"0" * 64}), origin="r.txt:7")],
                    settings=get_settings(), request="r.txt")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    done = submit_many([Item(request=str(sdist), from_file=True, sha256=frozenset({digest}), origin="r.txt:7")],
                       settings=get_settings(), request="r.txt")
    assert [s.name for s in done.sources] == ["mine"]


def test_every_line_excluded_by_markers_is_nothing_to_submit(farm_home: Path, upstream: StaticIndex,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from farm.cli import main

    assert main(["init"]) == 0
    req = _write(tmp_path, "r.txt", "lib==1.0 ; python_version < '3'\n")
    assert main(["submit", "-r", str(req)]) == 1
    assert "nothing to submit (1 line(s) skipped for their markers)" in capsys.readouterr().err
    assert _submission_rows() == []


def test_through_the_api_one_submission(farm_home: Path, upstream: StaticIndex, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from farm.api.app import create_app
    from farm.cli import main
    from farm.cli.remote import ApiClient, RemoteBackend
    from farm.config import get_settings
    from farm.tokens import ensure_local_admin_token

    assert main(["init"]) == 0
    settings = get_settings()
    token, _ = ensure_local_admin_token(settings.home)
    req = _write(tmp_path, "r.txt", f"lib==1.0 --hash=sha256:{_sha(upstream, 'lib-1.0.tar.gz')}\nother==2.0\n")
    with TestClient(create_app(settings)) as http:
        backend = RemoteBackend(ApiClient("http://testserver", token, client=http))
        with pytest.raises(UpstreamError, match="r.txt:1: .*not among the --hash values"):
            backend.submit_requirements("r.txt", [Item(request="lib==1.0", from_file=False, origin="r.txt:1",
                                                       sha256=frozenset({"0" * 64}))], priority=0)
        with pytest.raises(UsageError, match="not sent to a --server"):
            backend.submit_requirements("r.txt", [Item(request="x.tar.gz", from_file=True, origin="r.txt:1")],
                                        priority=0)
        view = backend.submit_requirements("r.txt", read(req).items, priority=0)
    assert [s["name"] for s in view["sources"]] == ["lib", "other"]
    assert {s["submission_id"] for s in view["sources"]} == {view["submission_id"]}
    assert [(k, names) for _, k, _, names in _submission_rows()] == [("requirements", {"lib", "other"})]


def test_server_refuses_sdist_paths_and_target_options_before_sending(farm_home: Path, upstream: StaticIndex,
                                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`farm --server URL submit -r FILE` through the real CLI and a real HTTP server: a file that
    names a local sdist, and `--platform` or `--python` with a file (the API's requirements body has
    no place for them), are refused with exit 2 and the reason (the file and line), before anything
    is sent; the same file without them is one submission on the server."""
    from farm.api.app import create_app
    from farm.cli import main
    from farm.config import get_settings
    from farm.errors import EXIT_USAGE
    from farm.tokens import ensure_local_admin_token
    from tests.helpers.indexes import _Server

    for var in ("FARM_SERVER_URL", "FARM_TOKEN"):  # --server and --token set them for the process: undone after
        monkeypatch.setenv(var, "")  # (recorded as unset before, so the teardown removes them)
        monkeypatch.delenv(var)
    assert main(["init"]) == 0
    settings = get_settings()
    token, _ = ensure_local_admin_token(settings.home)
    make_good(tmp_path / "req" / "dist", "localpkg", "1.0")
    with_file = _write(tmp_path / "req", "files.txt", "lib==1.0\ndist/localpkg-1.0.tar.gz\n")
    pins = _write(tmp_path / "req", "pins.txt", "lib==1.0\nother==2.0\n")
    capsys.readouterr()
    with _Server(create_app(settings)) as server:
        cli = ["--server", f"http://127.0.0.1:{server.port}", "--token", token, "submit"]
        assert main([*cli, "-r", str(with_file)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"{with_file}:2" in err and "not sent to a --server" in err and "uploaded" in err
        for option in (["--platform", "linux-x86_64"], ["--python", "3.11"]):
            assert main([*cli, *option, "-r", str(pins)]) == EXIT_USAGE
            assert "--platform and --python are not sent with a requirements file" in capsys.readouterr().err
        assert not [p for p in server.paths if p.startswith("/api/submissions")]
        assert _submissions() == 0
        assert main([*cli, "-r", str(pins)]) == 0
        assert server.paths.count("/api/submissions/requirements") == 1
    assert [(k, names) for _, k, _, names in _submission_rows()] == [("requirements", {"lib", "other"})]


def test_extras_bring_their_requirements_into_the_submission(farm_home: Path, upstream: StaticIndex, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`withextra[fast]==1.0`: the requirements its extra adds (from the sdist's final PEP 643
    metadata) are built in the same submission, the newest matching release; a requirement of
    another extra, one whose marker no target of the farm admits, and one without an extra (the
    build's verification pulls that in) are not added. An sdist whose Requires-Dist is dynamic (or
    metadata older than 2.2) adds nothing and says why."""
    from farm.cli import main
    from tests.helpers.sdists import sdist_members, write_tar

    def meta(name: str, version: str, version_line: str, *extra: str) -> bytes:
        return "\n".join([f"Metadata-Version: {version_line}", f"Name: {name}", f"Version: {version}",
                          "Requires-Python: >=3.9", *extra]).encode() + b"\n\nA project.\n"

    build = tmp_path / "upstream-build"
    for name, version_line, lines in (
            ("withextra", "2.2", ["Provides-Extra: fast", "Provides-Extra: slow", 'Requires-Dist: lib>=1.1; extra == "fast"',
                                  'Requires-Dist: other; extra == "slow"',
                                  'Requires-Dist: nosuch; extra == "fast" and python_version < "3"',
                                  "Requires-Dist: plain>=1"]),
            ("dynextra", "2.2", ["Dynamic: Requires-Dist", 'Requires-Dist: other; extra == "fast"']),
            ("oldextra", "2.1", ['Requires-Dist: other; extra == "fast"'])):
        sdist = write_tar(build / f"{name}-1.0.tar.gz",
                          sdist_members(f"{name}-1.0", name, "1.0", meta=meta(name, "1.0", version_line, *lines)))
        upstream.add(name, sdist.name, sdist.read_bytes())
    assert main(["init"]) == 0
    capsys.readouterr()
    req = _write(tmp_path / "req", "requirements.txt", "withextra[fast]==1.0\n")
    assert main(["submit", "-r", str(req)]) == 0
    assert [(k, names) for _, k, _, names in _submission_rows()] == [("requirements", {"withextra", "lib"})]
    from farm.db.models import Source
    from farm.db.session import session_scope

    with session_scope() as s:
        assert s.query(Source).filter_by(name="lib").one().version == "1.1"  # the newest matching >=1.1
    req = _write(tmp_path / "req", "dyn.txt", "dynextra[fast]==1.0\noldextra[fast]==1.0\n")
    assert main(["submit", "-r", str(req)]) == 0
    err = capsys.readouterr().err
    assert "dynextra 1.0: its sdist's metadata does not declare its requirements as final" in err
    assert "oldextra 1.0: its sdist's metadata" in err
    assert [names for _, _, _, names in _submission_rows()][1] == {"dynextra", "oldextra"}
