"""Images for another architecture than the host's (`farm image build --arch arm64` on x86_64).

`debootstrap --foreign` unpacks the arm64 packages on the host, then
`/debootstrap/debootstrap --second-stage` runs inside the root file system under `chroot`, each arm64
program run by the emulator (farm/util/emulation.py; set up once, as root, by scripts/install-qemu.sh,
docs/operating.md). The setup script of farm/images/debootstrap.py runs the same way, and the result
is imported as `linux/arm64`, so Docker and cibuildwheel run its containers as that platform.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from farm.errors import InfrastructureFault
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.emulation import Arch, arch, emulated, emulator, host

__all__ = ["Arch", "arch", "docker_import", "emulated", "foreign_debootstrap", "host"]


def foreign_debootstrap(*, target: Arch, suite: str, packages: list[str], root: Path, mirror: str,
                        log: TextIO) -> None:
    """debootstrap of `target` into `root` on a host of another architecture: the first stage on the
    host, the second in a chroot under the emulator (in a private mount namespace)."""
    emulator(target)
    env = clean_env({"DEBIAN_FRONTEND": "noninteractive"})
    first = ["debootstrap", "--foreign", f"--arch={target.debian}", "--variant=minbase",
             f"--include={','.join(packages)}", suite, root, mirror]
    inner = ('set -e; mount -t proc proc "$1/proc"; mount --rbind /dev "$1/dev"; '
             'exec chroot "$1" /debootstrap/debootstrap --second-stage')
    second = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", inner, "sh", root]
    log.write(f"debootstrap of {suite} for {target.debian} under {target.qemu} emulation\n")
    try:
        run(first, env=env, log=log, timeout=3600)
        run(second, env={**env, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            log=log, timeout=7200)
    except CommandFailed as exc:
        raise InfrastructureFault("image", f"debootstrap of {suite} for {target.debian} failed: {exc}") from exc


def docker_import(tarball: Path, tag: str, *, changes: list[str], target: Arch, docker_host: str,
                  log: TextIO) -> None:
    """`docker import --platform` of a root file system tarball for `target`."""
    argv = ["docker", "import", "--platform", target.docker, *[a for c in changes for a in ("--change", c)],
            tarball, tag]
    env = clean_env({"DOCKER_HOST": docker_host} if docker_host else {})
    try:
        run(argv, env=env, log=log, timeout=1800)
    except (CommandFailed, OSError) as exc:
        raise InfrastructureFault("image", f"docker import of {tarball.name} as {target.docker} failed: {exc}") from exc
