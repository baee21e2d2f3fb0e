"""The page writer's caches (farm/index/simple.py): same bytes as rendering from scratch, and never a
stale answer when a page was replaced by someone else."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from farm.index import simple
from farm.index.simple import IndexFile, project_json, read_project, render_project_json, write_project


def _files(n: int) -> list[IndexFile]:
    return [IndexFile(filename=f"pkg-1.{i}-py3-none-any.whl", sha256=f"{i:064x}", size=i + 1,
                      requires_python=">=3.9" if i % 2 else None, metadata_sha256=f"{i + 7:064x}" if i % 3 else None,
                      yanked=("bad \"one\"" if i % 5 == 0 else i % 7 == 0),
                      upload_time=datetime(2024, 1, 1, tzinfo=timezone.utc) if i % 4 else None,
                      provenance_url=f"https://farm.example/files/pkg/pkg-1.{i}-py3-none-any.whl.provenance" if i % 2 else None)
            for i in range(40)]


def test_pieced_json_is_the_plain_serialization() -> None:
    files = _files(40)
    expected = json.dumps(project_json("pkg", files), separators=(",", ":")).encode()
    assert render_project_json("pkg", files) == expected
    assert render_project_json("pkg", files) == expected  # from the cache
    assert render_project_json("other", files) != expected  # the project is part of every URL
    assert json.loads(render_project_json("pkg", [])) == {"meta": {"api-version": "1.1"}, "name": "pkg", "files": [],
                                                          "versions": []}


def test_read_project_sees_a_page_replaced_behind_its_back(tmp_path: Path) -> None:
    files = _files(10)
    write_project(tmp_path, "pkg", files)
    first = read_project(tmp_path, "pkg")
    assert [f.filename for f in first] == sorted((f.filename for f in files), key=lambda n: int(n.split(".")[1].split("-")[0]))
    assert read_project(tmp_path, "pkg")[0] is first[0]  # cached: the same entries
    # Another process rewrites the page (new inode); this one must not answer from its cache.
    page = tmp_path / "simple" / "pkg" / "index.json"
    data = json.loads(page.read_bytes())
    data["files"] = data["files"][:3]
    tmp = page.with_name("other-writer.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(page)
    assert len(read_project(tmp_path, "pkg")) == 3
    simple._READ_CACHE.clear()
    assert len(read_project(tmp_path, "pkg")) == 3


def test_placed_files_are_world_readable(tmp_path: Path) -> None:
    """Storage writes 0600; a static web server running as another user must still read the index."""
    import os
    import stat

    from farm.index.simple import add_file
    from tests.helpers.wheels import make_wheel

    wheel = make_wheel(tmp_path / "src", "permdemo", "1.0")
    os.chmod(wheel, 0o600)
    add_file(tmp_path / "index", "permdemo", wheel)
    folder = tmp_path / "index" / "files" / "permdemo"
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
