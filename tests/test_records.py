"""Records: `farm find --sha256`, `farm show NAME==VERSION`, and `farm gc` with its retention policy,
which never deletes what a channel still serves."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from pypi_simple import ProjectPage

from farm.cli import main
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


def _farm(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_find_by_sha256_gives_the_artifact_and_its_build(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "src", "recdemo", "1.0", requires=("six>=1",))
    publish_wheel(settings, wheel, version="1.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    code, out, err = _farm("find", "--sha256", digest, "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["kind"] == "wheel" and rec["filename"] == wheel.name and rec["sha256"] == digest
    assert rec["requires_dist"] == ["six>=1"] and rec["channels"][0]["channel"] == "staging"
    assert rec["provenance"]["signed"] is True and rec["verification"]["passed"] is True
    build = rec["build"]
    assert build["platform"] == "linux-x86_64" and build["python"] == "cp311" and build["state"] == "succeeded"
    assert build["sdist"] == "recdemo-1.0.tar.gz" and len(build["sdist_sha256"]) == 64
    # A prefix is enough; text output by default; the sdist by its digest too.
    code, out, _ = _farm("find", "--sha256", digest[:12])
    assert code == 0 and f"filename: {wheel.name}" in out and "build:" in out
    code, out, _ = _farm("find", "--sha256", build["sdist_sha256"], "--json")
    assert json.loads(out)["kind"] == "sdist" and json.loads(out)["jobs"][0]["wheels"] == [wheel.name]
    assert _farm("find", "--sha256", "0" * 64)[0] == 7
    assert _farm("find", "--sha256", "xyz")[0] == 1


def test_show_lists_wheels_inputs_jobs_and_tests(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    publish_wheel(settings, make_wheel(src, "recshow", "2.0", tag="cp311-cp311-manylinux_2_17_x86_64"), version="2.0")
    publish_wheel(settings, make_wheel(src, "recshow", "2.0", tag="cp312-cp312-manylinux_2_17_x86_64"), version="2.0",
                  python="cp312")
    assert _farm("promote", "recshow==2.0", "--to", "stable")[0] == 0
    code, out, err = _farm("show", "RecShow==2.0", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert len(data["wheels"]) == 2 and len(data["jobs"]) == 2 and len(data["inputs"]) == 1
    assert {c["channel"] for w in data["wheels"] for c in w["channels"]} == {"staging", "stable"}
    assert all(w["verification"]["passed"] for w in data["wheels"])
    assert {j["python"] for j in data["jobs"]} == {"cp311", "cp312"}
    code, out, _ = _farm("show", "recshow==2.0")
    assert "wheels:" in out and "inputs:" in out and "passed: True" in out
    assert _farm("show", "recshow==9")[0] == 7


def _served(settings) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    """Per tree: the files its pages list; and assert every one of them exists, with its sidecars."""
    from farm.index.channels import layout

    lay = layout(settings)
    out = {}
    for t in lay.trees():
        tree = lay.tree(t)
        names = set()
        for project in (p.name for p in (tree / "simple").iterdir() if p.is_dir()):
            page = ProjectPage.from_json_data(json.loads((tree / "simple" / project / "index.json").read_bytes()),
                                              base_url="http://x/simple/p/")
            for pkg in page.packages:
                folder = tree / "files" / project
                assert (folder / pkg.filename).is_file() and (folder / f"{pkg.filename}.metadata").is_file()
                assert (folder / f"{pkg.filename}.provenance").is_file()
                names.add(pkg.filename)
        out[t] = names
    return out


def test_gc_keeps_n_versions_and_never_deletes_what_a_channel_serves(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    for v in ("1.0", "2.0", "3.0", "4.0"):
        publish_wheel(settings, make_wheel(src, "recgc", v), version=v)
    assert _farm("promote", "recgc==1.0", "--to", "stable")[0] == 0
    before = _served(settings)
    assert len(before["staging"]) == 4 and before["stable"] == {"recgc-1.0-py3-none-any.whl"}
    # A failed job's leftovers in storage, old enough.
    failed_log = settings.storage / "jobs" / "999" / "attempt-1.log"
    failed_log.parent.mkdir(parents=True)
    failed_log.write_text("old log of a job the database does not know\n")
    os.utime(failed_log, (1, 1))
    # Dry run: nothing changes.
    code, out, _ = _farm("gc", "--keep", "2", "--min-age-days", "0", "--dry-run", "--json")
    assert code == 0
    dry = json.loads(out)
    assert sorted(p["filename"] for p in dry["pruned"]) == ["recgc-1.0-py3-none-any.whl", "recgc-2.0-py3-none-any.whl"]
    assert _served(settings) == before and failed_log.exists()
    # With the default age (14 days) entries are pruned but young files stay.
    code, out, _ = _farm("gc", "--keep", "2", "--json")
    report = json.loads(out)
    assert len(report["pruned"]) == 2 and report["removed_artifacts"] == [] and failed_log.exists() is False
    assert _served(settings)["staging"] == {"recgc-3.0-py3-none-any.whl", "recgc-4.0-py3-none-any.whl"}
    assert (settings.index / "files" / "recgc" / "recgc-2.0-py3-none-any.whl").is_file()  # young: kept for now
    # Old enough: 2.0 (in no channel) is removed everywhere; 1.0 stays, stable still serves it.
    code, out, _ = _farm("gc", "--keep", "2", "--min-age-days", "0", "--json")
    report = json.loads(out)
    assert report["removed_artifacts"] == ["recgc-2.0-py3-none-any.whl"]
    after = _served(settings)
    assert after["staging"] == {"recgc-3.0-py3-none-any.whl", "recgc-4.0-py3-none-any.whl"}
    assert after["stable"] == after["prod"] == {"recgc-1.0-py3-none-any.whl"}
    assert after["dev"] == {"recgc-1.0-py3-none-any.whl", "recgc-3.0-py3-none-any.whl", "recgc-4.0-py3-none-any.whl"}
    assert not list(settings.index.rglob("recgc-2.0-*")) and not list(settings.storage.rglob("recgc-2.0-*"))
    assert list(settings.storage.rglob("recgc-1.0-*.whl"))  # stable's stored copy stays
    assert not (settings.index / "files" / "recgc" / "recgc-1.0-py3-none-any.whl").exists()  # staging's link went
    # The record survives: find and show still answer, and say it was removed.
    from farm.db.models import Artifact
    from farm.db.session import session_scope

    with session_scope() as s:
        sha = s.query(Artifact).filter_by(filename="recgc-2.0-py3-none-any.whl").one().sha256
    rec = json.loads(_farm("find", "--sha256", sha, "--json")[1])
    assert rec["removed_at"] is not None and rec["channels"] == []
    # Nothing left to do the second time.
    report = json.loads(_farm("gc", "--keep", "2", "--min-age-days", "0", "--json")[1])
    assert report["pruned"] == report["removed_artifacts"] == report["deleted_files"] == []
    # farm verify still passes for what is served.
    code, out, _ = _farm("verify", "recgc==1.0", "--offline")
    assert code == 0, out


def test_gc_logs_older_than_removes_old_logs_of_served_wheels_only(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Log retention: `farm gc --logs-older-than DAYS` removes the build logs of ended jobs older than
    DAYS even though their wheels are served; younger logs and the wheels themselves stay."""
    from farm.db.models import Artifact
    from farm.db.session import session_scope
    from farm.storage import log_key

    publish_wheel(settings, make_wheel(tmp_path / "w", "reclog", "1.0"), version="1.0")
    publish_wheel(settings, make_wheel(tmp_path / "w", "reclog", "2.0"), version="2.0")
    with session_scope() as s:
        jobs = {a.version: a.job_id for a in s.query(Artifact).filter_by(name="reclog")}
    logs = {v: settings.storage / log_key(j, 1) for v, j in jobs.items()}
    for v, path in logs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"build log of {v}\n")
    old = 1_000_000  # 1970: older than any retention
    os.utime(logs["1.0"], (old, old))
    report = json.loads(_farm("gc", "--min-age-days", "0", "--json")[1])
    assert report["deleted_files"] == [] and all(p.exists() for p in logs.values())  # kept by default
    report = json.loads(_farm("gc", "--min-age-days", "0", "--logs-older-than", "30", "--json")[1])
    assert report["deleted_files"] == [str(logs["1.0"])]
    assert not logs["1.0"].exists() and logs["2.0"].exists()
    assert len(_served(settings)["staging"]) == 2  # the wheels stay
