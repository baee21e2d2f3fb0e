"""`farm.index.doctor`: the index trees compared with the database, and repaired.

Each test leaves one kind of damage that a crash or a hand can leave (a publish killed before its row
committed, a page rewritten without a live file, a served file changed on disk, a file deleted, a
temporary file of an interrupted write) and checks that `examine` names it, that `fix=True` repairs
it, and that a second pass finds nothing. Files younger than the grace period are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from farm.cli import main
from farm.db.session import session_scope
from farm.index import doctor, simple
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


def _examine(settings, **kw):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return doctor.examine(session, settings, **kw)


def _listed(tree: Path, project: str) -> dict[str, str]:
    return {f.filename: f.sha256 for f in simple.read_project(tree, project)}



def test_a_healthy_farm_has_no_findings(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    publish_wheel(settings, make_wheel(tmp_path / "w", "docok", "1.0"), version="1.0")
    assert _examine(settings, grace=0, deep=True) == []


def test_a_publish_that_never_committed_is_removed_from_pages_and_folders(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A coordinator killed after writing the page but before committing the row: the listed wheel
    has no row. The doctor takes it off the page and removes its files; the live wheel stays."""
    publish_wheel(settings, make_wheel(tmp_path / "w", "docorph", "1.0"), version="1.0")
    ghost = make_wheel(tmp_path / "g", "docorph", "2.0")
    simple.publish(settings.index, "docorph", ghost)  # files and page, no database row
    assert set(_listed(settings.index, "docorph")) == {"docorph-1.0-py3-none-any.whl", ghost.name}

    young = _examine(settings, fix=True)  # within the grace period: a publish may still be committing
    assert young == []
    assert ghost.name in _listed(settings.index, "docorph")

    later = time.time() + doctor.DEFAULT_GRACE + 1
    found = _examine(settings, fix=True, now=later)
    kinds = sorted((f.kind, f.path) for f in found)
    assert ("orphan-listing", "simple/docorph/") in kinds
    assert ("orphan-file", f"files/docorph/{ghost.name}") in kinds
    assert ("orphan-file", f"files/docorph/{ghost.name}.metadata") in kinds
    assert all(f.fixed for f in found)
    assert set(_listed(settings.index, "docorph")) == {"docorph-1.0-py3-none-any.whl"}
    assert not (settings.index / "files" / "docorph" / ghost.name).exists()
    assert (settings.index / "files" / "docorph" / "docorph-1.0-py3-none-any.whl").is_file()
    assert _examine(settings, now=later, deep=True) == []


def test_a_live_wheel_missing_from_its_page_is_listed_again(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A row committed whose page was never written (a crash after commit), in every tree that lists it."""
    wheel = make_wheel(tmp_path / "w", "docmiss", "1.0")
    publish_wheel(settings, wheel, version="1.0")
    for tree in (settings.index, settings.index / "dev"):
        simple.write_project(tree, "docmiss", [])
    found = _examine(settings)
    assert {(f.kind, f.tree) for f in found} == {("missing-listing", "staging"), ("missing-listing", "dev")}
    assert not any(f.fixed for f in found)
    assert _listed(settings.index, "docmiss") == {}  # examining alone changes nothing
    _examine(settings, fix=True)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert _listed(settings.index, "docmiss") == {wheel.name: sha}
    assert _listed(settings.index / "dev", "docmiss") == {wheel.name: sha}
    assert _examine(settings) == []


def test_a_changed_or_deleted_served_file_gets_the_recorded_bytes_back(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Served bytes that differ from the record (found with `deep`), and a deleted metadata file."""
    wheel = make_wheel(tmp_path / "w", "docchg", "1.0")
    publish_wheel(settings, wheel, version="1.0")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    served = settings.index / "files" / "docchg" / wheel.name
    served.unlink()  # break the hard link to storage, then change the served copy only
    served.write_bytes(b"not the published wheel")
    (settings.index / "dev" / "files" / "docchg" / f"{wheel.name}.metadata").unlink()

    assert [f.kind for f in _examine(settings) if f.tree == "staging"] == []  # size/hash not read without deep
    found = _examine(settings, deep=True, fix=True)
    assert {(f.kind, f.tree) for f in found} == {("changed-file", "staging"), ("missing-file", "dev")}
    assert hashlib.sha256(served.read_bytes()).hexdigest() == sha
    assert (settings.index / "dev" / "files" / "docchg" / f"{wheel.name}.metadata").is_file()
    assert _examine(settings, deep=True) == []


def test_temporary_files_of_interrupted_writes_are_removed_when_old(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    publish_wheel(settings, make_wheel(tmp_path / "w", "doctmp", "1.0"), version="1.0")
    leftovers = [settings.index / "simple" / "doctmp" / ".index.json.abc123.tmp",
                 settings.index / "stable" / "files" / ".x.whl.0f0f.tmp",
                 settings.storage / "sdists" / ".tmp-k2j3"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    assert _examine(settings, fix=True) == []  # young: a writer may be busy with them
    found = _examine(settings, fix=True, now=time.time() + doctor.DEFAULT_GRACE + 1)
    assert sorted(f.kind for f in found) == ["temp-file"] * 3
    assert not any(p.exists() for p in leftovers)


def test_a_project_list_that_disagrees_with_the_pages_is_rewritten(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    publish_wheel(settings, make_wheel(tmp_path / "w", "docroot", "1.0"), version="1.0")
    simple.write_root(settings.index, ["ghostproject"])
    found = _examine(settings, fix=True)
    assert {(f.kind, f.detail.split(":")[0]) for f in found} == {
        ("missing-listing", "project docroot"), ("stale-listing", "project ghostproject")}
    assert simple.list_projects(settings.index) == ["docroot"]
    root = json.loads((settings.index / "simple" / "index.json").read_bytes())
    assert [p["name"] for p in root["projects"]] == ["docroot"]
    assert os.path.isfile(settings.index / "simple" / "index.html")


def test_farm_doctor_reports_then_fixes(settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "w", "doccli", "1.0")
    publish_wheel(settings, wheel, version="1.0")
    simple.write_project(settings.index, "doccli", [])
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "missing-listing" in out and "1 not fixed (run with --fix)" in out
    assert main(["doctor", "--fix", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["fixed"] is True
    assert main(["doctor", "--deep"]) == 0
    assert "the index agrees with the database" in capsys.readouterr().out
