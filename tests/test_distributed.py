"""Distributed mode for real: `farm api` and `farm coordinator` on PostgreSQL and Redis, a remote
worker that has only the broker URL, the server URL and a worker token.

The worker runs with FARM_FORBID_DB=1 (importing farm.db.session raises) and a database URL that
points nowhere, in a FARM_HOME without a database file; the CLI talks to the API the same way. A
small C-extension sdist goes from `farm --server ... submit --wait` to published, and pip installs
it from the API's /simple/. Also: compose.yaml has the production services, each published port
on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from farm.tokens import create_token
from tests.helpers.env import ROOT, base_env, free_port, pip_install_from
from tests.helpers.sdists import make_project, make_sdist
from tests.helpers.servers import drop_database, pg_database


REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
NOWHERE_DB = "postgresql+psycopg://nobody:nothing@127.0.0.1:1/no_such_database"


def flush_redis() -> None:
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


@dataclass
class Cluster:
    root: Path
    url: str
    server_home: Path
    worker_home: Path
    client_home: Path
    tokens: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server_env: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def client_env(self, role: str = "submit") -> dict[str, str]:
        """A client host: no database (forbidden, and its URL points nowhere), only the API."""
        return base_env(FARM_HOME=str(self.client_home), FARM_DATABASE_URL=NOWHERE_DB, FARM_FORBID_DB="1",
                        FARM_SERVER_URL=self.url, FARM_TOKEN=self.tokens[role])

    def farm(self, *args: str, role: str = "submit", timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.client_env(role),
                              capture_output=True, text=True, timeout=timeout)


def _start(cluster: Cluster, name: str, argv: list[str], env: dict[str, str]) -> None:
    with open(cluster.root / f"{name}.log", "ab") as out:
        cluster.procs[name] = subprocess.Popen([sys.executable, "-m", "farm.cli", *argv], env=env, stdout=out,
                                               stderr=subprocess.STDOUT)


def _wait_health(cluster: Cluster) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cluster.procs["api"].poll() is not None:
            raise RuntimeError("farm api exited:\n" + cluster.log("api"))
        try:
            if httpx.get(cluster.url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("farm api did not answer within 60 s:\n" + cluster.log("api"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from farm.worker.platforms import host_platform_name

    root = tmp_path_factory.mktemp("distributed")
    port = free_port()
    c = Cluster(root=root, url=f"http://127.0.0.1:{port}", server_home=root / "server",
                worker_home=root / "worker", client_home=root / "client", tokens={}, port=port)
    for home in (c.server_home, c.worker_home, c.client_home):
        home.mkdir()
    c.tokens = {role: create_token(c.server_home, f"{role}-1", role) for role in ("submit", "worker", "admin")}
    db_name, db_url = pg_database("farmtest_dist")
    flush_redis()
    server_env = base_env(FARM_HOME=str(c.server_home), FARM_DATABASE_URL=db_url, FARM_BROKER_URL=REDIS_URL)
    c.server_env = server_env
    worker_env = base_env(FARM_HOME=str(c.worker_home), FARM_DATABASE_URL=NOWHERE_DB, FARM_FORBID_DB="1",
                          FARM_BROKER_URL=REDIS_URL, FARM_SERVER_URL=c.url, FARM_TOKEN=c.tokens["worker"])
    try:
        subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=server_env, check=True,
                       capture_output=True, timeout=120)
        _start(c, "api", ["api", "--port", str(port)], server_env)
        _start(c, "coordinator", ["coordinator"], server_env)
        _start(c, "worker", ["worker", "--platform", host_platform_name()], worker_env)
        _wait_health(c)
        yield c
    finally:
        for proc in c.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in c.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        flush_redis()
        drop_database(db_name)


@pytest.mark.slow
@pytest.mark.network
def test_remote_worker_without_database_builds_and_publishes(cluster: Cluster, tmp_path: Path) -> None:
    sdist = make_sdist(make_project(tmp_path / "src", "distpkg", version="0.3.0", c_extension=True),
                       tmp_path / "dist")

    # A worker token cannot submit.
    denied = cluster.farm("submit", str(sdist), role="worker")
    assert denied.returncode != 0 and "403" in denied.stderr, denied.stderr

    res = cluster.farm("submit", str(sdist), "--wait", "--timeout", "600")
    assert res.returncode == 0, (res.stdout, res.stderr, cluster.log("worker")[-5000:], cluster.log("coordinator")[-5000:])
    assert "published distpkg-0.3.0-" in res.stdout
    job_id = int(res.stdout.split()[1].rstrip(":"))

    status = cluster.farm("status", "--json")
    assert status.returncode == 0, status.stderr
    views = {v["id"]: v for v in json.loads(status.stdout)}
    assert views[job_id]["state"] == "succeeded"
    assert [s["name"] for s in views[job_id]["steps"]] == ["fetching", "building", "repairing", "verifying",
                                                           "attesting", "uploading"]
    table = cluster.farm("status")
    assert re.search(rf"^ *{job_id}  +distpkg  +0\.3\.0  .*succeeded", table.stdout, re.MULTILINE), table.stdout

    logs = cluster.farm("logs", str(job_id))
    assert logs.returncode == 0 and "===== building =====" in logs.stdout and "built and verified" in logs.stdout
    assert cluster.farm("logs", "999999").returncode == 7

    # The log, the wheel and its provenance came to the server's storage over the API.
    stored = cluster.server_home / "storage" / "jobs" / str(job_id)
    assert (stored / "attempt-1.log").is_file()
    wheels = list((stored / "attempt-1" / "wheels").glob("distpkg-0.3.0-*.whl"))
    assert wheels and (stored / "attempt-1" / "wheels" / (wheels[0].name + ".provenance.json")).is_file()
    prov = httpx.get(f"{cluster.url}/files/distpkg/{wheels[0].name}.provenance.json")
    assert prov.status_code == 200 and prov.json()["subject"][0]["name"] == wheels[0].name

    # The worker never had a database: no file, no module, still running. Nor the server's secrets:
    # it uploaded with the job attempt's storage capability, not a key of its own.
    assert not list(cluster.worker_home.rglob("farm.db*"))
    for secret in ("farm.key", "admin.token", "storage-capability.key"):
        assert not list(cluster.worker_home.rglob(secret)), secret
    assert not list(cluster.client_home.rglob("farm.db*"))
    assert cluster.procs["worker"].poll() is None, cluster.log("worker")
    worker_log = cluster.log("worker")
    assert "FARM_FORBID_DB" not in worker_log and "no_such_database" not in worker_log
    assert "farm.worker.build" in worker_log

    pip = pip_install_from(cluster.url + "/simple/", tmp_path / "venv", "distpkg==0.3.0")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    run = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", "import distpkg; print(distpkg.add(2, 3))"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.strip() == "5", run.stderr


@pytest.mark.slow
def test_api_refuses_cli_without_or_with_wrong_token(cluster: Cluster) -> None:
    env = cluster.client_env()
    env["FARM_TOKEN"] = "farm_wrong"
    res = subprocess.run([sys.executable, "-m", "farm.cli", "status"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1 and "401" in res.stderr
    env = base_env(FARM_HOME=str(cluster.client_home), FARM_FORBID_DB="1")
    res = subprocess.run([sys.executable, "-m", "farm.cli", "--server", cluster.url, "--token", cluster.tokens["admin"],
                          "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert isinstance(json.loads(res.stdout), list)


# compose.yaml -----------------------------------------------------------------------------------------------

COMPOSE_SERVICES = {"redis", "postgres", "init", "api", "coordinator", "worker-linux"}


def _interpolate(value: object) -> object:
    """compose.yaml's variables at their defaults: `${X:-default}` is default, `${X:?...}` is <X>."""

    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if not isinstance(value, str):
        return value
    return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)?\}", lambda m: m.group(2) if m.group(2) is not None
                  else f"<{m.group(1)}>", value)


def _compose_config() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    return _interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()))  # type: ignore[return-value]


def test_compose_services_and_loopback_ports() -> None:
    """Every service on the host's network (the farm's engine has no bridge), listening on
    127.0.0.1 by default; no published port, no named volume, bind mounts at the same path inside
    and outside, never the host's docker.sock; Redis with a password and AOF persistence."""
    assert "0.0.0.0" not in (ROOT / "compose.yaml").read_text()
    config = _compose_config()
    services = config["services"]
    assert COMPOSE_SERVICES <= set(services), sorted(services)
    assert not config.get("volumes") and not config.get("networks")
    for name, svc in services.items():
        assert svc.get("network_mode") == "host", f"{name} does not use the host's network"
        assert not svc.get("ports"), f"{name} publishes ports"
        assert svc.get("build", {}).get("network", "host") == "host", f"{name} builds on a bridge"
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source.startswith("/") and source == target, f"{name}: {volume} is not the same path inside"
            assert source != "/var/run/docker.sock", f"{name} holds the host's Docker engine"
    assert services["api"]["environment"]["FARM_API_HOST"] == "127.0.0.1"
    redis = services["redis"]["command"]
    assert redis[redis.index("--bind") + 1] == "127.0.0.1"
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert "FARM_REDIS_PASSWORD" in services["redis"]["environment"]
    assert ":<FARM_REDIS_PASSWORD>@" in services["worker-linux"]["environment"]["FARM_BROKER_URL"]
    assert "listen_addresses=127.0.0.1" in (ROOT / "workers/linux/farm-postgres.sh").read_text()
    assert "FARM_DATABASE_URL" not in services["worker-linux"]["environment"]


def _job(cluster: Cluster, job_id: int) -> dict:
    resp = httpx.get(f"{cluster.url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {cluster.tokens['submit']}"},
                     timeout=10)
    resp.raise_for_status()
    return resp.json()


@pytest.mark.slow
@pytest.mark.network
def test_api_stopped_for_30_s_mid_build_the_build_is_delivered_once(cluster: Cluster, tmp_path: Path) -> None:
    """Fault: the API (the remote worker's storage) goes away for 30 s while a build runs. The worker
    keeps its finished wheel on its disk and retries; when the API is back the result is delivered
    once: the job succeeds on its first attempt (nothing rebuilt, nothing failed because of the
    fault), one artifact row, and pip installs it."""
    src = make_project(tmp_path / "src", "distslow", version="0.1.0", c_extension=True)
    setup = src / "setup.py"
    setup.write_text("import time\ntime.sleep(6)  # a build that takes a while\n" + setup.read_text())
    sdist = make_sdist(src, tmp_path / "dist")
    sub = cluster.farm("submit", str(sdist))
    assert sub.returncode == 0, sub.stdout + sub.stderr
    found = re.search(r"^job (\d+):", sub.stdout, re.MULTILINE)
    assert found, sub.stdout
    job_id = int(found.group(1))
    deadline = time.monotonic() + 300
    while _job(cluster, job_id)["state"] not in ("building", "repairing", "verifying"):
        assert time.monotonic() < deadline, _job(cluster, job_id)
        time.sleep(0.2)
    api = cluster.procs["api"]
    api.terminate()
    api.wait(timeout=30)
    time.sleep(30)  # the build ends meanwhile; its uploads find no API
    _start(cluster, "api", ["api", "--port", str(cluster.port)], cluster.server_env)
    _wait_health(cluster)
    back = time.monotonic()
    while (job := _job(cluster, job_id))["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() - back < 300, job
        time.sleep(0.5)
    recovered = time.monotonic() - back
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 1, job  # delivered, not rebuilt
    print(f"API outage 30 s: job {job_id} succeeded {recovered:.1f} s after the API came back")
    pip = pip_install_from(cluster.url + "/simple/", tmp_path / "venv", "distslow==0.1.0")
    assert pip.returncode == 0, pip.stdout + pip.stderr
    files = httpx.get(f"{cluster.url}/simple/distslow/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()
    assert len(files["files"]) == 1

