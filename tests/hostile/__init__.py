"""A corpus of hostile sdists, made for the farm that will build them.

`hostile_project` writes a real setuptools project whose `setup.py` (build time) and package
`__init__` (import time, at verification) run `attacks.py` against the paths and ports of one
farm; `forking_project`, `allocating_project` and `writing_project` try to exhaust processes, memory and
disk. `sdist` packs a project by hand: making it with a build front end would run its hostile
setup.py on the test's own host, unsandboxed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import textwrap
from pathlib import Path

ATTACKS = Path(__file__).with_name("attacks.py")
# Attacks whose "DONE" may only mean the sandbox's own scratch folders (a host path below /tmp lies in
# the job's /tmp there, an empty FARM_HOME is made for the job's folders): the tests check the host.
CHECKED_ON_HOST = {"daemon", "append_config", "host_tmp_marker", "list_farm_home"}
SECRETS = ("keys", "farm.db", "farm.toml", "storage", "index", "broker")


def evidence(log: str) -> dict[str, dict[str, str]]:
    """{phase: {attack: outcome}} from the `FARM-HOSTILE <phase> <json>` lines of a job's log."""
    return {phase: json.loads(payload)
            for phase, payload in re.findall(r"^FARM-HOSTILE (\w+) (\{.*\})$", log, re.M)}


def privileges(log: str) -> list[tuple[str, int, int]]:
    """(phase, uid, CapEff) as each run of the `privileges` attack saw them (every line: the farm's
    probe of the backend's hook runs setup.py too)."""
    seen = []
    for phase, payload in re.findall(r"^FARM-HOSTILE (\w+) (\{.*\})$", log, re.M):
        m = re.search(r"\buid=(\d+) euid=(\d+) CapEff=([0-9a-f]+)", json.loads(payload)["privileges"])
        assert m, payload
        seen.append((phase, int(m.group(2)), int(m.group(3), 16)))
    return seen


def assert_blocked(log: str) -> None:
    """Both phases (build, import) ran every attack and none but the host-checked ones worked;
    FARM_HOME showed none of the farm's files."""
    found = evidence(log)
    assert set(found) == {"build", "import"}, found
    for phase, results in found.items():
        done = {a: o for a, o in results.items() if a not in CHECKED_ON_HOST and not o.startswith("blocked")}
        assert not done, f"{phase}: these attacks worked: {done}"
        listing = results["list_farm_home"]
        assert not any(secret in listing for secret in SECRETS), f"{phase}: FARM_HOME shows {listing}"


def _project(root: Path, name: str, setup_body: str, init_body: str = "", *, distribution: str = "") -> Path:
    """A setuptools project in `root/name`; `distribution` is the name its pyproject gives (default `name`)."""
    name, folder = distribution or name, name
    mod = name.replace("-", "_")
    proj = root / folder
    (proj / mod).mkdir(parents=True)
    (proj / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.1.0"

        [tool.setuptools]
        packages = ["{mod}"]

        [tool.setuptools.package-data]
        {mod} = ["*.json"]
        """))
    (proj / "setup.py").write_text(textwrap.dedent(setup_body) + "\nfrom setuptools import setup\nsetup()\n")
    (proj / mod / "__init__.py").write_text(textwrap.dedent(init_body) + "\ndef hello():\n    return 'hello'\n")
    return proj


def hostile_project(root: Path, name: str, targets: dict[str, object]) -> Path:
    """Attacks the farm from setup.py (build) and from its import (verification)."""
    proj = _project(root, name, """
        import os, sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _attacks
        _attacks.run("build")
        """, """
        from . import _attacks
        _attacks.run("import")
        """)
    mod = proj / name.replace("-", "_")
    for folder in (proj, mod):
        shutil.copyfile(ATTACKS, folder / "_attacks.py")
        (folder / "_targets.json").write_text(json.dumps(targets))
    return proj


def impostor_project(root: Path, name: str, *, victim: str) -> Path:
    """A project in folder `name` (so its sdist is NAME-0.1.0.tar.gz) whose pyproject names `victim`."""
    return _project(root, name, "", "def add(a, b):\n    return 'impostor'\n", distribution=victim)


def forking_project(root: Path, name: str, *, forks: int = 400) -> Path:
    """Forks `forks` sleeping children at build time (a bounded fork bomb)."""
    return _project(root, name, f"""
        import os, time
        for _ in range({forks}):
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        print("forked {forks} processes")
        """)


def allocating_project(root: Path, name: str, *, gib: int = 3) -> Path:
    """Allocates `gib` GiB at build time."""
    return _project(root, name, f"""
        block = bytearray({gib} * 1024 ** 3)
        print("allocated", len(block))
        """)


def writing_project(root: Path, name: str, *, mib: int = 64) -> Path:
    """Writes one file of `mib` MiB at build time."""
    return _project(root, name, f"""
        with open("big.bin", "wb") as f:
            for _ in range({mib}):
                f.write(b"x" * 1024 * 1024)
        print("wrote {mib} MiB")
        """)


def sdist(project: Path, out: Path, *, version: str = "0.1.0") -> Path:
    """`NAME-VERSION.tar.gz` with PKG-INFO, packed without running any of the project's code."""
    name = project.name.replace("-", "_")
    top = f"{name}-{version}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{top}.tar.gz"
    pkg_info = f"Metadata-Version: 2.1\nName: {project.name}\nVersion: {version}\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(project.rglob("*")):
            tar.add(file, arcname=f"{top}/{file.relative_to(project)}", recursive=False)
        info = tarfile.TarInfo(f"{top}/PKG-INFO")
        info.size, info.mtime = len(pkg_info), 1_700_000_000
        tar.addfile(info, io.BytesIO(pkg_info))
    return path
