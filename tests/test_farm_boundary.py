"""Package code cannot touch the farm: the API trusts no client for where it connects from, a
worker token writes only the storage keys of the job attempt it runs, stored objects are
write-once, and only the coordinator reads the farm's signing key.

The API runs in-process on PostgreSQL (the `api` fixture of tests/test_api.py) with the real
coordinator functions (submit, events, the reconciler, `dispatch.job_spec`, which issues the
storage capabilities); `farm up` runs for real for the local admin token and the signing key.
Every test's docstring names the attack it covers.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from farm.api.app import create_app
from farm.config import get_settings, reset_settings
from farm.errors import ConfigError
from farm.messages import StepReport
from farm.storage import LocalStorage, StorageConflict, staged_key, wheel_key
from farm.storage_http import HttpStorage, SHA256_HEADER
from farm.tokens import (
    CAPABILITY_HEADER, ensure_local_admin_token, hash_token, local_admin_path, read_local_admin_token)
from tests.helpers.concurrency import at_once
from tests.helpers.api import Api, api, capability, live_job, submission_count  # noqa: F401
from tests.helpers.env import base_env, free_port
from tests.helpers.farms import Farm
from tests.helpers.messages import _age, _event, _sizes
from tests.helpers.sdists import make_project, make_sdist


def _job_state(api: Api, job_id: int) -> tuple[str, int]:
    view = api.client.get(f"/api/jobs/{job_id}", headers=api.h("admin")).json()
    return view["state"], view["attempt"]


def _put(api: Api, key: str, data: bytes, cap: str | None) -> httpx.Response:
    headers = {**api.h("worker"), SHA256_HEADER: hashlib.sha256(data).hexdigest()}
    if cap is not None:
        headers[CAPABILITY_HEADER] = cap
    return api.client.put(f"/api/storage/{key}", content=data, headers=headers)


def _stored(api: Api, key: str) -> bytes | None:
    path = api.settings.storage / key
    return path.read_bytes() if path.is_file() else None


# The API trusts no client for where it connects from ---------------------------------------------------------

ROLE_ROUTES = [
    ("POST", "/api/releases/yank", {"json": {"pin": "victim==1.0", "reason": "yanked by package code"}}),
    ("POST", "/api/releases/promote", {"json": {"pin": "victim==1.0", "to": "stable"}}),
    ("POST", "/api/submissions", {"json": {"requirement": "remote==1.0"}}),
    ("POST", "/api/jobs/{job}/cancel", {}),
    ("GET", "/api/jobs", {}),
    ("GET", "/api/jobs/{job}/log", {}),
    ("GET", "/api/storage/sdists/x/y/z.tar.gz", {}),
    ("PUT", "/api/storage/jobs/{job}/attempt-1.log", {"content": b"x"}),
]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("configured", [False, True], ids=["no-tokens", "tokens"])
def test_loopback_client_without_token_cannot_yank_promote_submit_or_cancel(api: Api, tmp_path: Path, host: str,
                                                                              configured: bool) -> None:
    """Attack: package code running on the host of `farm up` (no tokens configured) calls the API on
    127.0.0.1 / ::1 without a token to yank or promote another project, submit, cancel a job, read
    logs or write storage. Every route that needs a role answers 401 and nothing changes; the
    index and /health stay open."""
    job, _ = live_job(api, tmp_path, f"victim{len(host)}{int(configured)}")
    settings = api.settings if configured else api.settings.model_copy(update={"tokens": []})
    before = submission_count()
    with TestClient(create_app(settings), client=(host, 40000)) as local:
        for method, path, kw in ROLE_ROUTES:
            resp = local.request(method, path.format(job=job), **kw)
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
        assert local.get("/health").status_code == 200
        index = local.get("/simple/")
        assert index.status_code == 200 and "www-authenticate" not in index.headers
    assert submission_count() == before
    assert _job_state(api, job) == ("queued", 1)
    assert _stored(api, f"jobs/{job}/attempt-1.log") is None


def test_local_admin_token_is_private_and_trusted_by_its_hash(api: Api, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: read the local admin token `farm up` keeps, or plant one. It is made 0600 and kept
    only in $FARM_HOME/admin.token (the API holds its sha256, farm.toml is not touched); a copy
    others may read or write is trusted by nobody: the API refuses it (401) and so does the CLI."""
    home = tmp_path / "home"
    token, created = ensure_local_admin_token(home)
    path = local_admin_path(home)
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_local_admin_token(home) == (token, False)
    assert not (home / "farm.toml").exists()

    settings = api.settings.model_copy(update={"home": home, "tokens": []})
    with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
        assert local.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert local.get("/api/jobs", headers={"Authorization": f"Bearer {hash_token(token)}"}).status_code == 401
        assert local.get("/api/jobs").status_code == 401

    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_local_admin_token(home)
    with TestClient(create_app(settings), client=("127.0.0.1", 40000)) as local:
        assert local.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.setenv("FARM_SERVER_URL", "http://127.0.0.1:9")
    reset_settings()
    try:
        from farm.cli.remote import client_from_settings

        with pytest.raises(ConfigError):
            client_from_settings()
    finally:
        monkeypatch.setenv("FARM_HOME", str(api.home))
        monkeypatch.delenv("FARM_SERVER_URL")
        reset_settings()


def test_local_cli_sends_the_admin_token_only_to_a_loopback_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: a `--server` elsewhere (or a typo in it) harvesting the local admin token. The CLI sends
    it only to a farm on a loopback address, and a token given explicitly always wins."""
    from farm.cli.remote import client_from_settings

    home = tmp_path / "home"
    token, _ = ensure_local_admin_token(home)
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.delenv("FARM_TOKEN", raising=False)
    try:
        for url, sent in [("http://127.0.0.1:8477", token), ("http://localhost:1", token), ("http://[::1]:8477", token),
                          ("https://farm.example", None), ("http://10.1.2.3:8477", None)]:
            monkeypatch.setenv("FARM_SERVER_URL", url)
            reset_settings()
            assert client_from_settings()._headers.get("Authorization") == (f"Bearer {sent}" if sent else None), url
        monkeypatch.setenv("FARM_TOKEN", "farm_explicit")
        reset_settings()
        assert client_from_settings()._headers["Authorization"] == "Bearer farm_explicit"
    finally:
        reset_settings()


# Storage: a worker token writes only the keys of the attempt it holds; objects are write-once ------------


def test_capability_covers_only_its_own_jobs_keys(api: Api, tmp_path: Path) -> None:
    """Attack: package code on a worker host (it can read the worker token from the environment)
    overwrites another job's wheel, log or provenance, the coordinator's stop marker or an sdist
    through PUT /api/storage. The token alone writes nothing; a job attempt's capability writes only
    that job's keys; a forged capability, or one of another job, is refused (403)."""
    mine, cap = live_job(api, tmp_path, "capmine")
    other, other_cap = live_job(api, tmp_path, "capother")
    mine_cap, other_cap = cap[CAPABILITY_HEADER], other_cap[CAPABILITY_HEADER]
    wheel = "victim-1.0-py3-none-any.whl"
    for key in (f"jobs/{other}/attempt-1/wheels/{wheel}", f"jobs/{other}/attempt-1/wheels/{wheel}.provenance.json",
                f"jobs/{other}/attempt-1/staged/{wheel}", f"jobs/{other}/attempt-1.log"):
        assert _put(api, key, b"evil", mine_cap).status_code == 403, key
        assert _put(api, key, b"evil", None).status_code == 403, key
    for key in (f"jobs/{mine}/stop.json", f"sdists/ab/{'ab' * 32}/victim-1.0.tar.gz", f"jobs/{mine}/attempt-1.txt"):
        assert _put(api, key, b"evil", mine_cap).status_code == 403, key
    forged = mine_cap[:-4] + ("0000" if not mine_cap.endswith("0000") else "1111")
    relabelled = mine_cap.replace(f"fc1.{mine}.", f"fc1.{other}.", 1)  # the other job's id, this job's MAC
    for bad in (forged, relabelled, other_cap.replace("fc1.", "fc2.", 1), "x" * 80, hash_token(api.tokens["worker"])):
        resp = _put(api, f"jobs/{mine}/attempt-1/wheels/{wheel}", b"evil", bad)
        assert resp.status_code == 403, (bad, resp.text)
    assert _put(api, f"jobs/{other}/attempt-1/wheels/{wheel}", b"evil", relabelled).status_code == 403
    assert not (api.settings.storage / "jobs" / str(other)).exists()
    assert _stored(api, f"jobs/{mine}/attempt-1/wheels/{wheel}") is None
    # Reading stays with the worker token: workers need sdists and staged wheels.
    assert _put(api, f"jobs/{mine}/attempt-1/wheels/{wheel}", b"mine", mine_cap).status_code == 201
    assert api.client.get(f"/api/storage/jobs/{mine}/attempt-1/wheels/{wheel}", headers=api.h("worker")).content == b"mine"


def test_attempt_n_cannot_write_attempt_n_minus_1_and_n_minus_1_is_over(api: Api, tmp_path: Path) -> None:
    """Attack: a worker of attempt N (or package code holding its capability) rewrites the log of the
    attempt before it, or a worker whose attempt was replaced by the reconciler (lost, only slow)
    keeps uploading into the job. Attempt N's capability does not cover attempt N-1's log (403); the
    replaced attempt's capability writes nothing any more (409)."""
    from farm.coordinator.reconcile import reconcile_once

    settings = get_settings()
    job, cap1 = live_job(api, tmp_path, "attempts")
    first = cap1[CAPABILITY_HEADER]
    assert _put(api, f"jobs/{job}/attempt-1.log", b"attempt 1 log\n", first).status_code == 201
    _event(job, "fetching", step=StepReport(name="fetching", started_at=time.time()))
    _event(job, "building", step=StepReport(name="building", started_at=time.time()))
    _age(job, settings.lost_after + 5)
    assert job in reconcile_once(settings, sizes=_sizes()).requeued  # sent again as attempt 2
    assert _job_state(api, job) == ("queued", 2)
    second = capability(job)
    assert second != first and second.startswith(f"fc1.{job}.2.")

    assert _put(api, f"jobs/{job}/attempt-1.log", b"rewritten by attempt 2\n", second).status_code == 403
    wheel = "attempts-1.0-py3-none-any.whl"
    for key in (wheel_key(job, wheel, attempt=1), staged_key(job, wheel, attempt=1)):  # attempt 1's own folder
        assert _put(api, key, b"attempt 2's bytes", second).status_code == 403, key
    assert _put(api, wheel_key(job, wheel, attempt=2), b"attempt 2's wheel", second).status_code == 201
    assert _put(api, wheel_key(job, wheel, attempt=3), b"a future attempt", second).status_code == 403
    stale = _put(api, f"jobs/{job}/attempt-1/wheels/late-1.0-py3-none-any.whl", b"late", first)
    assert stale.status_code == 409 and "is over" in stale.json()["detail"]
    assert _put(api, f"jobs/{job}/attempt-1.log", b"rewritten by attempt 1\n", first).status_code == 409
    assert _put(api, f"jobs/{job}/attempt-2.log", b"attempt 2 log\n", first).status_code == 403
    assert _stored(api, f"jobs/{job}/attempt-1.log") == b"attempt 1 log\n"
    assert _stored(api, f"jobs/{job}/attempt-1/wheels/late-1.0-py3-none-any.whl") is None
    assert _put(api, f"jobs/{job}/attempt-2.log", b"attempt 2 log\n", second).status_code == 201


def test_stored_objects_are_write_once_identical_reupload_is_fine(api: Api, tmp_path: Path) -> None:
    """Attack: replace a wheel or its provenance after the worker uploaded it (before or after it is
    published) with other bytes under the same key, using the attempt's own capability. A second PUT
    with other bytes is 409 and the stored object stays; the same bytes again (an upload retried)
    are answered 200. The worker's client (HttpStorage) reports the refusal as StorageConflict."""
    job, cap = live_job(api, tmp_path, "writeonce")
    key = f"jobs/{job}/attempt-1/wheels/writeonce-1.0-py3-none-any.whl"
    good, evil = os.urandom(2048), os.urandom(2048)
    assert _put(api, key, good, cap[CAPABILITY_HEADER]).status_code == 201
    again = _put(api, key, good, cap[CAPABILITY_HEADER])
    assert again.status_code == 200 and again.json()["sha256"] == hashlib.sha256(good).hexdigest()
    refused = _put(api, key, evil, cap[CAPABILITY_HEADER])
    assert refused.status_code == 409 and "write-once" in refused.json()["detail"]
    assert _stored(api, key) == good

    store = HttpStorage("http://testserver", api.tokens["worker"], client=api.client).with_capability(cap[CAPABILITY_HEADER])
    store.put_bytes(key + ".provenance.json", b'{"subject": "good"}')
    store.put_bytes(key + ".provenance.json", b'{"subject": "good"}')  # retried: fine
    with pytest.raises(StorageConflict, match="409"):
        store.put_bytes(key + ".provenance.json", b'{"subject": "evil"}')
    assert _stored(api, key + ".provenance.json") == b'{"subject": "good"}'
    assert not [p for p in (api.home / "tmp").iterdir() if p.name.startswith("upload-")]
    assert not [p for p in (api.settings.storage / "jobs" / str(job)).rglob(".tmp-*")]


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_finished_jobs_objects_are_final_even_its_log(api: Api, tmp_path: Path, end: str) -> None:
    """Attack: after a job ended, rewrite its log (to hide what the build did) or add a wheel to it,
    with the capability of its last attempt. While the attempt runs its log may be uploaded again (a
    retried attempt does), once the job has ended nothing of it is written (409)."""
    from farm.coordinator.reconcile import cancel

    job, cap = live_job(api, tmp_path, f"finished{end}")
    held = cap[CAPABILITY_HEADER]
    log = f"jobs/{job}/attempt-1.log"
    assert _put(api, log, b"first try\n", held).status_code == 201
    assert _put(api, log, b"first try\nsecond try\n", held).status_code == 201  # the live attempt's log
    if end == "failed":
        _event(job, "fetching", step=StepReport(name="fetching", started_at=time.time()))
        _event(job, "failed", error="does not build", failure_kind="package")
    else:
        cancel(job, get_settings())
    assert _job_state(api, job)[0] == end
    for key, data in ((log, b"nothing happened here\n"), (log, b"first try\nsecond try\n"),
                      (f"jobs/{job}/attempt-1/wheels/late-1.0-py3-none-any.whl", b"late")):
        resp = _put(api, key, data, held)
        assert resp.status_code == 409 and "is over" in resp.json()["detail"], (key, resp.text)
    assert _stored(api, log) == b"first try\nsecond try\n"


def test_local_storage_refuses_to_overwrite_a_stored_object(tmp_path: Path) -> None:
    """Attack: a stale or duplicate worker on the embedded farm (folder storage) overwrites a finished
    job's wheel or provenance. Stored objects are linked into place without replacing: other bytes
    raise StorageConflict (also when writers race: exactly one wins), the same bytes are a no-op;
    only the coordinator's stop markers are rewritten."""
    storage = LocalStorage(tmp_path / "storage")
    key = "jobs/5/wheels/w-1.0-py3-none-any.whl"
    storage.put_bytes(key, b"verified wheel")
    storage.put_bytes(key, b"verified wheel")
    src = tmp_path / "evil.whl"
    src.write_bytes(b"evil wheel")
    with pytest.raises(StorageConflict):
        storage.put_file(key, src)
    with pytest.raises(StorageConflict):
        storage.put_bytes(key, b"evil wheel")
    assert storage.read_bytes(key) == b"verified wheel"

    storage.put_bytes("jobs/5/stop.json", b'{"below": 2}')
    storage.put_bytes("jobs/5/stop.json", b'{"below": null}')  # the coordinator's marker: rewritten
    assert storage.read_bytes("jobs/5/stop.json") == b'{"below": null}'

    race = "jobs/6/wheels/race-1.0-py3-none-any.whl"

    def writer(i: int) -> int:
        storage.put_bytes(race, f"writer {i}".encode())
        return i

    won, lost = at_once(writer, [(i,) for i in range(8)], timeout=60)
    assert len(won) == 1 and len(lost) == 7 and all(isinstance(e, StorageConflict) for e in lost), lost
    assert storage.read_bytes(race) == f"writer {won[0]}".encode()
    assert not list((tmp_path / "storage").rglob(".tmp-*"))


# The signing key belongs to the coordinator -------------------------------------------------------------


def test_no_worker_module_loads_the_private_key() -> None:
    """Attack: package code reading the farm's signing key through the worker (which would let it sign
    provenance for anything). No module a worker imports names the private key file or loads it;
    signing happens in the coordinator's publish step only."""
    root = Path(__file__).resolve().parent.parent / "farm"
    code = textwrap.dedent("""
        import sys
        from farm.coordinator.app import WORKER_TASKS, get_app
        get_app(include=WORKER_TASKS).loader.import_default_modules()
        import farm.worker.pipeline, farm.worker.task, farm.storage_http, farm.worker.verify_container
        import farm.worker.engines.cibuildwheel, farm.worker.platforms.linux
        print("\\n".join(sorted(m for m in sys.modules if m.startswith("farm"))))
        """)
    env = {**os.environ, "FARM_FORBID_DB": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = res.stdout.split()
    assert "farm.worker.task" in loaded and "farm.worker.engines.cibuildwheel" in loaded
    for signer in ("farm.provenance.keys", "farm.provenance.sign", "farm.provenance.write", "farm.index.channels",
                   "farm.coordinator.publish"):
        assert signer not in loaded, f"a worker imports {signer}"
    for module in loaded:
        path = root.parent / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = root.parent / module.replace(".", "/") / "__init__.py"
        text = path.read_text()
        for needle in ("KEY_FILE", "farm.key", "ensure_key", "load_private", "channels.sign("):
            assert needle not in text, f"{module} ({path}) mentions {needle}"


def embedded(home: Path) -> Farm:
    """A `farm up` of the embedded default: none of this process's FARM_* settings (the `api` fixture's)."""
    farm = Farm(home, free_port())
    farm.env = base_env(FARM_HOME=str(home))
    return farm


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    farm = embedded(tmp_path_factory.mktemp("farm-up") / "home")
    farm.start()
    yield farm
    farm.stop()


SITE_AUDIT = '''
import os, sys

_LOG = os.environ.get("FARM_TEST_AUDIT_LOG")
_WATCH = ("farm.key", "admin.token", "storage-capability.key")


def _hook(event, args):
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    name = os.fsdecode(args[0])
    base = os.path.basename(name)
    if any(base == w or base.startswith("." + w) for w in _WATCH):
        try:
            with open(_LOG, "a") as f:
                f.write(f"{os.getpid()}\\t{' '.join(sys.argv[1:])}\\t{name}\\n")
        except OSError:  # e.g. a sandboxed process that cannot reach the log: it opens none of these anyway
            pass


if _LOG:
    sys.addaudithook(_hook)
'''


@pytest.mark.slow
@pytest.mark.network
def test_the_worker_never_opens_the_signing_key_or_the_farms_secrets(tmp_path: Path) -> None:
    """Attack: package code built by the embedded farm's worker reaching the farm's signing key (or the
    local admin token, or the storage capability secret) through the worker process. A real `farm up`
    with a signing key (`farm init`) builds and publishes a package while every farm process records
    each file it opens (a Python audit hook): the coordinator opened keys/farm.key to sign, the worker
    opened none of the three."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_AUDIT)
    audit = tmp_path / "audit.log"
    audit.touch()
    os.chmod(audit, 0o666)
    farm = embedded(tmp_path / "home")
    farm.env.update(PYTHONPATH=str(site), FARM_TEST_AUDIT_LOG=str(audit))
    farm.home.mkdir(parents=True)
    init = farm.farm("init")
    assert init.returncode == 0, init.stderr
    sdist = make_sdist(make_project(tmp_path / "src", "farmtest-keyaudit", c_extension=False), tmp_path / "dist")
    farm.start()
    try:
        res = farm.farm("submit", "--wait", "--timeout", "600", str(sdist))
        assert res.returncode == 0, res.stdout + res.stderr
        verified = farm.farm("verify", "farmtest-keyaudit==0.1.0")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        farm.stop()
    opened = [line.split("\t") for line in audit.read_text().splitlines()]
    by = {}
    for _pid, argv, path in opened:
        by.setdefault(argv, set()).add(Path(path).name)
    assert any(argv.endswith("coordinator") and "farm.key" in names for argv, names in by.items()), opened
    worker = {argv: names for argv, names in by.items() if argv.endswith("worker")}
    assert not worker, f"the worker opened {worker}"


@pytest.mark.slow
def test_farm_up_makes_a_private_admin_token_and_the_local_cli_uses_it(up: Farm) -> None:
    """Attack: package code on the host of `farm up` calling its API on 127.0.0.1 with no token (to yank,
    promote, submit or cancel), or finding the local admin token in a file it can read. `farm up`
    made $FARM_HOME/admin.token (0600, in no other file of FARM_HOME); the API answers 401 without it,
    the index stays open, and the local CLI's remote calls pick the token up without --token."""
    path = up.home / "admin.token"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    for other in up.home.rglob("*"):
        if other.is_file() and other != path and other.stat().st_size < 50 * 1024 * 1024:
            assert token.encode() not in other.read_bytes(), other
    url = up.url
    for method, route, kw in ROLE_ROUTES:
        resp = httpx.request(method, url + route.format(job=1), timeout=30, **kw)
        assert resp.status_code == 401, (method, route, resp.status_code, resp.text)
    assert httpx.get(url + "/simple/", timeout=30).status_code == 200
    assert httpx.get(url + "/api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200

    env = dict(up.env)  # no FARM_TOKEN: base_env keeps no FARM_* variable but FARM_HOME
    cli = [sys.executable, "-m", "farm.cli", "--server", url]
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    yank = subprocess.run([*cli, "yank", "nothing-here==1.0", "--reason", "test"], env=env, capture_output=True,
                          text=True, timeout=120)  # an admin route: refused for what it asks, not for who asks
    assert yank.returncode != 0 and "401" not in yank.stderr and "nothing-here" in yank.stderr, yank.stderr
    cancel = subprocess.run([*cli, "cancel", "999999"], env=env, capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 7 and "401" not in cancel.stderr, cancel.stderr
    elsewhere = {**env, "FARM_HOME": str(up.home.parent / "elsewhere")}
    denied = subprocess.run([*cli, "status"], env=elsewhere, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 1 and "401" in denied.stderr and "admin.token" in denied.stderr, denied.stderr
