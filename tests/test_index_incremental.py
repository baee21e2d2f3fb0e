"""Publishing lists a new file at the cost of that file, not of the project (`channels.list_new`).

Covered: the pages a run of publishes leaves are byte for byte the pages a full regeneration from the
database writes (every tree, both formats); a publish into a project of many files builds the entry
of the new file only (per tree), however many files the project holds; bad states it must not keep
or lose: a page that still lists a file the database has withdrawn is rewritten whole on the next
publish, and an entry the database does not know (a publish in flight) is kept; an upload is listed
only after its rows commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cli import main
from farm.db.session import session_scope
from farm.index import channels, simple
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel

TREES = ("", "dev")  # the trees a build lands in: the first channel (top level) and the virtual dev index


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


def _pages(index: Path, project: str) -> dict[str, bytes]:
    return {f"{t or 'staging'}/{fmt}": (index / t / "simple" / project / f"index.{fmt}").read_bytes()
            for t in TREES for fmt in ("html", "json")}


def test_incremental_pages_equal_a_full_regeneration(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    for v in ("1.0", "1.1", "2.0rc1", "0.9"):
        publish_wheel(settings, make_wheel(src, "incdemo", v, requires_python=">=3.8"), version=v)
    before = _pages(settings.index, "incdemo")
    assert all(b"incdemo-0.9-py3-none-any.whl" in page and b"incdemo-2.0rc1" in page for page in before.values())
    with session_scope() as s:
        channels.regenerate(s, settings, "incdemo")
    assert _pages(settings.index, "incdemo") == before


def test_a_publish_builds_only_the_new_entry(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    for i in range(30):
        publish_wheel(settings, make_wheel(src, "incbig", f"1.{i}"), version=f"1.{i}")
    built: list[str] = []
    real = channels._entry

    def counting(session, lay, tree, project, row):  # type: ignore[no-untyped-def]
        built.append(f"{tree}:{row.artifact.filename}")
        return real(session, lay, tree, project, row)

    monkeypatch.setattr(channels, "_entry", counting)
    publish_wheel(settings, make_wheel(src, "incbig", "2.0"), version="2.0")
    assert sorted(built) == ["dev:incbig-2.0-py3-none-any.whl", "staging:incbig-2.0-py3-none-any.whl"]
    assert len(simple.read_project(settings.index, "incbig")) == 31
    assert len(simple.read_project(settings.index / "dev", "incbig")) == 31


def test_a_stale_entry_is_not_kept_and_an_unknown_one_is_not_lost(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.db.models import Artifact, utcnow

    src = tmp_path / "src"
    gone = publish_wheel(settings, make_wheel(src, "incstale", "1.0"), version="1.0")
    with session_scope() as s:  # withdrawn in the database, its page not rewritten (a crash in between)
        s.get(Artifact, gone).removed_at = utcnow()
    inflight = make_wheel(tmp_path / "inflight", "incstale", "0.5")
    simple.publish(settings.index, "incstale", inflight)  # listed, no row yet: a publish still committing
    assert "incstale-1.0-py3-none-any.whl" in {f.filename for f in simple.read_project(settings.index, "incstale")}
    publish_wheel(settings, make_wheel(src, "incstale", "2.0"), version="2.0")
    for tree in (settings.index, settings.index / "dev"):
        listed = {f.filename for f in simple.read_project(tree, "incstale")}
        assert "incstale-1.0-py3-none-any.whl" not in listed and "incstale-2.0-py3-none-any.whl" in listed
    assert inflight.name in {f.filename for f in simple.read_project(settings.index, "incstale")}


def test_an_upload_is_listed_only_after_its_rows_commit(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.coordinator.uploaded import publish_upload

    wheel = make_wheel(tmp_path / "up", "incupload", "1.0")

    class Stop(Exception):
        pass

    with pytest.raises(Stop), session_scope() as s:
        publish_upload(s, settings, wheel, channel="staging", uploader="tester")
        assert simple.read_project(settings.index, "incupload") == []  # placed, not listed
        raise Stop  # the transaction rolls back: nothing may be listed
    assert simple.read_project(settings.index, "incupload") == []
    with session_scope() as s:
        publish_upload(s, settings, wheel, channel="stable", uploader="tester")
    for tree in ("", "dev", "stable", "prod"):
        assert [f.filename for f in simple.read_project(settings.index / tree, "incupload")] == [wheel.name], tree
