"""Images for another architecture than the host's (`farm image build --arch arm64` on x86_64).

`debootstrap --foreign` unpacks the arm64 packages on the host, then
`/debootstrap/debootstrap --second-stage` runs inside the root file system under `chroot`, each arm64
program run by the emulator (farm/util/emulation.py; set up once, as root, by scripts/install-qemu.sh,
docs/operating.md). The setup script of farm/images/debootstrap.py runs the same way, and the result
is loaded as a `linux/arm64` image, so Docker and cibuildwheel run its containers as that platform.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import TextIO

from farm.errors import InfrastructureFault
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.hashing import sha256_file
from farm.util.emulation import Arch, arch, emulated, emulator, host

__all__ = ["Arch", "arch", "docker_load", "emulated", "foreign_debootstrap", "host"]


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
        _fast_dpkg(root)
        run(second, env={**env, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            log=log, timeout=7200)
    except CommandFailed as exc:
        raise InfrastructureFault("image", f"debootstrap of {suite} for {target.debian} failed: {exc}") from exc


# dpkg under emulation: no fsync per file (the root file system is tarred afterwards, a crash means a
# rebuild anyway) and no documentation, manual pages or translations unpacked (copyright files kept).
# It stays in the image, so packages a job installs under emulation are unpacked the same way.
# (minbase has no man-db, so there are no manual-page triggers to turn off.)
DPKG_EMULATED = """force-unsafe-io
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
"""


def _fast_dpkg(root: Path) -> None:
    """The dpkg configuration of DPKG_EMULATED, in place before the second stage runs dpkg."""
    folder = root / "etc/dpkg/dpkg.cfg.d"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wheel-farm-emulated").write_text(DPKG_EMULATED)


def docker_load(client, layer: Path, tag: str, *, env: dict[str, str], labels: dict[str, str],  # type: ignore[no-untyped-def]
                cmd: list[str], target: Arch, log: TextIO) -> None:
    """The root file system tarball `layer` as image `tag` for `target`, by `docker load` of an image
    archive whose configuration names the architecture (`docker import --platform` records only the
    OS on Docker 20.10, and cibuildwheel runs an image whose architecture is not the one it asks for
    only after pulling it, which a local image cannot be)."""
    from docker.errors import DockerException

    diff_id = f"sha256:{sha256_file(layer)}"
    config = json.dumps({
        "architecture": target.docker.split("/")[1], "os": "linux",
        "config": {"Env": [f"{k}={v}" for k, v in env.items()], "Labels": labels, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"wheel-farm: debootstrap of {target.debian} under emulation"}],
    }, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    archive = layer.with_name("image-archive.tar")
    with tarfile.open(archive, "w") as tar:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(layer, arcname="layer.tar")
    log.write(f"docker load of {tag} ({target.docker})\n")
    log.flush()
    try:
        with open(archive, "rb") as f:
            client.images.load(f)
    except DockerException as exc:
        raise InfrastructureFault("image", f"docker load of {tag} for {target.docker} failed: {exc}") from exc
    finally:
        archive.unlink(missing_ok=True)
