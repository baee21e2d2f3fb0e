"""The root phase of a container build: the image the unprivileged cibuildwheel build starts from.

cibuildwheel runs every command of a build (before-all, before-build, the front end, the repair)
through one shell in one long-lived container, as that container's user, and copies the project in
with `docker exec` as the same user. So the farm splits a container build in two:

1. **Root phase** (here): a container of the build image, as root with only the capabilities package
   managers need (`ROOT_CAPABILITIES`), no network, no-new-privileges, memory and process limits,
   the system package files mounted read-only. It installs the recipe's system packages offline,
   runs the recipe's `before-all` (`{project}` is the source tree, read-only at `/farm/project`),
   then makes what cibuildwheel writes outside /tmp (`/project`, `/output`, its CA bundle and
   constraints files) and a HOME, owned by the build user. The container is committed as an image.
2. **Build**: cibuildwheel's container of that image runs as the build user (`--user`), with
   `--cap-drop ALL` and nothing added back, no-new-privileges, no network: the package's code
   (setup.py, the backend, before-build, the repair) never runs as root and holds no capability.

A prepared image is reused by later builds with the same inputs (the base image's digest, the
package manager family, the system package names, before-all, the container environment and the
build user; the job's Python only when there is a script to run, so without one every Python of a
matrix starts from the same prepared image; with `{project}` in before-all, also the sdist's sha256)
for `MAX_AGE` seconds; then
the packages are downloaded and installed again (security updates). The jobs of one host make a
prepared image one at a time per key (a lock in FARM_HOME), so the Pythons of a matrix make it once.
Older prepared images of the same inputs are removed when a new one is made, once they are
`IN_USE_GRACE` old (a build of another farm on the same engine may be about to start from one).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from farm.containers import Container, ContainerCommandFailed, Limits
from farm.errors import CommandTimeout, InfrastructureFault
from farm.worker.engines.base import BuildContext
from farm.worker.hints import build_failure
from farm.util.locks import host_lock
from farm.worker.platforms.linux import parse_libc

REPOSITORY = "wheel-farm/prepared"
KEY_LABEL = "farm.prepared-key"
MADE_LABEL = "farm.prepared-at"
LIBC_LABEL = "farm.libc"  # the image's C library: "glibc-2.31", "musl-1.2"
MAX_AGE = 24 * 3600.0
IN_USE_GRACE = 600.0  # a replaced prepared image younger than this may be in use by a build about to start
PROJECT_IN_ROOT_PHASE = "/farm/project"
HOME = "/farm/home"
# What apt/dnf/apk in the root phase need (file ownership, dropping to their own users); none of
# NET_RAW, SYS_CHROOT, MKNOD, KILL, AUDIT_WRITE, SETPCAP, SETFCAP, NET_BIND_SERVICE.
ROOT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID")
# Written by cibuildwheel (4.x) outside /tmp, as the container's user: made here for the build user.
CIBW_FOLDERS = ("/project", "/output", HOME)
CIBW_FILES = ("/cibuildwheel-ca-bundle.pem", "/constraints.txt")
_FORMAT = 1  # bump when what the root phase makes changes


@dataclass(frozen=True, kw_only=True)
class Prepared:
    image: str  # the image id the build container starts from
    key: str
    reused: bool
    seconds: float


def root_script(ctx: BuildContext, *, install: str | None, before_all: Sequence[str]) -> str | None:
    """The package manager's offline install and the recipe's before-all, as one script (None: nothing to run)."""
    commands = ([install] if install else []) + [c.replace("{project}", PROJECT_IN_ROOT_PHASE) for c in before_all]
    if not commands:
        return None
    return "set -e\n" + "\n".join(commands)


def key(ctx: BuildContext, *, digest: str, family: str, packages: Sequence[str], script: str | None,
        env_script: str, user: str) -> str:
    """What the prepared image depends on, as a sha256."""
    uses_project = script is not None and PROJECT_IN_ROOT_PHASE in script
    inputs = {"format": _FORMAT, "image": digest, "family": family, "packages": sorted(packages), "script": script,
              "environment": env_script if script else None, "user": user,
              # the Python matters only to a script (its PATH): without one, a matrix's Pythons share the image
              "python": ctx.spec.python if script else None,
              "sdist": ctx.spec.sdist.sha256 if uses_project else None}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def find(client, prepared_key: str) -> str | None:  # type: ignore[no-untyped-def]
    """The newest prepared image for `prepared_key` younger than `MAX_AGE`, else None."""
    now = time.time()
    best: tuple[float, str] | None = None
    for image in client.images.list(filters={"label": f"{KEY_LABEL}={prepared_key}"}):
        made = _made(image)
        if now - made < MAX_AGE and (best is None or made > best[0]):
            best = (made, image.id)
    return best[1] if best else None


def libc(client, image_id: str) -> tuple[str, int, int] | None:  # type: ignore[no-untyped-def]
    """The C library the root phase found in a prepared image, as `parse_libc` gives it (None: not recorded)."""
    m = re.fullmatch(r"(glibc|musl)-(\d+)\.(\d+)", (client.images.get(image_id).labels or {}).get(LIBC_LABEL, ""))
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def _made(image) -> float:  # type: ignore[no-untyped-def]
    try:
        return float((image.labels or {}).get(MADE_LABEL, "0"))
    except ValueError:
        return 0.0


def prepare(ctx: BuildContext, client, *, image: str, prepared_key: str, script: str | None, env_script: str,  # type: ignore[no-untyped-def]  # noqa: PLR0913
            user: str, python: str, mounts: Mapping[str, str], labels: Mapping[str, str]) -> Prepared:
    """Run the root phase in a container of `image` and commit it; or reuse a prepared image. The jobs
    of this host make one prepared image per key at a time: another job needing it waits, then reuses it."""
    with host_lock(ctx.settings.home / "cache" / "prepared-images" / f"{prepared_key[:32]}.lock"):
        return _prepare(ctx, client, image=image, prepared_key=prepared_key, script=script, env_script=env_script,
                        user=user, python=python, mounts=mounts, labels=labels)


def _prepare(ctx: BuildContext, client, *, image: str, prepared_key: str, script: str | None, env_script: str,  # type: ignore[no-untyped-def]  # noqa: PLR0913
             user: str, python: str, mounts: Mapping[str, str], labels: Mapping[str, str]) -> Prepared:
    start = time.monotonic()
    found = find(client, prepared_key)
    if found:
        ctx.log.write(f"prepared image {found[:19]} reused (system packages and before-all already in it)\n")
        return Prepared(image=found, key=prepared_key, reused=True, seconds=time.monotonic() - start)
    from docker.errors import DockerException

    limits = Limits(memory=ctx.settings.build_memory, pids=ctx.settings.build_pids, drop_capabilities=True,
                    capabilities=ROOT_CAPABILITIES)
    folders, files = " ".join(CIBW_FOLDERS), " ".join(CIBW_FILES)
    own = (f"mkdir -p {folders} && touch {files} && chown {user} {folders} {files} && "
           f"chmod 0755 {folders} && chmod 0644 {files}")
    try:
        with Container(client, image, network="none", limits=limits, labels=labels, user="0",
                       environment={"DEBIAN_FRONTEND": "noninteractive"}, read_only_files=dict(mounts)) as box:
            if script is not None:
                path = f"{python.rpartition('/')[0]}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                argv = ["sh", "-c", f"export PATH={shlex.quote(path)} PIP_ROOT_USER_ACTION=ignore "
                                    f"{env_script}; {script}"]
                ctx.commands.append(shlex.join(argv))
                ctx.log.write("root phase (system packages, before-all), no network:\n")
                try:
                    box.call(argv, env={"SOURCE_DATE_EPOCH": str(ctx.src.timestamp)}, workdir="/", log=ctx.log,
                             timeout=ctx.settings.cibuildwheel_timeout)
                except ContainerCommandFailed as exc:
                    if exc.timed_out:
                        raise CommandTimeout("build", f"the root phase (system packages, before-all) timed out: {exc}") from exc
                    raise build_failure(f"the recipe's system packages or before-all failed: {exc}",
                                        exc.result.output) from exc
            kind, major, minor = parse_libc(box.call(["sh", "-c", f"{own} && (ldd --version 2>&1 | head -n 2; true)"],
                                                     timeout=120).output)
            made, label = str(int(time.time())), f"{kind}-{major}.{minor}"
            committed = box.commit(REPOSITORY, prepared_key[:16], changes=[
                f"LABEL {KEY_LABEL}={prepared_key} {MADE_LABEL}={made} {LIBC_LABEL}={label}", f"ENV HOME={HOME}",
                f"USER {user}", 'CMD ["/bin/bash"]'])
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed while the build image was prepared: {exc}") from exc
    _remove_older(client, prepared_key, keep=committed)
    seconds = time.monotonic() - start
    ctx.log.write(f"prepared image {committed[:19]} made in {seconds:.1f} s\n")
    return Prepared(image=committed, key=prepared_key, reused=False, seconds=seconds)


def _remove_older(client, prepared_key: str, *, keep: str) -> None:  # type: ignore[no-untyped-def]
    """Earlier prepared images of the same inputs made more than `IN_USE_GRACE` ago, and any past
    `MAX_AGE`. One a build's container uses stays (the engine refuses); a younger one may be about to
    be used by a build that found it (another farm on the same engine) and stays until a later pass."""
    from docker.errors import DockerException

    now = time.time()
    try:
        for image in client.images.list(filters={"label": KEY_LABEL}):
            same = (image.labels or {}).get(KEY_LABEL) == prepared_key
            age = now - _made(image)
            if image.id != keep and ((same and age >= IN_USE_GRACE) or age >= MAX_AGE):
                try:
                    client.images.remove(image.id)
                except DockerException:
                    pass
    except DockerException:
        pass
