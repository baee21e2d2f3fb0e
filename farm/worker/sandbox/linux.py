"""Linux: bubblewrap (Debian's `bubblewrap`), then an unprivileged uid without capabilities.

One command line per sandboxed command, when the worker runs as root (the usual case):

    bwrap --unshare-pid --unshare-net --unshare-ipc --unshare-uts --unshare-cgroup-try [--share-net]
          --die-with-parent --new-session
          --ro-bind /usr /usr (+ /bin, /lib... as on the host) --ro-bind /etc /etc --proc /proc --dev /dev
          --bind JOB/tmp /tmp --ro-bind READABLE... --bind WRITABLE... --chdir CWD --
      setpriv --reuid U --regid U --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs
        prlimit --as=M --nproc=P --fsize=F --cpu=C -- ARGV

- new pid, ipc, uts, cgroup, mount and network namespaces: no network at all, not even the host's
  loopback (Redis, the API), unless the recipe grants it; none of the host's processes;
- a root file system that holds only the system folders (read-only) and the paths the policy
  names: no `FARM_HOME`, `/root`, `/home`, `/run` (the Docker socket), `/opt`, `/srv`, `/var`;
- package code runs as `sandbox_uid` (default 65534, nobody) with no capabilities, an empty
  bounding set and no-new-privs: it cannot mount, `nsenter` back, ptrace or signal the farm, and
  the host's root-only files (/etc/shadow, private keys) stay unreadable;
- limits (address space, processes of that uid, file size, CPU time) set with prlimit;
- the pid namespace dies with its first process (and that with the worker: `--die-with-parent`),
  so no daemon outlives its command and no open pipe holds the worker.

A worker that does not run as root gets the same through an unprivileged user namespace
(`--unshare-user`, itself mapped to nobody inside); its bind sources must then be reachable by it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from farm.errors import InfrastructureFault
from farm.worker.sandbox import Policy, Wrapped, make_folders

# System folders shown read-only. /usr carries the compilers, headers and pkg-config files;
# /etc the CA bundle, passwd (nobody), the alternatives (cc), resolv.conf for granted network.
SYSTEM = ("/usr", "/etc")
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
NOBODY = 65534


@lru_cache(maxsize=1)
def _tools() -> tuple[str, str, str]:
    found = [shutil.which(t) for t in ("bwrap", "setpriv", "prlimit")]
    if found[0] is None:
        raise InfrastructureFault("sandbox", "bubblewrap is not installed on this worker (apt-get install bubblewrap; "
                                  "scripts/setup.sh does it), and package code runs only inside it "
                                  "(or set sandbox = false to accept running it with the worker's rights)")
    if None in found:
        raise InfrastructureFault("sandbox", "setpriv and prlimit (util-linux) are needed to drop rights and limit "
                                  "package code")
    return found[0], found[1], found[2]  # type: ignore[return-value]


class Bubblewrap:
    name = "bubblewrap"

    def __init__(self, *, uid: int = NOBODY) -> None:
        self.uid = uid

    @property
    def _root(self) -> bool:
        return os.geteuid() == 0

    def wrap(self, argv: Sequence[str], policy: Policy) -> Wrapped:
        bwrap, setpriv, prlimit = _tools()
        box = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               *(["--share-net"] if policy.network else []), "--die-with-parent", "--new-session",
               "--hostname", "sandbox"]
        if not self._root:
            box += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
        box += _system_binds(policy.network)
        box += ["--proc", "/proc", "--dev", "/dev"]
        box += ["--bind", str(policy.tmp), "/tmp"] if policy.tmp else ["--tmpfs", "/tmp"]
        made: set[str] = {"/", "/tmp", "/proc", "/dev", *SYSTEM}
        for flag, paths in (("--ro-bind", policy.readable), ("--bind", policy.writable)):
            for path in _dedupe(paths):
                box += _parents(path, made)
                box += [flag, str(path), str(path)]
                made.add(str(path))
        box += ["--chdir", str(policy.cwd), "--"]
        inner: list[str] = []
        if self._root:
            inner += [setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                      "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        limits = policy.limits
        rl = [f"--as={limits.memory}" if limits.memory else "", f"--nproc={limits.processes}" if limits.processes else "",
              f"--fsize={limits.file_size}" if limits.file_size else "",
              f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 5}" if limits.cpu_seconds else ""]  # SIGXCPU, then SIGKILL
        if any(rl):
            inner += [prlimit, *filter(None, rl), "--"]
        return Wrapped(argv=[*box, *inner, *argv])

    def prepare(self, policy: Policy) -> None:
        """The writable folders (and /tmp's) belong to the sandbox's uid: chown them, recursively."""
        for root in make_folders(policy):
            if self._root:
                _chown_tree(root, self.uid)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "tool": _tools()[0], "uid": self.uid if self._root else NOBODY,
                "namespaces": ["pid", "ipc", "uts", "net", "mount", "cgroup", *([] if self._root else ["user"])]}


def _system_binds(network: bool) -> list[str]:
    args: list[str] = []
    for folder in SYSTEM:
        args += ["--ro-bind", folder, folder]
    for link in USR_LINKS:
        p = Path(link)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), link]
        elif p.is_dir():
            args += ["--ro-bind", link, link]
    if network:  # resolv.conf may point into /run (systemd-resolved): show its target as well
        resolv = Path("/etc/resolv.conf").resolve()
        if resolv.is_file() and not str(resolv).startswith(SYSTEM):
            args += ["--ro-bind", str(resolv), str(resolv)]
    return args


def _parents(path: Path, made: set[str]) -> list[str]:
    """Folders above a bind target, made traversable (bwrap would copy the host's modes: /root is 0700)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        p = str(parent)
        if p not in made and not p.startswith(tuple(f"{s}/" for s in SYSTEM)):
            args += ["--perms", "0755", "--dir", p]
            made.add(p)
    return args


def _dedupe(paths: Sequence[Path]) -> list[Path]:
    """Existing paths, each once, system folders left out (they are shown already)."""
    seen: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.exists() and p not in seen and not str(p).startswith(tuple(f"{s}/" for s in SYSTEM)):
            seen.append(p)
    return seen


def _chown_tree(root: Path, uid: int) -> None:
    if os.lstat(root).st_uid != uid:
        os.lchown(root, uid, uid)
    if root.is_symlink() or not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            if os.lstat(path).st_uid != uid:
                os.lchown(path, uid, uid)
