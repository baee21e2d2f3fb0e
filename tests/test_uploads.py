"""Uploads with the legacy upload API, by the real clients: twine and `uv publish` (installed by the
tests into cached venvs, tests/test_clients.py), against the farm's API served by uvicorn on
127.0.0.1 (a SQLite farm of this test).

A pure wheel uploaded by each client is published ("uploaded by" the token, a signed statement
saying it was not built here) and pip installs it from the channel's index; an sdist becomes a
submission with jobs. Bad uploads are refused, each with its reason and nothing stored: a wrong
METADATA name, a bad RECORD hash, an invalid tag, a taken file name (400 `File already exists`), a
compiled wheel for a platform the farm builds; tokens: none (401 with `WWW-Authenticate: Basic`),
a read token (403), a token for another channel (403).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx

from farm.util.cmd import run
from tests.helpers.clients import _env, pip_venv, tool_venv
from tests.helpers.sdists import make_good
from tests.helpers.uploads import Farm, farm, form_upload  # noqa: F401 - fixtures
from tests.helpers.wheels import _record_hash, make_wheel


def stored(home: Path) -> list[str]:
    """Every file below the farm's storage and index `files` folders (what an upload could leave)."""
    return sorted(str(p.relative_to(home)) for root in ("storage", "index/files") if (home / root).exists()
                  for p in (home / root).rglob("*") if p.is_file())


def rewrite(wheel: Path, out: Path, change: dict[str, bytes], *, fix_record: bool) -> Path:
    """A copy of `wheel` with members replaced; RECORD rewritten to match when `fix_record`."""
    with zipfile.ZipFile(wheel) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(change)
    if fix_record:
        record = next(n for n in members if n.endswith("/RECORD"))
        members[record] = ("".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in members.items() if p != record)
                           + f"{record},,\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    return out


def test_twine_and_uv_publish_a_pure_wheel_then_pip_installs_it(farm: Farm, tmp_path: Path) -> None:
    from farm.db.models import Artifact
    from farm.db.session import session_scope

    twine = tool_venv("twine", "twine") / "twine"
    uv = tool_venv("uv", "uv") / "uv"
    env = _env(tmp_path)
    w1 = make_wheel(tmp_path / "dist1", "updemo", "1.0")
    w2 = make_wheel(tmp_path / "dist2", "updemo", "2.0")
    r = run([twine, "upload", "--non-interactive", "--disable-progress-bar", "--repository-url",
             farm.url("/staging/legacy/"), "-u", "__token__", "-p", farm.tokens["upload"], w1],
            env=env, timeout=300, check=False)
    assert r.returncode == 0, r.output
    r = run([uv, "publish", "--publish-url", farm.url("/staging/legacy/"), "--username", "__token__",
             "--password", farm.tokens["upload"], w2], env=env, timeout=300, check=False)
    assert r.returncode == 0, r.output
    with session_scope() as s:
        arts = {a.filename: a for a in s.query(Artifact).all()}
        assert set(arts) == {w1.name, w2.name}
        a = arts[w1.name]
        assert a.job_id is None and a.uploaded_by == "uploader" and not a.verified
        stmt = a.provenance.statement
        assert stmt["predicate"]["buildDefinition"]["internalParameters"] == {"builtHere": False}
        assert a.provenance.envelope is not None  # signed like a built wheel's
    # the same bytes again: accepted, nothing changes (as PyPI answers a repeated upload)
    again = form_upload(farm, w1, farm.tokens["upload"])
    assert again.status_code == 200 and "already" in again.text
    python = pip_venv(tmp_path / "venv", "pip")
    r = run([python, "-m", "pip", "install", "--quiet", "--index-url", farm.url("/staging/simple/"), "updemo"],
            env=env, timeout=300, check=False)
    assert r.returncode == 0, r.output
    out = run([python, "-c", "import updemo; print(updemo.VERSION)"], env=env, timeout=60).output
    assert out.strip() == "2.0"


def test_twine_uploads_an_sdist_which_becomes_a_submission(farm: Farm, tmp_path: Path) -> None:
    from farm.db.models import Job, Submission
    from farm.db.session import session_scope

    twine = tool_venv("twine", "twine") / "twine"
    sdist = make_good(tmp_path / "dist", "upsdist", "1.0")
    r = run([twine, "upload", "--non-interactive", "--disable-progress-bar", "--repository-url",
             farm.url("/staging/legacy/"), "-u", "__token__", "-p", farm.tokens["upload"], sdist],
            env=_env(tmp_path), timeout=300, check=False)
    assert r.returncode == 0, r.output
    with session_scope() as s:
        (sub,) = s.query(Submission).all()
        assert sub.kind == "upload"
        assert s.query(Job).filter_by(submission_id=sub.id).count() >= 1
    # other bytes under the same sdist name: refused
    other = make_good(tmp_path / "other", "upsdist", "1.0", requires_python=">=3.10")
    with open(other, "rb") as f:
        r = httpx.post(farm.url("/staging/legacy/"), auth=("__token__", farm.tokens["upload"]), timeout=60,
                       data={":action": "file_upload", "protocol_version": "1", "filetype": "sdist",
                             "name": "upsdist", "version": "1.0"}, files={"content": (other.name, f)})
    assert r.status_code == 400 and "File already exists" in r.text


def test_uv_publish_uploads_an_sdist(farm: Farm, tmp_path: Path) -> None:
    from farm.db.models import Submission
    from farm.db.session import session_scope

    uv = tool_venv("uv", "uv") / "uv"
    sdist = make_good(tmp_path / "dist", "uvsdist", "1.0")
    r = run([uv, "publish", "--publish-url", farm.url("/staging/legacy/"), "--username", "__token__",
             "--password", farm.tokens["upload"], sdist], env=_env(tmp_path), timeout=300, check=False)
    assert r.returncode == 0, r.output
    with session_scope() as s:
        assert [x.request.endswith("uvsdist-1.0.tar.gz") for x in s.query(Submission).all()] == [True]


def test_tokens_for_uploads(farm: Farm, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "dist", "tokdemo", "1.0")
    r = form_upload(farm, wheel, None)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert form_upload(farm, wheel, "farm_" + "y" * 43).status_code == 401
    r = form_upload(farm, wheel, farm.tokens["read"])
    assert r.status_code == 403 and "'upload'" in r.text
    r = form_upload(farm, wheel, farm.tokens["stable-only"], channel="staging")
    assert r.status_code == 403 and "stable" in r.text
    assert form_upload(farm, wheel, farm.tokens["upload"], channel="nosuch").status_code == 404
    assert stored(farm.home) == []
    assert form_upload(farm, wheel, farm.tokens["stable-only"], channel="stable").status_code == 200
    listed = httpx.get(farm.url("/stable/simple/tokdemo/"), timeout=30)
    assert listed.status_code == 200 and wheel.name in listed.text


def test_bad_uploads_are_refused_with_a_reason_and_nothing_stored(farm: Farm, tmp_path: Path) -> None:
    good = make_wheel(tmp_path / "good", "baddemo", "1.0")
    info = "baddemo-1.0.dist-info"
    wrong_name = rewrite(good, tmp_path / "n" / good.name, {
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: otherproj\nVersion: 1.0\n\n"}, fix_record=True)
    bad_hash = rewrite(good, tmp_path / "h" / good.name, {"baddemo/__init__.py": b"print('changed')\n"},
                       fix_record=False)
    bad_tag = rewrite(good, tmp_path / "t" / "baddemo-1.0-py3-none-linux_x86_64.whl", {}, fix_record=True)
    odd_tag = rewrite(good, tmp_path / "o" / "baddemo-1.0-zz3-none-any.whl", {}, fix_record=True)
    token = farm.tokens["upload"]
    for wheel, reason in [(wrong_name, "otherproj"), (bad_hash, "RECORD hash mismatch for baddemo/__init__.py"),
                          (bad_tag, "linux_x86_64"), (odd_tag, "not an interpreter tag")]:
        r = form_upload(farm, wheel, token)
        assert r.status_code == 400, (wheel, r.text)
        assert reason in r.text, r.text
    r = form_upload(farm, good, token, sha256_digest="0" * 64)
    assert r.status_code == 400 and "digest" in r.text
    assert stored(farm.home) == []
    assert form_upload(farm, good, token).status_code == 200
    taken = rewrite(good, tmp_path / "x" / good.name, {"baddemo/__init__.py": b"X = 2\n"}, fix_record=True)
    r = form_upload(farm, taken, token)
    assert r.status_code == 400 and "File already exists" in r.text
    before = stored(farm.home)
    # a compiled wheel for the platform this farm builds (the host's): refused, the sdist is the way in
    from farm.worker.platforms import host_platform_name

    arch = host_platform_name().split("-", 1)[1]
    compiled = make_wheel(tmp_path / "c", "cdemo", "1.0", tag=f"cp312-cp312-manylinux_2_17_{arch}")
    r = form_upload(farm, compiled, token)
    assert r.status_code == 400 and "which this farm builds" in r.text
    assert stored(farm.home) == before
    twine = tool_venv("twine", "twine") / "twine"
    r = run([twine, "upload", "--non-interactive", "--disable-progress-bar", "--repository-url",
             farm.url("/staging/legacy/"), "-u", "__token__", "-p", token, taken],
            env=_env(tmp_path), timeout=300, check=False)
    assert r.returncode != 0 and "400" in r.output

