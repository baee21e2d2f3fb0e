"""Step verify: the built wheel, installed from the farm's index only into a fresh environment, tested.

First the wheel's runtime requirements (and the recipe's test requirements) are checked against
the farm's index; any that it cannot satisfy yet are reported, and the job waits for them. Then
a fresh virtual environment gets the wheel with `--no-index`-style isolation (the farm's index is
the only index), and the recipe's imports and test command run in an empty folder, without network
where the host allows it. When the imports fail, each module is imported again on its own
(`_IMPORT_CHECK`): a module that loaded but whose code imports a top-level package neither the wheel
nor any requirement it declares provides passes with a warning (`VerifyOutcome.warnings`); any other
import error fails.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from farm.config import Settings
from farm.errors import InfrastructureFault, PackageFailure
from farm.recipes.schema import Options
from farm.util.python_tags import PythonTag, pure_majors
from farm.util.cmd import CommandFailed, clean_env, run
from farm.util.wheel import read_metadata, requires_dist, top_level_modules
from farm.worker import python2
from farm.worker.engines.native import uv_bin, venv_python
from farm.worker.platforms.base import Interpreter, Platform
from farm.worker.sandbox import (Limits, Policy, Sandbox, failure_message, interpreter_roots, package_env,
                                 run_sandboxed)
from farm.worker.source import SdistSource

if TYPE_CHECKING:
    from farm.worker.verify_container import VerifyBox

_MARKER_ENV = (
    "import json, os, platform, sys\n"
    "iv = sys.implementation.version\n"
    "print(json.dumps({'implementation_name': sys.implementation.name,"
    " 'implementation_version': f'{iv.major}.{iv.minor}.{iv.micro}',"
    " 'os_name': os.name, 'platform_machine': platform.machine(), 'platform_release': platform.release(),"
    " 'platform_system': platform.system(), 'platform_version': platform.version(),"
    " 'python_full_version': platform.python_version(), 'platform_python_implementation': platform.python_implementation(),"
    " 'python_version': '.'.join(platform.python_version_tuple()[:2]), 'sys_platform': sys.platform}))"
)


@dataclass(kw_only=True)
class VerifyOutcome:
    passed: bool
    environment: str
    install_command: str
    imports: list[str]
    test_command: str | None
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: str = ""
    pythons: list[str] = field(default_factory=list)  # more than one: a pure or abi3 wheel, each verified
    markers: dict[str, str] = field(default_factory=dict)  # the PEP 508 environment requirements were read for
    warnings: list[str] = field(default_factory=list)  # an import that needs what the wheel does not declare

    def record(self) -> dict[str, Any]:
        return {"passed": self.passed, "environment": self.environment, "imports": self.imports,
                "testCommand": self.test_command, "commands": self.commands, "seconds": round(self.seconds, 3),
                "detail": self.detail[-2000:], **({"pythons": self.pythons} if self.pythons else {}),
                **({"markerEnvironment": self.markers} if self.markers else {}),
                **({"warnings": self.warnings} if self.warnings else {})}


# The import check again, after `import a; import b` failed: each module on its own, telling a module
# that loaded but whose code imports a top-level name that neither the wheel nor any requirement it
# declares provides (ruamel.yaml.clib's extension `_ruamel_yaml` imports `ruamel.yaml`, the package
# that depends on it) from a broken one. Only that ModuleNotFoundError is a warning (one
# `farm-import-warning {json}` line); any other ImportError (an undefined symbol, a missing shared
# library, a declared dependency or a module of the wheel itself missing) fails (exit 1, traceback).
# Argument: JSON {"imports": [...], "provides": [the wheel's top-level names], "declared": [names]}.
_IMPORT_CHECK = """
import importlib, json, re, sys, traceback
args = json.loads(sys.argv[1])
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
declared = {norm(n) for n in args["declared"]}
provided = set(args["provides"]) | {m.split(".")[0] for m in args["imports"]}  # an import of itself missing fails
try:
    from importlib import metadata
    dists = list(metadata.distributions())
except Exception:
    dists = []
for dist in dists:
    if norm(dist.metadata["Name"] or "") in declared:
        provided.update(str(f).split("/")[0].split(".")[0] for f in dist.files or ())
        provided.update((dist.read_text("top_level.txt") or "").split())
failed = False
for module in args["imports"]:
    try:
        importlib.import_module(module)
    except BaseException as exc:  # ModuleNotFoundError by name: Python 2 has none (and then no warning)
        top = (getattr(exc, "name", None) or "").split(".")[0] if type(exc).__name__ == "ModuleNotFoundError" else ""
        if top and top not in provided and norm(top) not in declared:
            sys.stdout.write("farm-import-warning " + json.dumps({"module": module, "needs": top}) + "\\n")
            sys.stdout.flush()
            continue
        traceback.print_exc()
        failed = True
sys.exit(1 if failed else 0)
"""
_WARNING = "farm-import-warning "


def import_check_argv(python: str, wheel: Path, imports: Sequence[str], requires: Sequence[str]) -> list[str]:
    """The command that runs `_IMPORT_CHECK` for `wheel`: what it provides from its RECORD, what it
    declares from its METADATA (every Requires-Dist, whatever its marker) and `requires` (the recipe's
    test requirements)."""
    declared = [Requirement(r).name for r in [*requires_dist(read_metadata(wheel)), *requires]]
    provides = sorted({m.split(".")[0] for m in top_level_modules(wheel)})
    return [python, "-c", _IMPORT_CHECK,
            json.dumps({"imports": list(imports), "provides": provides, "declared": declared})]


def undeclared_imports(output: str) -> list[str]:
    """The warnings of an `_IMPORT_CHECK` run that passed, from its output."""
    found = []
    for line in output.splitlines():
        if line.startswith(_WARNING):
            w = json.loads(line[len(_WARNING):])
            found.append(f"{w['module']} loaded; it needs {w['needs']}, which the wheel does not declare")
    return found


@lru_cache(maxsize=32)
def marker_environment(python: str) -> dict[str, str]:
    return json.loads(run([python, "-c", _MARKER_ENV], timeout=60).output)


class FarmIndex:
    """The farm's own simple index, read from a file:// tree or over HTTP (PEP 691 JSON, HTML fallback)."""

    def __init__(self, url: str) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._http = httpx.Client(timeout=30) if not self.url.startswith("file:") else None

    def files(self, project: str) -> list[dict[str, Any]]:
        name = canonicalize_name(project)
        if self._http is None:
            path = Path(urllib.parse.urlparse(self.url).path) / name / "index.json"
            try:
                return json.loads(path.read_text())["files"]
            except FileNotFoundError:
                return []
        try:
            resp = self._http.get(self.url + name + "/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            if resp.status_code == 404:
                return []
            resp.raise_for_status()
        except httpx.HTTPError as exc:  # the farm's own index is away: ours, retried
            raise InfrastructureFault("verify", f"the farm's index {self.url}: {type(exc).__name__}: {exc}") from exc
        return resp.json()["files"]


def runtime_requirements(wheel: Path, env: dict[str, str]) -> list[Requirement]:
    reqs = []
    for line in requires_dist(read_metadata(wheel)):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            reqs.append(req)
    return reqs


@dataclass(frozen=True, kw_only=True)
class Target:
    """What a wheel is verified for: a Python on a platform, where (host interpreter or clean image)."""

    python: tuple[int, int]
    interp: Interpreter | None  # a host interpreter of that version, if the worker has one
    image: str | None  # a clean verification image for it, if configured (preferred)
    env: dict[str, str]  # PEP 508 marker environment
    tags: frozenset[Tag]
    threaded: bool = False  # CPython's free-threaded build (cp314t)

    @property
    def tag(self) -> str:
        """The farm's name for it: cp313, cp314t."""
        return PythonTag("cp", *self.python, threaded=self.threaded).abi

    @classmethod
    def for_job(cls, python_tag: str, platform: Platform, settings: Settings) -> Target:
        parsed = PythonTag.parse(python_tag)
        if parsed is None:
            raise InfrastructureFault("verify", f"{python_tag!r} is no Python tag (cp39, cp314t)")
        # The target's markers, known before any build (the coordinator can tell them too): not the
        # worker's interpreter's, nor the host's, which may differ from the target's platform.
        env = platform.marker_environment(python_tag)
        # A host interpreter cannot import another architecture's wheel (linux-aarch64 on x86_64): images only.
        interp = None if _emulated(env) else next(
            (i for i in platform.interpreters(settings.interpreters) if i.tag == python_tag), None)
        image = settings.verify_image(platform.name, python_tag)
        if interp is None and image is None:
            raise InfrastructureFault("verify", f"this worker can verify {python_tag} neither on the host (no "
                                      f"interpreter) nor in a container (no verify image for {platform.name})")
        return cls(python=parsed.version, interp=interp, image=image, env=env, threaded=parsed.threaded,
                   tags=frozenset(platform.supported_tags(parsed.version, threaded=parsed.threaded)))


def targets_for(wheels: Sequence[Path], python_tag: str, platform: Platform, settings: Settings) -> list[Target]:
    """What the job's wheels are verified for: the job's Python; for pure-Python and abi3 wheels (one
    job builds them for every Python) the oldest and the newest Python this worker has that they
    admit (Requires-Python, and an abi3 wheel's floor), host interpreters or verification images."""
    tags = {str(t) for w in wheels for t in parse_wheel_filename(w.name)[3]}
    if not tags or not all(t.endswith("-any") or "-abi3-" in t for t in tags):
        return [Target.for_job(python_tag, platform, settings)]
    floor = min((parsed.version for t in tags if "-abi3-" in t and (parsed := PythonTag.parse(t.split("-")[0]))),
                default=(0, 0))
    specs = [SpecifierSet(rp) for w in wheels if (rp := read_metadata(w).get("Requires-Python"))]
    emulated = _emulated(platform.marker_environment(python_tag))
    have = set() if emulated else {i.tag for i in platform.interpreters(settings.interpreters)}
    have |= {p for image in settings.verify_images.get(platform.name, []) for p in image.pythons}
    # GIL builds only (cp314, not cp314t): abi3 does not install on a free-threaded one (PEP 703), and a
    # pure wheel is checked on the versions, which the GIL builds span.
    majors = pure_majors((t.split("-")[0] for t in tags), requires_python=bool(specs))  # py3-none-any: not 2.7
    gil = (p for tag in have if (p := PythonTag.parse(tag)) and p.implementation == "cp" and not p.threaded
           and p.major in majors)
    admitted = sorted(p.version for p in gil
                      if p.version >= floor and all(s.contains(p.dotted, prereleases=True) for s in specs))
    chosen = [f"cp{v[0]}{v[1]}" for v in dict.fromkeys([admitted[0], admitted[-1]])] if admitted else [python_tag]
    return [Target.for_job(tag, platform, settings) for tag in chosen]


def missing_requirements(requirements: Sequence[Requirement], *, index: FarmIndex, target: Target,
                         beside: Sequence[Path] = ()) -> list[str]:
    """The requirements no wheel in the farm's index (or `beside` it: the staged wheels of a dependency
    cycle) satisfies for this interpreter and platform."""
    pyver = Version(f"{target.python[0]}.{target.python[1]}")
    missing = []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate({**target.env, "extra": ""}):
            continue
        ok = False
        for w in beside:
            name, version, _, wtags = parse_wheel_filename(w.name)
            if name == canonicalize_name(req.name) and req.specifier.contains(version, prereleases=True) \
                    and wtags & target.tags:
                ok = True
                break
        for f in [] if ok else index.files(req.name):
            filename = f["filename"]
            if not filename.endswith(".whl") or f.get("yanked"):
                continue
            _, version, _, wtags = parse_wheel_filename(filename)
            rp = f.get("requires-python")
            if req.specifier.contains(version, prereleases=True) and wtags & target.tags and (
                    not rp or SpecifierSet(rp).contains(pyver, prereleases=True)):
                ok = True
                break
        if not ok:
            missing.append(str(req))
    return missing


def verify(*, wheel: Path, target: Target, settings: Settings, options: Options, project: SdistSource, work: Path,
           log: TextIO, sandbox: Sandbox, limits: Limits, find_links: Path | None = None,
           early: VerifyBox | None = None) -> VerifyOutcome:
    """In the clean verification image when one is configured for the target, else on the host.
    The sdist's tree is unpacked only for a test command that uses `{project}` (or `{package}`).
    `find_links`: a folder of wheels offered beside the farm's index (a dependency cycle's staged wheels).
    `early`: a verification container started while the build ran (farm.worker.verify_container.VerifyBox)."""
    uses_tree = any(f"{{{k}}}" in (options.test_command or "") for k in ("project", "package"))
    tree = project.path if uses_tree else None
    if target.image is None:
        assert target.interp is not None
        return verify_on_host(wheel=wheel, interp=target.interp, index_url=settings.verify_index_url,
                              options=options, project=tree, work=work, log=log, timeout=settings.test_timeout,
                              sandbox=sandbox, limits=limits, find_links=find_links,
                              tools_from=(settings.home, settings.upstream_index))
    from farm.worker.verify_container import verify_in_container

    deps = dependency_wheels(wheel, target=target, index_url=settings.verify_index_url,
                             requires=options.test_requires, dest=work / "verify-deps", log=log, find_links=find_links)
    imports = options.test_imports if options.test_imports is not None else top_level_modules(wheel)
    emulation = platform_emulation(target)
    if emulation:
        log.write(f"verifying for {emulation['target']} under emulation ({emulation['emulator']}, QEMU {emulation['qemu']})\n")
    tools = python2.tools(settings.home, settings.upstream_index, log=log) if target.python[0] == 2 else None
    res = verify_in_container(wheel=wheel, dependency_wheels=deps, image=target.image,
                              requires=options.test_requires, imports=imports, test_command=options.test_command,
                              project=tree, log=log, timeout=settings.test_timeout,
                              docker_host=settings.docker_host, early=early, python=target.tag,
                              python2_tools=tools)
    emulated = f" emulated={emulation['emulator']}" if emulation else ""
    return VerifyOutcome(passed=res.passed, environment=f"container:{target.image}@{res.image_digest} network=none{emulated}",
                         install_command=res.install_command, imports=imports,
                         test_command=options.test_command, commands=res.commands, seconds=res.seconds,
                         detail=res.output, warnings=res.warnings)


def _emulated(env: dict[str, str]) -> bool:
    """Whether the Linux target of marker environment `env` is another architecture than the host's."""
    from farm.util import emulation

    machine = env.get("platform_machine", "")
    return env.get("sys_platform") == "linux" and bool(machine) and emulation.emulated(machine)


def platform_emulation(target: Target) -> dict[str, str] | None:
    """For a Linux target of another architecture than the host's (linux-aarch64 on x86_64): the
    emulator its verification container runs under (farm/util/emulation.py); None when native."""
    from farm.util import emulation

    return emulation.emulation(target.env["platform_machine"], step="verify") if _emulated(target.env) else None


def dependency_wheels(wheel: Path, *, target: Target, index_url: str, requires: Sequence[str], dest: Path,
                      log: TextIO, find_links: Path | None = None) -> list[Path]:
    """The wheel's dependency closure, for the target's Python and platform, from the farm's index only.

    pip runs on the farm's Python: with `--python-version` it picks wheels for the target, but it
    evaluates the markers of the dependencies it finds for the Python it runs on, so a cp39 target's
    `typing-extensions; python_version < "3.11"` two levels down would be left out. The closure is
    walked here instead, a level a round: pip downloads (`--no-deps`) every requirement found so far,
    each with its marker evaluated for the target (and the extras asked for), then the new wheels'
    Requires-Dist are read for the next round."""
    first = [r for r in requirements_for(wheel, Options(test_requires=list(requires)), target.env)
             if _applies(r, target.env, {""})]
    if not first:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    platforms = sorted({t.platform for t in target.tags if t.platform != "any"})
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest),
            "--index-url", index_url, *(["--find-links", str(find_links)] if find_links else []),
            "--only-binary=:all:", "--python-version", f"{target.python[0]}.{target.python[1]}",
            "--implementation", "cp", *(["--abi", f"cp{target.python[0]}{target.python[1]}t", "--abi", "none"]
                                        if target.threaded else [])]
    for plat in platforms:
        argv += ["--platform", plat]
    wanted: dict[str, None] = {}  # requirement lines without markers, in the order found
    extras: dict[str, set[str]] = {}  # project -> the extras asked of it
    read: set[Path] = set()
    pending = first
    while True:
        new = [line for r in pending if (line := without_marker(r)) not in wanted]
        for r in pending:
            extras.setdefault(canonicalize_name(r.name), {""}).update(r.extras)
        if not new:
            break
        wanted.update(dict.fromkeys(new))
        try:
            run([*argv, *wanted], env=clean_env(), log=log, timeout=600)
        except CommandFailed as exc:
            raise PackageFailure("verify", f"dependencies do not resolve from the farm's index:\n{exc}") from exc
        pending = []
        for got in sorted(set(dest.glob("*.whl")) - read):
            read.add(got)
            asked = extras.get(canonicalize_name(parse_wheel_filename(got.name)[0]), {""})
            pending += [r for line in requires_dist(read_metadata(got))
                        if _applies(r := Requirement(line), target.env, asked)]
    return sorted(dest.glob("*.whl"))


def _applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    """Whether `req` is needed in the marker environment `env` when `extras` are asked for ("": none)."""
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras)


def without_marker(req: Requirement) -> str:
    """`req` for a resolver that runs on another Python than the target's: its marker was evaluated
    for the target already, and pip (even with `--python-version`) would evaluate it again for the
    Python pip runs on, dropping `foo; python_version < "3.11"` for a cp39 target when run by 3.11."""
    bare = Requirement(str(req))
    bare.marker = None
    return str(bare)


def verify_on_host(*, wheel: Path, interp: Interpreter, index_url: str, options: Options, project: Path | None,
                   work: Path, log: TextIO, timeout: float, sandbox: Sandbox, limits: Limits,
                   find_links: Path | None = None, tools_from: tuple[Path, str] | None = None) -> VerifyOutcome:
    """A fresh venv of the target interpreter; the wheel and its dependencies from the farm's index only
    (installed by the farm: wheels only, so installing runs no package code). The imports and the
    test command are package code: they run in the sandbox, without network, seeing the venv
    (read-only), an empty working folder, and the sdist's tree only for a test command that names it.
    `tools_from`: (FARM_HOME, upstream index) the Python 2 tools come from (farm/worker/python2.py)."""
    start = time.monotonic()
    venv = work / "verify-venv"
    cwd = work / "verify-cwd"
    shutil.rmtree(venv, ignore_errors=True)
    python = str(venv_python(venv))
    imports = options.test_imports if options.test_imports is not None else top_level_modules(wheel)
    outcome = VerifyOutcome(passed=False, environment=f"host-venv sandbox={sandbox.name} network=none",
                            install_command="", imports=imports, test_command=options.test_command)
    policy = Policy(cwd=cwd, writable=(cwd, *([project] if project else [])),
                    readable=(venv, *interpreter_roots(interp.path)), network=False, tmp=work / "verify-tmp",
                    env=package_env(home=cwd, path=[Path(python).parent], extra={"VIRTUAL_ENV": str(venv)}),
                    limits=limits)

    def install(argv: list[str]) -> None:
        outcome.commands.append(run(argv, env=clean_env(), log=log, timeout=timeout).command_line)

    def package_code(argv: list[str]) -> None:
        outcome.commands.append(run_sandboxed(sandbox, argv, policy, log=log, timeout=timeout).command_line)

    try:
        if python2.is_python2(interp):  # no uv for Python 2: virtualenv and pip 20.3 (farm/worker/python2.py)
            if tools_from is None:
                raise InfrastructureFault("verify", "a Python 2 verification needs the farm's home for its tools")
            tools = python2.tools(*tools_from, log=log)
            outcome.commands.append(f"virtualenv {tools.versions()['virtualenv']} --python {interp.path} {venv}")
            python2.make_env(interp, venv, tools, log=log)
            outcome.install_command = python2.verify_install(tools, Path(python), wheel, options.test_requires,
                                                             index_url=index_url, find_links=find_links, log=log,
                                                             timeout=timeout)
            outcome.commands.append(outcome.install_command)
        else:
            install([uv_bin(), "venv", "--quiet", "--no-config", "--python", str(interp.path), str(venv)])
            argv = [uv_bin(), "pip", "install", "--no-config", "--python", python, "--index-url", index_url,
                    *(["--find-links", str(find_links)] if find_links else []), "--no-cache", "--no-build", str(wheel),
                    *options.test_requires]
            outcome.install_command = " ".join(argv)
            install(argv)
    except CommandFailed as exc:
        raise PackageFailure("verify", f"the wheel does not install from the farm's index:\n{exc}") from exc
    try:
        if imports:
            try:
                package_code([python, "-c", "; ".join(f"import {m}" for m in imports)])
            except CommandFailed as first:
                argv = import_check_argv(python, wheel, imports, options.test_requires)
                outcome.commands.append(shlex.join(argv[:2]) + " <import check> " + shlex.quote(argv[3]))
                outcome.warnings = undeclared_imports(run_sandboxed(sandbox, argv, policy, log=log,
                                                                    timeout=timeout).output)
                if not outcome.warnings:  # it failed once: no second chance without a reason
                    raise first
                for w in outcome.warnings:
                    log.write(f"warning: {w}\n")
        if options.test_command:
            line = options.test_command.format(python=python, project=project, package=project)
            package_code(["sh", "-c", line])
        outcome.passed = True
    except CommandFailed as exc:
        outcome.detail = failure_message(exc)
    outcome.seconds = time.monotonic() - start
    return outcome


def verify_all(*, wheel: Path, targets: Sequence[Target], log: TextIO, early: VerifyBox | None = None,
               **kw: Any) -> VerifyOutcome:
    """`verify` on each target in turn (a pure or abi3 wheel: its oldest and newest Python), as one
    outcome: passed if every one passed; the first failure's detail."""
    outcomes = []
    for i, target in enumerate(targets):
        if len(targets) > 1:
            log.write(f"verify {wheel.name} for Python {target.python[0]}.{target.python[1]}\n")
        outcomes.append(verify(wheel=wheel, target=target, log=log, early=early if i == 0 else None, **kw))
        if not outcomes[-1].passed:
            break
    first = outcomes[0]
    if len(outcomes) == 1:
        first.markers = targets[0].env
        return first
    failed = next((o for o in outcomes if not o.passed), None)
    return VerifyOutcome(
        passed=failed is None, environment="; ".join(o.environment for o in outcomes),
        install_command=" ; ".join(o.install_command for o in outcomes), imports=first.imports,
        test_command=first.test_command, commands=[c for o in outcomes for c in o.commands],
        seconds=sum(o.seconds for o in outcomes), detail=failed.detail if failed else "",
        pythons=[f"{t.python[0]}.{t.python[1]}" for t in targets[:len(outcomes)]], markers=targets[0].env,
        warnings=list(dict.fromkeys(w for o in outcomes for w in o.warnings)))


def requirements_for(wheel: Path, options: Options, env: dict[str, str]) -> list[Requirement]:
    reqs = runtime_requirements(wheel, env)
    try:
        reqs += [Requirement(r) for r in options.test_requires]
    except Exception as exc:  # pragma: no cover - the schema validated them
        raise InfrastructureFault("verify", str(exc)) from exc
    return reqs


__all__ = ["FarmIndex", "Target", "VerifyOutcome", "dependency_wheels", "marker_environment",
           "missing_requirements", "requirements_for", "targets_for", "venv_python", "verify", "verify_all",
           "verify_on_host"]
