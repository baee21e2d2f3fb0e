"""The attacks a hostile sdist makes on the farm, from its build (setup.py) and its import.

This file is copied into each hostile test sdist as `_attacks.py` and run by its `setup.py`
(package code at build time) and its `__init__.py` (package code at verification). It tries each
attack against the paths and ports of the farm that builds it (baked into the sdist as
`_targets.json`) and prints one line `FARM-HOSTILE <phase> <json>`: for each attack, "blocked: why"
or "DONE". The tests read that line from the job's log and check the farm from outside as well.
Standard library only; every attack catches its own errors.
"""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def _try(fn):
    try:
        got = fn()
        return "DONE" + (f": {got}" if got else "")
    except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
        return f"blocked: {type(exc).__name__}: {exc}"[:200]


def _read(path):
    with open(path, "rb") as f:
        if not f.read(1) and os.path.getsize(path):
            raise OSError("empty read")


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def _overwrite(path):
    with open(path, "r+b") as f:
        f.write(b"PK-replaced-by-a-hostile-package")


def _connect(host, port):
    with socket.create_connection((host, port), timeout=3):
        pass


def _yank(api, project):
    body = json.dumps({"project": project, "reason": "hostile"}).encode()
    req = urllib.request.Request(api + "/api/releases/yank", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=3).read()


def _daemon(marker):
    # A grandchild in its own session that keeps this process's stdout open and sleeps.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", marker], start_new_session=True,
                     stdout=sys.stdout, stderr=sys.stderr)


def _nsenter():
    subprocess.run(["nsenter", "-t", "1", "-n", "-m", "true"], check=True, capture_output=True, timeout=10)


def run(phase):
    with open(os.path.join(HERE, "_targets.json")) as f:
        t = json.load(f)
    results = {
        "list_farm_home": _try(lambda: sorted(os.listdir(t["home"]))),  # first: before anything is written
        "read_key": _try(lambda: _read(t["key"])),
        "read_db": _try(lambda: _read(t["db"])),
        "read_config": _try(lambda: _read(t["config"])),
        "append_config": _try(lambda: _append(t["config"], "\n# hostile\n")),
        "overwrite_other_wheel": _try(lambda: _overwrite(t["victim_wheel"])),
        "call_api": _try(lambda: _yank(t["api"], t["victim"])),
        "reach_redis": _try(lambda: _connect("127.0.0.1", t["redis_port"])),
        "reach_upstream": _try(lambda: _connect(t["upstream_host"], 443)),
        "docker_socket": _try(lambda: _connect_unix(t["docker_socket"])),
        "nsenter": _try(_nsenter),
        "host_tmp_marker": _try(lambda: _append(t["host_tmp_marker"], phase)),
        "environment": _try(_env_secret_check),
        "privileges": _try(_privileges),
        "daemon": _try(lambda: _daemon(t["marker"])),
    }
    print(f"FARM-HOSTILE {phase} {json.dumps(results, sort_keys=True)}", flush=True)


def _connect_unix(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.settimeout(3)
        s.connect(path)
    finally:
        s.close()


def _env_secret_check():
    leaked = sorted(k for k in os.environ if k.startswith(("FARM_", "DOCKER_")) or "TOKEN" in k.upper())
    if not leaked:
        raise LookupError("no FARM_*, DOCKER_* or token variables")


def _privileges():
    # Root or any capability (effective or permitted) is what an escape through the kernel or the
    # runtime would start from; the outcome names the uid and capabilities seen either way.
    with open("/proc/self/status") as f:
        caps = dict(re.findall(r"^(Cap(?:Eff|Prm)):\s*([0-9a-f]+)$", f.read(), re.M))
    seen = f"uid={os.getuid()} euid={os.geteuid()} CapEff={caps['CapEff']} CapPrm={caps['CapPrm']}"
    if os.geteuid() == 0 or int(caps["CapEff"], 16) or int(caps["CapPrm"], 16):
        return seen
    raise PermissionError(f"unprivileged: {seen}")
