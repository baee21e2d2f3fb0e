"""Verification in a clean container: the wheel must work where no compiler and no -dev package is.

A container from the verification image (no network, no capabilities, a memory limit, the
image's unprivileged user when it has one) gets the wheel and its dependency wheels copied in, a
fresh virtual environment, `pip install --no-index --find-links` of the wheel and the test
requirements, an import of each module and the recipe's test command. A wheel that links a
library the image lacks (an unrepaired wheel) fails its import here. The container is removed
afterwards whatever happens.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from packaging.utils import parse_wheel_filename

from farm.containers import Container, ContainerCommandFailed, Limits, docker_client, image_digest, local_engine
from farm.errors import FarmError, InfrastructureFault, PackageFailure
from farm.util.python_tags import PythonTag
from farm.worker.python2 import Tools

ROOT = "/tmp/farm"
WHEELS = f"{ROOT}/wheels"
VENV = f"{ROOT}/venv"
RUN_DIR = f"{ROOT}/run"
PROJECT_DIR = f"{ROOT}/project"
TOOLS_DIR = "/tmp/farm-tools"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(kw_only=True)
class ContainerVerifyResult:
    passed: bool
    image_digest: str
    commands: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0
    install_command: str = ""
    warnings: list[str] = field(default_factory=list)  # imports that need what the wheel does not declare


class VerifyBox:
    """A running verification container: the engine client, the image's digest and user, the
    container (with the worker's uv mounted where the engine is on this host) and the user id inside.

    Made by `start()` when verification begins, or ahead of time by `start_early()` while the build
    runs, so that starting it is off the job's critical path. `close()` kills it; the engine removes
    it (auto-remove), and it ends by itself after its lifetime if nobody closes it.
    """

    def __init__(self, *, image: str, docker_host: str, timeout: float, memory: str = "2g", pids: int = 1024) -> None:
        self.image, self.docker_host, self.timeout = image, docker_host, timeout
        self.memory, self.pids = memory, pids
        self.client = None
        self.digest = ""
        self.user: str | None = None
        self.box: Container | None = None
        self.uid = 0
        self.mounted_uv: str | None = None
        self.host_uv = Path()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def start_early(cls, **kw: object) -> VerifyBox:
        """Start in a background thread; `ready()` waits for it (and re-raises what it raised)."""
        vb = cls(**kw)  # type: ignore[arg-type]

        def run() -> None:
            try:
                vb.start()
            except BaseException as exc:  # noqa: BLE001 - handed to ready()
                vb._error = exc

        vb._thread = threading.Thread(target=run, name="verify-box", daemon=True)
        vb._thread.start()
        return vb

    def start(self) -> VerifyBox:
        from farm.worker.engines.native import uv_bin

        client = docker_client(self.docker_host, step="verify")
        with self._lock:
            self.client = client
        try:
            self.digest = image_digest(client, self.image)
        except FarmError as exc:
            raise InfrastructureFault("verify", str(exc)) from exc
        self.user = _image_user(client, self.image)
        limits = Limits(memory=self.memory, pids=self.pids, drop_capabilities=True)
        self.host_uv = Path(uv_bin()).resolve()
        # The worker's uv, mounted read-only where the engine shares this host (copying its 40 MB in
        # took 0.4 s per job); copied in otherwise.
        mounted = {str(self.host_uv): f"{TOOLS_DIR}/uv"} if local_engine(self.docker_host) else {}
        self.mounted_uv = f"{TOOLS_DIR}/uv" if mounted else None
        box = Container(client, self.image, network="none", limits=limits, user=self.user or "0",
                        labels={"farm.role": "verify"}, read_only_files=mounted, lifetime=self.timeout + 60)
        box.__enter__()
        with self._lock:
            self.box = box
            if self._closed:  # closed while it was starting
                box.remove()
                raise InfrastructureFault("verify", "the verification container was closed while starting")
        self.uid = int(box.call(["sh", "-c", f"mkdir -p {WHEELS} {RUN_DIR} {PROJECT_DIR} && id -u"],
                                workdir="/").output.strip().splitlines()[-1] or 0)
        return self

    def ready(self) -> VerifyBox:
        if self._thread is not None:
            self._thread.join()
            if self._error is not None:
                raise self._error
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            box, client = self.box, self.client
        if box is not None:
            box.remove()
        if client is not None and (self._thread is None or not self._thread.is_alive()):
            client.close()


def verify_in_container(*, wheel: Path, dependency_wheels: Sequence[Path], image: str, requires: Sequence[str],
                        imports: Sequence[str], test_command: str | None, project: Path | None, log: TextIO,
                        timeout: float, docker_host: str, memory: str = "2g", pids: int = 1024,
                        early: VerifyBox | None = None, python: str | None = None,
                        python2_tools: Tools | None = None) -> ContainerVerifyResult:
    """Install `wheel` (with `dependency_wheels` as the only index) in `image` and test it.

    `python`: the target's Python (cp313; a pure or abi3 wheel is verified on several), found in the
    image's /opt/python, else the wheel's own, else the image's python3. `python2_tools`: for
    Python 2.7, the farm's virtualenv 16 and pip 20.3 (farm/worker/python2.py), copied in; uv and
    the venv module make no Python 2 environment.

    `early`: a container for `image` started while the build ran (`VerifyBox.start_early`), used
    instead of starting one now; it is closed here either way.
    `passed` is False when the install, an import or the test command fails or the time runs out;
    InfrastructureFault when the engine or the image is not there.
    """
    bad = [m for m in imports if not _MODULE.fullmatch(m)]
    if bad:
        if early is not None:
            early.close()
        raise PackageFailure("verify", f"not module names: {', '.join(map(repr, bad))}")
    start = time.monotonic()
    deadline = start + timeout
    commands: list[str] = []
    output: list[str] = []
    install_command = ""
    warnings: list[str] = []
    vb = early if early is not None and early.image == image else None
    if early is not None and vb is None:
        early.close()
    if vb is None:
        vb = VerifyBox(image=image, docker_host=docker_host, timeout=timeout, memory=memory, pids=pids)
    try:
        vb.ready() if early is vb else vb.start()
        box = vb.box
        assert box is not None
        log.write(f"verifying {wheel.name} in {image} ({vb.digest}), network none, user {vb.user or 'root'}, "
                  f"container {box.id[:12]} (killed afterwards; the engine removes it)\n")

        def call(argv: list[str], *, shown: str | None = None, **kw: object) -> str:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _OutOfTime()
            commands.append(shown or shlex.join(argv))
            output.append(f"$ {shown or shlex.join(argv)}\n")
            try:
                result = box.call(argv, env=env, workdir=RUN_DIR, timeout=remaining, log=log, **kw)  # type: ignore[arg-type]
            except ContainerCommandFailed as exc:
                output.append(exc.result.output)
                if exc.timed_out:
                    raise _OutOfTime() from exc
                raise
            output.append(result.output)
            return result.output

        env = {"HOME": ROOT, "PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "PIP_NO_CACHE_DIR": "1", "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_INPUT": "1"}
        uid = vb.uid
        for path in [wheel, *dependency_wheels]:
            box.copy_into(path, WHEELS, owner=uid)
        # The unpacked sdist is copied in only for a test command that uses it (pyyaml's: 0.7-0.9 s).
        uses_project = project is not None and any(k in (test_command or "") for k in ("{project}", "{package}"))
        project_in = box.copy_into(project, PROJECT_DIR, owner=uid) if uses_project else None  # type: ignore[arg-type]
        interpreter, uv = _probe(box, wheel, None if python2_tools else vb.mounted_uv, python=python)
        if uv is None and python2_tools is None:
            uv = _uv_into(box, uid, vb.host_uv)
        venv_python = f"{VENV}/bin/python"
        env["VIRTUAL_ENV"] = VENV
        env["PATH"] = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        try:
            if python2_tools is not None:
                pip = box.copy_into(python2_tools.pip_wheel, TOOLS_DIR, owner=uid)
                virtualenv = box.copy_into(python2_tools.virtualenv.parent, TOOLS_DIR, owner=uid)
                call([interpreter, f"{virtualenv}/virtualenv.py", "--quiet", "--no-download", "--no-pip",
                      "--no-setuptools", "--no-wheel", VENV])
                install = [venv_python, f"{pip}/pip", "install", "--no-python-version-warning",
                           "--disable-pip-version-check", "--only-binary=:all:"]
            elif uv:
                env.update({"UV_NO_CACHE": "1", "UV_NO_CONFIG": "1", "UV_OFFLINE": "1",
                            "UV_PYTHON_DOWNLOADS": "never"})
                call([uv, "venv", "--quiet", "--python", interpreter, VENV])
                install = [uv, "pip", "install", "--python", venv_python]
            else:
                call([interpreter, "-m", "venv", VENV])
                install = [venv_python, "-m", "pip", "install"]
            install += ["--no-index", "--find-links", WHEELS]
            install_command = shlex.join(install)
            call([*install, f"{WHEELS}/{wheel.name}", *requires])
            if imports:  # one interpreter start; a failing import's traceback names its module
                try:
                    call([venv_python, "-c", "; ".join(f"import {m}" for m in imports)])
                except ContainerCommandFailed as first:  # loaded, but needing what the wheel does not declare?
                    from farm.worker.verify import import_check_argv, undeclared_imports

                    argv = import_check_argv(venv_python, wheel, imports, requires)
                    warnings = undeclared_imports(call(argv, shown=shlex.join(argv[:2]) + " <import check> "
                                                       + shlex.quote(argv[3])))
                    if not warnings:
                        raise first
                    for w in warnings:
                        log.write(f"warning: {w}\n")
            if test_command:
                line = test_command.replace("{python}", shlex.quote(venv_python))
                for key in ("{project}", "{package}"):
                    line = line.replace(key, shlex.quote(project_in or PROJECT_DIR))
                call(["sh", "-c", line])
            passed = True
        except ContainerCommandFailed as exc:
            log.write(f"verification failed: {exc.result.command_line} exited with {exc.result.exit_code}\n")
            passed = False
        except _OutOfTime:
            message = f"verification timed out after {timeout:.0f} s\n"
            log.write(message)
            output.append(message)
            passed = False
    finally:
        vb.close()
    return ContainerVerifyResult(passed=passed, image_digest=vb.digest, commands=commands, output="".join(output),
                                 seconds=time.monotonic() - start, install_command=install_command,
                                 warnings=warnings)


class _OutOfTime(Exception):
    pass


def _image_user(client, image: str) -> str | None:  # type: ignore[no-untyped-def]
    """The unprivileged user to run as: the farm's label, else the image's USER, else None (root)."""
    config = client.images.get(image).attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    return labels.get("farm.user") or config.get("User") or None


def _uv_into(box: Container, uid: int, host_uv: Path) -> str | None:
    """The worker's uv copied into the container: a fresh venv and the install take well under a second,
    where `python -m venv` (ensurepip) and pip take 4-6 s. None where it does not run (a musl image)."""
    try:
        uv = box.copy_into(host_uv, TOOLS_DIR, owner=uid, name="uv-copy")
    except FarmError:
        return None
    return uv if box.call([uv, "--version"], workdir="/", check=False).exit_code == 0 else None


def _probe(box: Container, wheel: Path, uv: str | None, *, python: str | None = None) -> tuple[str, str | None]:
    """In one call: the interpreter for `python` (cp313: /opt/python/cp313-cp313), else the one matching
    the wheel's Python tag, else the image's python3; and whether `uv` (if given) runs there.
    (python, uv or None)"""
    candidates = []
    wanted = PythonTag.parse(python or "")
    if wanted is not None:
        candidates.append(f"/opt/python/{wanted.install_dir}/bin/python")
    for tag in parse_wheel_filename(wheel.name)[3]:
        # cp314-cp314t is the free-threaded build's folder; an abi3 or none wheel takes the GIL build's
        # (and cp27mu, no tag of the farm's, the cp27 folder)
        parsed = PythonTag.parse(tag.abi if tag.abi.startswith(tag.interpreter) else tag.interpreter) \
            or PythonTag.parse(tag.interpreter)
        if parsed is not None and parsed.implementation == "cp":
            candidates.append(f"/opt/python/{parsed.install_dir}/bin/python")
    find = "".join(f"[ -x {shlex.quote(c)} ] && echo {shlex.quote(c)}; " for c in dict.fromkeys(candidates))
    check_uv = f"{shlex.quote(uv)} --version >/dev/null 2>&1 && echo uv-runs; " if uv else ""
    script = f"{check_uv}({find}command -v python3; command -v python) | head -n 1"
    lines = box.call(["sh", "-c", script], workdir="/", check=False).output.strip().splitlines()
    runs = "uv-runs" in lines
    found = [line for line in lines if line != "uv-runs"]
    return (found[0] if found else "python3"), (uv if runs else None)
