"""The sandbox itself (farm/worker/sandbox/): real bubblewrap, one command at a time.

Each test runs the same small program twice where that proves the point: unsandboxed (the
control: the attack works there, so the test can fail) and in the sandbox (it does not).
Attacks covered: reading a secret in a 0700 folder (FARM_HOME's key), writing outside the job's
folders, reaching a loopback server (the API, Redis), the worker's FARM_*/token/DOCKER_HOST
variables, nsenter back into the host's namespaces, a daemon outliving its command and holding
its output pipe, and exhausting processes, memory, disk (file size) and CPU time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from farm.util.cmd import CommandFailed
from farm.worker.sandbox import Limits, Policy, Unsandboxed, interpreter_roots, package_env, run_sandboxed
from farm.worker.sandbox.linux import Bubblewrap

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap is Linux's sandbox")

PYTHON = sys.executable


@pytest.fixture
def job(tmp_path: Path) -> Path:
    work = tmp_path / "job"
    (work / "src").mkdir(parents=True)
    return work


def policy(work: Path, **kw) -> Policy:  # type: ignore[no-untyped-def]
    roots = interpreter_roots(PYTHON)
    venv = Path(PYTHON).parent.parent
    return Policy(cwd=work / "src", writable=(work / "src",), readable=(*roots, venv), tmp=work / "tmp",
                  env=package_env(home=work / "src", extra=kw.pop("env", None)),
                  limits=kw.pop("limits", Limits(processes=256)), **kw)


def py(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def run_in(box, work: Path, code: str, **kw):  # type: ignore[no-untyped-def]
    return run_sandboxed(box, py(code), policy(work, **kw), log=None, timeout=60)


BOX = Bubblewrap()


def test_secret_in_a_private_folder_is_invisible(job: Path, tmp_path: Path) -> None:
    """Attack: read FARM_HOME/keys/farm.key (0600 in a 0700 folder) from package code."""
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True)
    keys.chmod(0o700)
    (keys / "farm.key").write_text("SECRET")
    (keys / "farm.key").chmod(0o600)
    code = f"print(open({str(keys / 'farm.key')!r}).read())"
    assert run_in(Unsandboxed(), job, code).output.strip() == "SECRET"
    with pytest.raises(CommandFailed) as exc:
        run_in(BOX, job, code)
    assert "FileNotFoundError" in exc.value.result.output


def test_only_the_writable_folders_can_be_written(job: Path, tmp_path: Path) -> None:
    """Attack: replace a file outside the job's folders (another project's published wheel)."""
    victim = tmp_path / "index" / "victim.whl"
    victim.parent.mkdir()
    victim.write_bytes(b"original")
    out = run_in(BOX, job, "open('made-here', 'w').write('ok'); import os; print(os.getuid())").output
    assert (job / "src" / "made-here").read_text() == "ok" and out.strip() == "65534"
    with pytest.raises(CommandFailed):
        run_in(BOX, job, f"open({str(victim)!r}, 'wb').write(b'changed')")
    with pytest.raises(CommandFailed):
        run_in(BOX, job, "open('/usr/lib/x', 'w')")
    assert victim.read_bytes() == b"original"


def test_no_network_not_even_loopback(job: Path) -> None:
    """Attack: call the farm's API or Redis on 127.0.0.1 from build_wheel."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')"
    try:
        assert "connected" in run_in(Unsandboxed(), job, code).output
        with pytest.raises(CommandFailed) as exc:
            run_in(BOX, job, code)
        assert "ConnectionRefusedError" in exc.value.result.output or "unreachable" in exc.value.result.output
        granted = run_in(BOX, job, code, network=True)  # a recipe's `network = true`
        assert "connected" in granted.output
    finally:
        server.close()


def test_worker_variables_do_not_reach_package_code(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: read FARM_TOKEN, FARM_DATABASE_URL, DOCKER_HOST from the environment."""
    monkeypatch.setenv("FARM_TOKEN", "secret-token")
    monkeypatch.setenv("FARM_DATABASE_URL", "postgresql://farm:pw@db/farm")
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    out = run_in(BOX, job, "import os; print(sorted(os.environ))").output
    assert "FARM_TOKEN" not in out and "FARM_DATABASE_URL" not in out and "DOCKER_HOST" not in out


def test_nsenter_cannot_undo_the_namespaces(job: Path) -> None:
    """Attack: `nsenter -t 1 -n -m` back into the host's network and mount namespaces (the old
    `unshare --net` verification ran as root, so this worked)."""
    res = run_sandboxed(BOX, ["sh", "-c", "nsenter -t 1 -n -m true; echo rc=$?; grep CapEff /proc/self/status"],
                        policy(job), log=None, timeout=60)
    assert "rc=0" not in res.output and "CapEff:\t0000000000000000" in res.output


def test_no_process_outlives_its_command(job: Path) -> None:
    """Attack: a daemon in its own session that keeps the command's stdout open and sleeps on."""
    marker = f"farm-sandbox-daemon-{uuid.uuid4().hex}"
    code = (f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
            f"{marker!r}], start_new_session=True, stdout=sys.stdout); print('spawned')")
    started = time.monotonic()
    assert "spawned" in run_in(BOX, job, code).output
    assert time.monotonic() - started < 30  # the open pipe did not hold the runner until the daemon ended
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a sandboxed daemon survived its command"


@pytest.mark.parametrize(("limits", "code", "said"), [
    (Limits(processes=32), "import os, time\nfor _ in range(200):\n    if os.fork() == 0:\n        time.sleep(30)\n",
     "process limit (32 processes)"),
    (Limits(processes=256, memory=512 * 1024 ** 2), "b = bytearray(1024 ** 3)", "memory limit (512m per process)"),
    (Limits(processes=256, file_size=1024 ** 2), "open('big', 'wb').write(b'x' * 4 * 1024 ** 2)",
     "file size limit (1m)"),
    (Limits(processes=256, cpu_seconds=1), "while True: pass", "CPU time limit (1 s per process)"),
], ids=["fork", "memory", "file-size", "cpu"])
def test_limits_are_hit_and_named(job: Path, limits: Limits, code: str, said: str) -> None:
    """Attack: a fork bomb, an allocation, a huge file, a busy loop. Each ends with the limit named."""
    with pytest.raises(CommandFailed) as exc:
        run_in(BOX, job, code, limits=limits)
    assert said in (exc.value.limit or ""), (exc.value.limit, exc.value.result.output[-500:])  # type: ignore[attr-defined]


def test_timeout_ends_the_whole_sandbox(job: Path) -> None:
    """A command that outlives its timeout is ended with everything it started."""
    marker = f"farm-sandbox-timeout-{uuid.uuid4().hex}"
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}]); time.sleep(300)"
    with pytest.raises(CommandFailed) as exc:
        run_sandboxed(BOX, py(code), policy(job), log=None, timeout=2)
    assert exc.value.timed_out
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.strip() == ""
