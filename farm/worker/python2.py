"""Python 2.7, for the sdists that still declare it, where the farm's usual tools do not reach: uv
makes no Python 2 environment, pypa/build and pyproject_hooks do not run on it, cibuildwheel builds
no cp27. A worker offers 2.7 only when its `pythons` setting names one (discovery looks for CPython
3), and the coordinator plans a cp27 job only for an sdist that declares Python 2
(farm.coordinator.plan). What differs from the native engine's Python 3 path:

- Environments: virtualenv 16.7 (the last release that runs on Python 2 itself), made by the farm
  with no pip, setuptools or wheel seeded: only what the farm installs is in them, and nothing of the
  interpreter's own site-packages.
- Installs: pip 20.3 (the last release for Python 2), run from its wheel file, wheels only
  (`--only-binary :all:`, `--no-index` for the build), by the farm, outside the sandbox: installing
  a wheel runs no package code.
- The build: the build requirements (pyproject.toml's, else the legacy backend's, and wheel)
  resolved for the target on the host from the upstream index, by the farm's own pip (`pip download
  --python-version 2.7`), installed into the build environment; then `pip wheel --no-build-isolation
  --no-deps --no-index` in the sandbox, without network, like the Python 3 path's hooks.
- The tools are the pinned wheels below, downloaded once per host from the upstream index with
  their sha256 checked, kept in FARM_HOME/cache/python2.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from farm.errors import InfrastructureFault, PackageFailure
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.locks import host_lock
from farm.worker import build_requires
from farm.worker.platforms.base import Interpreter, Platform
from farm.worker.source import SdistSource

# name -> (version, sha256 of its py2.py3-none-any wheel on PyPI)
TOOLS = {
    "pip": ("20.3.4", "217ae5161a0e08c0fb873858806e3478c9775caffce5168b50ec885e358c199d"),
    "virtualenv": ("16.7.12", "9180ce4102c388073bac71ecd041f7f31f9ef8c528edb205d75ae6144d08106e"),
}
_QUIET = ["--no-python-version-warning", "--disable-pip-version-check"]


def is_python2(interp: Interpreter) -> bool:
    return interp.version[0] == 2


@dataclass(frozen=True)
class Tools:
    pip_wheel: Path  # pip runs from its wheel: `python PIP_WHEEL/pip ...`
    virtualenv: Path  # virtualenv.py of the unpacked wheel

    def pip(self, python: str | Path) -> list[str]:
        return [str(python), str(self.pip_wheel / "pip")]

    def versions(self) -> dict[str, str]:
        return {name: version for name, (version, _) in TOOLS.items()}


def tools(home: Path, index_url: str, *, log: TextIO | None = None) -> Tools:
    """The pinned pip and virtualenv, downloaded once per host (under a host lock) from `index_url`
    with their sha256 checked."""
    folder = home / "cache" / "python2"
    pip_version, virtualenv_version = TOOLS["pip"][0], TOOLS["virtualenv"][0]
    pip_wheel = folder / f"pip-{pip_version}-py2.py3-none-any.whl"
    unpacked = folder / f"virtualenv-{virtualenv_version}"
    found = Tools(pip_wheel=pip_wheel, virtualenv=unpacked / "virtualenv.py")
    if pip_wheel.is_file() and found.virtualenv.is_file():
        return found
    with host_lock(folder.parent / "python2.lock"):
        if pip_wheel.is_file() and found.virtualenv.is_file():
            return found
        incoming = folder / "incoming"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
        pins = incoming / "tools.txt"
        pins.write_text("".join(f"{name}=={version} --hash=sha256:{digest}\n" for name, (version, digest) in TOOLS.items()))
        try:
            run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--require-hashes", "--python-version", "2.7", "--index-url", index_url, "--dest", str(incoming),
                 "-r", str(pins)], env=clean_env(), log=log, timeout=600)
        except CommandFailed as exc:
            raise InfrastructureFault("build", f"the Python 2 tools (pip {pip_version}, virtualenv "
                                      f"{virtualenv_version}) cannot be downloaded from {index_url}:\n{exc}") from exc
        with zipfile.ZipFile(incoming / f"virtualenv-{virtualenv_version}-py2.py3-none-any.whl") as zf:
            zf.extractall(incoming / unpacked.name)
        shutil.rmtree(unpacked, ignore_errors=True)
        (incoming / unpacked.name).rename(unpacked)
        (incoming / pip_wheel.name).replace(pip_wheel)
        shutil.rmtree(incoming, ignore_errors=True)
    return found


def make_env(interp: Interpreter, env: Path, tools: Tools, *, log: TextIO | None = None) -> Path:
    """A fresh virtual environment of `interp` with nothing installed; its interpreter (Scripts\\python.exe
    on Windows)."""
    shutil.rmtree(env, ignore_errors=True)
    run([str(interp.path), str(tools.virtualenv), "--quiet", "--no-download", "--no-pip", "--no-setuptools",
         "--no-wheel", str(env)], env=clean_env(), log=log, timeout=300)
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"


@lru_cache(maxsize=16)
def abi(python: str) -> str:
    """`cp27mu` (a UCS-4 build, as Debian's and pyenv's are) or `cp27m`."""
    out = run([python, "-c", "import sys; print(sys.maxunicode)"], env=clean_env(), timeout=60).output
    return "cp27mu" if int(out.strip().splitlines()[-1]) > 0xFFFF else "cp27m"


def build_requirements(source: SdistSource) -> list[str]:
    """What a Python 2 build installs first: the declared build requirements (`build_requires.declared`)
    and `wheel`, which setuptools' backend would ask for (`get_requires_for_build_wheel`, a hook that
    pip 20.3 without build isolation does not install for)."""
    requires = build_requires.declared(source)
    names = {canonicalize_name(Requirement(r).name) for r in build_requires.checked(requires, "declares")}
    return build_requires.checked([*requires, *([] if "wheel" in names else ["wheel"])], "declares")


def portable_platforms(platform: Platform) -> list[str]:
    """The portable wheel platform tags (manylinux, macosx, win) Python 2.7 installs on `platform` here."""
    return sorted({t.platform for t in platform.supported_tags((2, 7))
                   if t.platform != "any" and not t.platform.startswith("linux_")})


def download(requirements: Sequence[str], dest: Path, *, abi: str, platforms: Sequence[str], index_url: str,
             as_of: str | None, log: TextIO | None) -> list[Path]:
    """`requirements` and their dependencies as wheels for Python 2.7 of ABI `abi` (`abi()`) on the wheel
    platform tags `platforms` (`portable_platforms`, or a build image's), resolved by the farm's own
    pip from `index_url` (as of a time when given), into an emptied `dest` (a retry as of the release
    resolves anew)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if not requirements:
        return []
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
            "--index-url", index_url, "--python-version", "2.7", "--implementation", "cp",
            "--abi", abi, "--abi", "none", *[a for p in platforms for a in ("--platform", p)],
            *(["--uploaded-prior-to", as_of] if as_of else []), *requirements]
    try:
        run(argv, env=clean_env(), log=log, timeout=600)
    except CommandFailed as exc:
        raise PackageFailure("build", "the build requirements do not resolve for Python 2.7 from the index as "
                             f"wheels (the farm runs no package code outside the sandbox):\n{exc}") from exc
    return sorted(dest.glob("*.whl"))


def install(tools: Tools, python: Path, wheels: Sequence[Path], *, log: TextIO | None) -> None:
    """Wheels into the environment of `python`, by the farm, from the files alone."""
    if not wheels:
        return
    folders = sorted({str(w.parent) for w in wheels})
    run([*tools.pip(python), "install", "--quiet", *_QUIET, "--no-index", "--no-deps", "--only-binary=:all:",
         *[a for f in folders for a in ("--find-links", f)], *map(str, wheels)],
        env=clean_env(), log=log, timeout=600)


def pins(wheels: Sequence[Path]) -> list[str]:
    return sorted({f"{name}=={version}" for name, version, _, _ in (parse_wheel_filename(w.name) for w in wheels)})


def wheel_command(tools: Tools, python: Path, source: Path, out: Path) -> list[str]:
    """pip's build of the tree into `out`: the build environment as it is, no dependencies, no index."""
    return [*tools.pip(python), "wheel", "--no-deps", "--no-build-isolation", "--no-index", *_QUIET, "--no-cache-dir",
            "--wheel-dir", str(out), str(source)]


def verify_install(tools: Tools, python: Path, wheel: Path, requires: Sequence[str], *, index_url: str,
                   find_links: Path | None, log: TextIO | None, timeout: float) -> str:
    """The wheel, its dependencies and the test requirements into the verification environment from the
    farm's index only, wheels only; the command line."""
    argv = [*tools.pip(python), "install", *_QUIET, "--no-cache-dir", "--only-binary=:all:", "--index-url", index_url,
            *(["--find-links", str(find_links)] if find_links else []), str(wheel), *requires]
    return run(argv, env=clean_env(), log=log, timeout=timeout).command_line


def build_record(tools: Tools, interp: Interpreter) -> dict[str, str]:
    return {"python": ".".join(map(str, interp.version)), **tools.versions()}


__all__ = ["TOOLS", "Tools", "abi", "build_record", "build_requirements", "download", "install", "is_python2",
           "make_env", "pins", "portable_platforms", "tools", "verify_install", "wheel_command"]
