"""The farm's one way to talk to a Docker engine: a client, image facts, and a disposable container.

The engine is the private one started by `scripts/docker-up.sh` (or whatever `docker_host` /
`DOCKER_HOST` names). Every container the farm starts here is limited (memory, processes,
optionally no capabilities), has either no network or the host's, and is removed afterwards.
"""

from __future__ import annotations

import io
import math
import os
import shlex
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, TextIO

from farm.errors import ContainerCommandFailed, FarmError, InfrastructureFault

Network = Literal["none", "host"]


def resolve_docker_host(docker_host: str | None = None) -> str:
    """The configured engine address: the argument, else `DOCKER_HOST`; empty when neither is set."""
    return docker_host or os.environ.get("DOCKER_HOST", "")


def docker_client(docker_host: str | None = None, *, timeout: float = 600, step: str = "docker"):  # type: ignore[no-untyped-def]
    """A docker SDK client for the engine, checked with a ping. InfrastructureFault when it does not answer."""
    import docker
    from docker.errors import DockerException

    host = resolve_docker_host(docker_host)
    if not host:
        raise InfrastructureFault(step, "no Docker engine configured: set docker_host (FARM_DOCKER_HOST) or "
                                        "DOCKER_HOST, e.g. with `eval \"$(scripts/docker-up.sh)\"`")
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=int(timeout))
        client.ping()
    except (DockerException, OSError) as exc:
        raise InfrastructureFault(step, f"the Docker engine at {host} does not answer: {exc}") from exc
    return client


def docker_answers(docker_host: str | None = None) -> str | None:
    """None when the engine answers, else the reason it does not (for skips and health checks)."""
    try:
        docker_client(docker_host, timeout=10).close()
    except InfrastructureFault as exc:
        return str(exc)
    return None


def image_digest(client, image: str) -> str:  # type: ignore[no-untyped-def]
    """The image's registry digest (`name@sha256:...`) when it has one, else its id (`sha256:...`)."""
    from docker.errors import ImageNotFound

    try:
        attrs = client.images.get(image).attrs
    except ImageNotFound as exc:
        raise FarmError(f"image {image!r} is not present on the Docker engine (build it with `farm image build`)") from exc
    digests = attrs.get("RepoDigests") or []
    return digests[0] if digests else attrs["Id"]


def image_labels(client, image: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    attrs = client.images.get(image).attrs
    return dict((attrs.get("Config") or {}).get("Labels") or {})


@dataclass(frozen=True, kw_only=True)
class Limits:
    memory: str = "2g"
    pids: int = 1024
    cpus: float | None = None  # None: no CPU quota
    drop_capabilities: bool = False  # drop every capability (verification runs need none)
    capabilities: tuple[str, ...] = ()  # with drop_capabilities: the ones added back (a root phase's)


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    argv: list[str]
    exit_code: int
    output: str
    seconds: float

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def local_engine(docker_host: str) -> bool:
    """Whether the engine runs on this host (a unix socket or named pipe), so that a host path can be
    bind-mounted; an engine reached over TCP or SSH sees its own file system, not this one. An empty
    `docker_host` means DOCKER_HOST, and without that the engine's local default socket."""
    host = docker_host or os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith(("unix://", "npipe://", "/"))


@dataclass
class Container:
    """A running container kept alive by `sleep infinity`, for a series of `call`s; removed on exit.

        with Container(client, "img", network="none", limits=Limits(memory="1g")) as c:
            c.copy_into(Path("dist"), "/wheels")
            c.call(["python3", "-m", "venv", "/tmp/venv"], log=log)
    """

    client: object
    image: str
    network: Network = "none"
    limits: Limits = field(default_factory=Limits)
    user: str | None = None  # default user of every call (None: the image's)
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    read_only_files: Mapping[str, str] = field(default_factory=dict)  # host path -> path in the container
    # > 0: the container lives at most this many seconds and the engine removes it once it stops, so
    # leaving only kills it (the engine's removal, ~0.3 s, is off the caller's path; nothing is copied
    # out of such a container afterwards).
    lifetime: float = 0

    def __post_init__(self) -> None:
        self._container = None

    @property
    def id(self) -> str:
        assert self._container is not None, "container not started"
        return self._container.id  # type: ignore[attr-defined]

    def __enter__(self) -> Container:
        from docker.errors import DockerException, ImageNotFound

        kwargs: dict = {
            "command": ["sleep", str(math.ceil(self.lifetime)) if self.lifetime > 0 else "infinity"],
            "auto_remove": self.lifetime > 0,
            "detach": True,
            "network_mode": self.network,
            "mem_limit": self.limits.memory,
            "memswap_limit": self.limits.memory,
            "pids_limit": self.limits.pids,
            "environment": dict(self.environment),
            "labels": {"farm.role": "job", **self.labels},
            "security_opt": ["no-new-privileges"],
            "user": "0",
        }
        if self.read_only_files:  # bind mounts: only for an engine on this host (see local_engine)
            kwargs["volumes"] = {host: {"bind": inside, "mode": "ro"} for host, inside in self.read_only_files.items()}
        if self.limits.cpus:
            kwargs["nano_cpus"] = int(self.limits.cpus * 1e9)
        if self.limits.drop_capabilities:
            kwargs["cap_drop"] = ["ALL"]
            if self.limits.capabilities:
                kwargs["cap_add"] = list(self.limits.capabilities)
        try:
            self._container = self.client.containers.run(self.image, **kwargs)  # type: ignore[attr-defined]
        except ImageNotFound as exc:
            raise FarmError(f"image {self.image!r} is not present on the Docker engine") from exc
        except DockerException as exc:
            raise InfrastructureFault("container", f"could not start a container from {self.image}: {exc}") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        if self._container is None:
            return
        from docker.errors import DockerException

        try:
            if self.lifetime > 0:
                self._container.kill()  # type: ignore[attr-defined]  # the engine removes it (auto_remove)
            else:
                self._container.remove(force=True, v=True)  # type: ignore[attr-defined]
        except DockerException:
            pass
        self._container = None

    # Commands ----------------------------------------------------------------------------------
    def call(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
             workdir: str | None = None, user: str | None = None, timeout: float | None = None,
             log: TextIO | None = None, check: bool = True) -> ExecResult:
        """Run `argv` in the container, stream its output into `log`; the container is killed on timeout."""
        args = [os.fspath(a) for a in argv]
        api = self.client.api  # type: ignore[attr-defined]
        who = user if user is not None else self.user
        if log is not None:
            log.write(f"$ {shlex.join(args)}" + (f"  (as {who})" if who else "") + "\n")
            log.flush()
        start = time.monotonic()
        exec_id = api.exec_create(self.id, args, environment=dict(env or {}), workdir=workdir,
                                  user=who or "", stdout=True, stderr=True)["Id"]
        chunks: list[str] = []

        def pump() -> None:
            for chunk in api.exec_start(exec_id, stream=True, demux=False):
                text = chunk.decode("utf-8", "replace")
                chunks.append(text)
                if log is not None:
                    log.write(text)
            if log is not None:
                log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        reader.join(timeout)
        timed_out = reader.is_alive()
        if timed_out:
            self._container.kill()  # type: ignore[union-attr]
            reader.join(10)
        code = api.exec_inspect(exec_id).get("ExitCode")
        result = ExecResult(argv=args, exit_code=-9 if timed_out or code is None else code,
                            output="".join(chunks), seconds=time.monotonic() - start)
        if log is not None:
            log.write(f"  -> exit {result.exit_code} in {result.seconds:.2f} s\n")
            log.flush()
        if timed_out or (check and result.exit_code != 0):
            raise ContainerCommandFailed(result, timed_out=timed_out)
        return result

    def commit(self, repository: str, tag: str, *, changes: Sequence[str] = ()) -> str:
        """The container's file system as an image `repository:tag` (Dockerfile `changes` applied); its id."""
        image = self._container.commit(repository=repository, tag=tag, changes=list(changes))  # type: ignore[union-attr]
        return str(image.id)

    # Files ---------------------------------------------------------------------------------------
    def copy_into(self, src: Path, dest_dir: str | PurePosixPath, *, owner: int = 0,
                  name: str | None = None) -> str:
        """Copy a file or a tree into the folder `dest_dir` (created); return the path inside."""
        dest_dir = str(dest_dir)
        self.call(["mkdir", "-p", dest_dir], user="0")
        arcname = name or src.name

        def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = owner
            info.uname = info.gname = ""
            return info

        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(src, arcname=arcname, filter=own)
            buf.seek(0)
            if not self._container.put_archive(dest_dir, buf.read()):  # type: ignore[union-attr]
                raise InfrastructureFault("container", f"could not copy {src} into {self.image}:{dest_dir}")
        return f"{dest_dir.rstrip('/')}/{arcname}"

    def copy_out(self, src: str | PurePosixPath, dest_dir: Path) -> list[Path]:
        """Copy a file or folder out of the container into `dest_dir`; return the top-level paths made.

        Extraction uses tarfile's "data" filter: links pointing outside `dest_dir` (a venv's
        absolute interpreter link, say) are refused, so copy out results, not environments.
        """
        dest_dir.mkdir(parents=True, exist_ok=True)
        stream, _stat = self._container.get_archive(str(src))  # type: ignore[union-attr]
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as buf:
            for chunk in stream:
                buf.write(chunk)
            buf.seek(0)
            with tarfile.open(fileobj=buf, mode="r") as tar:
                tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
                tar.extractall(dest_dir, filter="data")
        return sorted(dest_dir / t for t in tops)

    def write_file(self, path: str, content: bytes | str, *, mode: int = 0o644, owner: int = 0) -> None:
        data = content.encode() if isinstance(content, str) else content
        parent, _, name = path.rstrip("/").rpartition("/")
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = len(data), mode, owner, owner
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        self.call(["mkdir", "-p", parent or "/"], user="0")
        self._container.put_archive(parent or "/", buf.getvalue())  # type: ignore[union-attr]
