"""compose.yaml brought up for real: Debian's docker-compose on the farm's private engine.

The stack's images are built from the farm's own bookworm image (farm.images; no registry), tagged
with a digest of everything that goes into them, so a rerun with the same inputs builds nothing.
Then, in a temporary folder and on free loopback ports: `docker-compose up`, a small C-extension
sdist submitted through the stack's API with the local admin token its first start made, built by
the stack's container worker with cibuildwheel and verified in the clean image, and pip (the host's
configuration neutralised) installs it from the stack's /simple/ and calls it. `docker-compose down`
removes the containers (the images stay cached) and the folder goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.env import ROOT, free_port, installed_and_run
from tests.helpers.images import CACHE, _Log, docker_host_or_skip, image_builder_or_skip
from tests.helpers.sdists import make_project, make_sdist


pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]

SUITE = "bookworm"  # the worker's build and verify images: cp311, which the host's pip installs
FARM_SUITE = "trixie"  # the farm's own base: Python 3.13 (bookworm's 3.11.2 lacks tarfile's filters)
STACK_IMAGES = {"init": "wheel-farm/farm", "postgres": "wheel-farm/postgres", "redis": "wheel-farm/redis"}
# What the stack's images are made of (workers/linux/*Dockerfile and .dockerignore say the same).
IMAGE_INPUTS = ["pyproject.toml", "README.md", ".dockerignore", "farm", "recipes", "workers/linux"]


def compose_program() -> str:
    """Debian's docker-compose, installed by scripts/install-compose.sh when it is missing."""
    if not shutil.which("docker-compose"):
        subprocess.run(["bash", str(ROOT / "scripts" / "install-compose.sh")], check=False, timeout=600)
    program = shutil.which("docker-compose")
    if not program:
        pytest.skip("docker-compose is not installed (scripts/install-compose.sh, as root)")
    return program


def inputs_digest(base_ids: list[str]) -> str:
    """sha256 of the files the stack's images are built from and of the base images' ids."""
    h = hashlib.sha256()
    for name in IMAGE_INPUTS:
        top = ROOT / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for image_id in base_ids:
        h.update(image_id.encode())
    return h.hexdigest()


class Stack:
    """One compose project of compose.yaml: its folder, ports, passwords and program."""

    def __init__(self, program: str, folder: Path, tag: str, socket: str, build_image: str, verify_image: str) -> None:
        self.program, self.folder = program, folder
        self.project = f"farmtest{os.getpid()}"
        self.api_port, self.pg_port, self.redis_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "COMPOSE_"))}
        env.update({
            "FARM_STACK_DIR": str(folder), "FARM_IMAGE_TAG": tag, "FARM_DOCKER_SOCKET": socket,
            "FARM_API_PORT": str(self.api_port), "FARM_POSTGRES_PORT": str(self.pg_port),
            "FARM_REDIS_PORT": str(self.redis_port),
            "FARM_REDIS_PASSWORD": os.urandom(16).hex(), "FARM_POSTGRES_PASSWORD": os.urandom(16).hex(),
            "FARM_BUILD_IMAGE": build_image, "FARM_VERIFY_IMAGE": verify_image, "FARM_PYTHON": "cp311",
        })
        self.env = env

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([self.program, "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args],
                             env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"docker-compose {' '.join(args)}:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        return res

    def logs(self) -> str:
        res = self.compose("logs", "--no-color", "--tail", "60", check=False, timeout=60)
        return res.stdout[-12000:] + res.stderr[-2000:]

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"the stack's API did not answer within {timeout} s\n{self.logs()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from docker.errors import ImageNotFound

    from farm.containers import docker_client
    from farm.images import build_image, build_verify_image, default_ca_bundle

    docker_host = docker_host_or_skip()
    if not docker_host.startswith("unix://"):
        pytest.skip("the stack's worker needs the engine's unix socket")
    image_builder_or_skip()
    program = compose_program()
    build = build_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(), docker_host=docker_host)
    verify = build_verify_image(suite=SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                                docker_host=docker_host)
    farm_base = build_verify_image(suite=FARM_SUITE, ca_bundle=default_ca_bundle(), cache_dir=CACHE, log=_Log(),
                                   docker_host=docker_host)
    tag = inputs_digest([farm_base.digest, build.digest])[:16]
    folder = tmp_path_factory.mktemp("compose") / "stack"
    s = Stack(program, folder, tag, docker_host.removeprefix("unix://"), build.tag, verify.tag)
    s.env.update({"FARM_BASE_IMAGE": farm_base.tag, "FARM_DEBIAN_IMAGE": build.tag})

    client = docker_client(docker_host)
    try:
        def exists(ref: str) -> bool:
            try:
                client.images.get(ref)
                return True
            except ImageNotFound:
                return False

        missing = [svc for svc, repo in STACK_IMAGES.items() if not exists(f"{repo}:{tag}")]
        if missing:
            started = time.monotonic()
            s.compose("build", *missing, timeout=1500)
            sys.stderr.write(f"built {', '.join(missing)} in {time.monotonic() - started:.0f} s\n")
        for repo in STACK_IMAGES.values():
            assert exists(f"{repo}:{tag}"), f"{repo}:{tag} was not built"
            for image in client.images.list(name=repo):  # earlier inputs' images: no longer needed
                for ref in image.tags:
                    if ref.rsplit(":", 1)[-1] not in (tag, "latest"):
                        try:
                            client.images.remove(ref)
                        except Exception:  # noqa: BLE001 - in use by another stack: kept
                            pass
        networks = sorted(n.name for n in client.networks.list())
        try:
            s.compose("up", "-d", timeout=600)
            s.wait_healthy()
            yield s
        finally:
            logs = s.logs()
            s.compose("down", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
            left = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={s.project}"})
            assert not left, f"containers left behind: {[c.name for c in left]}\n{logs}"
            assert sorted(n.name for n in client.networks.list()) == networks, "the stack made a network"
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        client.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses of sockets listening on TCP `port` in this network namespace (the host's)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:
                    found.add(".".join(str(b) for b in bytes.fromhex(address)[::-1]))
                else:
                    found.add(f"ipv6:{address}")
    return found


def test_every_service_listens_on_loopback_only(stack: Stack) -> None:
    for port in (stack.api_port, stack.pg_port, stack.redis_port):
        assert listening_addresses(port) == {"127.0.0.1"}, (port, listening_addresses(port))
    # Redis wants its password; AOF persistence is on.
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=stack.redis_port).ping()
    r = redis.Redis(host="127.0.0.1", port=stack.redis_port, password=stack.env["FARM_REDIS_PASSWORD"])
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("dir")["dir"] == str(stack.folder / "redis")
    r.close()


def test_sdist_through_the_stack_and_pip_installs_it(stack: Stack, tmp_path: Path) -> None:
    home = stack.folder / "home"
    assert (home / "admin.token").stat().st_mode & 0o077 == 0
    assert "token = " in (stack.folder / "worker" / "farm.toml").read_text()

    sdist = make_sdist(make_project(tmp_path, "farmtest-compose", version="1.2.0"), tmp_path / "dist")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    res = subprocess.run([sys.executable, "-m", "farm.cli", "--home", str(home), "--server", stack.url,
                          "submit", "--wait", "--timeout", "420", str(sdist)],
                         env=env, capture_output=True, text=True, timeout=480)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{stack.logs()}"

    jobs = httpx.get(f"{stack.url}/api/jobs", headers={"Authorization": f"Bearer {(home / 'admin.token').read_text().strip()}"},
                     timeout=10).json()
    assert any(j.get("state") == "succeeded" for j in (jobs if isinstance(jobs, list) else jobs.get("jobs", []))), jobs

    # Built in the build image by the container worker, verified in the clean image.
    files = home / "index" / "files" / "farmtest-compose"
    wheel = next(files.glob("*.whl"))
    assert "cp311-cp311-manylinux" in wheel.name, wheel.name
    statement = json.loads((files / f"{wheel.name}.provenance.json").read_text())
    assert "cibuildwheel" in statement["predicate"]["runDetails"]["builder"]["version"]
    verification = next(b for b in statement["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification")
    assert verification["annotations"]["passed"] is True
    assert verification["annotations"]["environment"].startswith("container:")

    out = installed_and_run(f"{stack.url}/simple/", tmp_path, "farmtest-compose==1.2.0",
                            "import farmtest_compose; print(farmtest_compose.add(2, 3))")
    assert out == "5"
