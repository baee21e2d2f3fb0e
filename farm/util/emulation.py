"""Machine architectures, and whether this host runs another one's programs under QEMU user emulation.

On an x86_64 host, aarch64 programs (an arm64 image's chroot, the linux-aarch64 build and
verification containers) run under Debian's `qemu-aarch64-static`, registered with the kernel's
binfmt_misc by scripts/install-qemu.sh. Debian registers it with the F (fix-binary) flag: the kernel
holds the emulator open, so chroots and containers need no copy of it. `emulation()` is what a job
records about it; making images for another architecture is farm/images/arch.py.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from farm.errors import ConfigError, InfrastructureFault
from farm.util.cmd import run

BINFMT = Path("/proc/sys/fs/binfmt_misc")


@dataclass(frozen=True)
class Arch:
    debian: str  # debootstrap's --arch: amd64, arm64
    machine: str  # uname -m and the wheel tags' architecture: x86_64, aarch64
    docker: str  # Docker's platform: linux/amd64, linux/arm64
    qemu: str  # the binfmt_misc entry of its emulator

    @property
    def elf_machine(self) -> int:
        """e_machine of its ELF files."""
        return ELF_MACHINES[self.machine]


ARCHES = {a.debian: a for a in (
    Arch(debian="amd64", machine="x86_64", docker="linux/amd64", qemu="qemu-x86_64"),
    Arch(debian="arm64", machine="aarch64", docker="linux/arm64", qemu="qemu-aarch64"),
)}
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def arch(name: str) -> Arch:
    """An architecture by Debian's name (arm64) or the machine's (aarch64)."""
    for a in ARCHES.values():
        if name in (a.debian, a.machine):
            return a
    raise ConfigError(f"unknown architecture {name!r} (known: {', '.join(ARCHES)})")


def host_machine() -> str:
    machine = platform.machine()
    return _MACHINE_ALIASES.get(machine.lower(), machine)


def host() -> Arch:
    return arch(host_machine())


def emulated(machine: str) -> bool:
    """Whether programs for `machine` (x86_64, aarch64) run under emulation on this host."""
    return _MACHINE_ALIASES.get(machine, machine) != host_machine()


def emulator(target: Arch, binfmt: Path = BINFMT, *, step: str = "image") -> dict[str, str]:
    """The kernel's registration of `target`'s emulator: {"interpreter": ..., "flags": ...}, or an
    InfrastructureFault that says how to set it up."""
    entry = binfmt / target.qemu
    fix = "run scripts/install-qemu.sh as root (qemu-user-static, binfmt-support, binfmt_misc mounted)"
    if not (binfmt / "register").exists():
        raise InfrastructureFault(step, f"binfmt_misc is not mounted on {binfmt}: {fix}")
    try:
        text = entry.read_text()
    except OSError:
        raise InfrastructureFault(step, f"no {target.qemu} emulator is registered with the kernel "
                                           f"({entry} is missing): {fix}") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "enabled":
        raise InfrastructureFault(step, f"the {target.qemu} emulator is registered but disabled: "
                                           f"update-binfmts --enable {target.qemu}")
    flags = _field(text, "flags")
    if "F" not in flags:
        raise InfrastructureFault(step, f"the {target.qemu} emulator is registered without the F (fix-binary) "
                                           "flag, so chroots and containers cannot run it: reinstall Debian's "
                                           "qemu-user-static and run update-binfmts --enable " + target.qemu)
    return {"interpreter": _field(text, "interpreter"), "flags": flags}


def emulation(machine: str, binfmt: Path = BINFMT, *, step: str = "build") -> dict[str, str] | None:
    """What a build or verification for `machine` records: None when it runs natively, else the host's
    machine, the target's and the emulator (its binfmt interpreter and QEMU's version)."""
    if not emulated(machine):
        return None
    target = arch(machine)
    registered = emulator(target, binfmt, step=step)
    return {"host": host_machine(), "target": target.machine, "emulator": target.qemu,
            "interpreter": registered["interpreter"], "qemu": qemu_version(target)}


def qemu_version(target: Arch) -> str:
    exe = f"/usr/bin/{target.qemu}-static"
    try:
        out = run([exe, "--version"], timeout=30, check=False).output
    except OSError:
        return "unknown"
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else "unknown"


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:?\s+(.*)$", text, re.M)
    return m.group(1).strip() if m else ""
