"""The native engine: a PEP 517 isolated build with the host's interpreters, package code sandboxed.

The farm drives the PEP 517 hooks itself (pypa/build's `ProjectBuilder` with the sandbox as its
runner), so that only the hooks run package code, and only inside the sandbox:

1. a fresh build environment (`uv venv`) for the target interpreter;
2. the declared build requirements installed into it by the farm, from the configured index,
   wheels only (`--no-build`: installing runs no package code);
3. `get_requires_for_build_wheel` in the sandbox, without network; what it adds is installed as in 2;
4. `build_wheel` in the sandbox, without network (unless the recipe grants `network`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from build import BuildBackendException, BuildException, ProjectBuilder

from farm.errors import ConfigError, PackageFailure
from farm.util.cmd import CommandFailed, clean_env, run
from farm.worker import build_requires, python2
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.hints import build_failure
from farm.worker.platforms.base import Interpreter
from farm.worker.sandbox import Policy, failure_message, interpreter_roots, package_env, run_sandboxed


class NativeEngine:
    name = "native"

    def build(self, ctx: BuildContext) -> BuildOutput:
        """Build; with `build-requires-as-of = "auto"` (the default) a failed build is tried once more
        with its build requirements as of the sdist's release, in a fresh tree and build environment."""
        def reset() -> None:
            shutil.rmtree(ctx.work / "build-env", ignore_errors=True)
            shutil.rmtree(ctx.work / "built", ignore_errors=True)

        return build_requires.build_as_of_release(ctx, lambda as_of: self._build(ctx, as_of), reset=reset)

    def _build(self, ctx: BuildContext, as_of: build_requires.AsOf | None) -> BuildOutput:
        interp = _interpreter(ctx)
        family, packages = ctx.platform.system_packages(ctx.options.system_packages)
        ctx.platform.install_system_packages(packages, mode=ctx.settings.system_packages, log=ctx.log)
        benv = ctx.work / "build-env"
        python = str(venv_python(benv))
        policy = self._policy(ctx, interp.path, benv)
        for command in [*ctx.options.before_all, *ctx.options.before_build]:
            line = command.format(project=ctx.source, package=ctx.source, python=interp.path)
            self._package_code(ctx, ["sh", "-c", line], policy)
        effective = build_requires.apply(ctx.src, ctx.options.build_requires)
        if python2.is_python2(interp):
            return self._build_python2(ctx, interp, benv, policy, as_of)
        out = ctx.work / "built"
        out.mkdir(parents=True, exist_ok=True)
        ctx.record(run([uv_bin(), "venv", "--quiet", "--no-config", "--python", interp.path, benv],
                       env=clean_env(), log=ctx.log, timeout=300))

        def hook_runner(cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None) -> None:
            # pyproject_hooks' command: [python, its _in_process.py, hook name, control folder]
            paths = [Path(a) for a in cmd[1:] if os.path.isabs(a) and os.path.exists(a)]
            hook = policy.adding(writable=[p for p in paths if p.is_dir()], readable=[p for p in paths if p.is_file()],
                                 env=extra_environ)
            self._package_code(ctx, cmd, hook)

        settings = _config_settings(ctx)
        try:
            builder = ProjectBuilder(ctx.source, python_executable=python, runner=hook_runner)
            # PEP 508 only: they become arguments of uv on the host (an option or a local path would be
            # an injection; build_requires.checked)
            declared = build_requires.checked(sorted(builder.build_system_requires), "declares")
            self._install(ctx, python, declared, as_of)
            asked = builder.get_requires_for_build("wheel", settings)
            dynamic = build_requires.checked(sorted(set(asked) - set(builder.build_system_requires)), "asks for")
            self._install(ctx, python, dynamic, as_of)
            wheel = Path(builder.build("wheel", out, settings))
        except BuildBackendException as exc:  # the hook runner's failure, or the backend's own
            if isinstance(exc.exception, PackageFailure):
                raise exc.exception from exc
            raise PackageFailure("build", f"the build backend failed: {exc}") from exc
        except BuildException as exc:  # pyproject.toml's [build-system] is unusable
            raise PackageFailure("build", str(exc)) from exc
        return BuildOutput(
            wheels=[wheel], repaired=False,
            tools={"python": ".".join(map(str, interp.version)), **tool_versions()},
            effective_build_requires=[*declared, *dynamic] if effective is None else [*effective, *dynamic],
            build_environment=_installed(python),
            isolation={"sandbox": ctx.sandbox.describe(), "network": ctx.options.network,
                       "limits": ctx.limits.describe()},
            adjustments={"buildRequiresAsOf": {**as_of.record(), "retry": False, "resolved": _installed(python)}}
            if as_of else {},
        )

    def _build_python2(self, ctx: BuildContext, interp: Interpreter, benv: Path, policy: Policy,
                       as_of: build_requires.AsOf | None) -> BuildOutput:
        """Python 2.7 (farm/worker/python2.py): a virtualenv with the build requirements the farm resolved
        and installed, then pip's build in the sandbox, which also reads the pip wheel it runs from."""
        if ctx.options.config_settings:
            raise PackageFailure("build", "config-settings cannot be passed to a Python 2 build (pip 20.3, the "
                                 "last for Python 2, has no --config-settings): set the recipe's for Python 3 only")
        tools = python2.tools(ctx.settings.home, ctx.spec.upstream_index, log=ctx.log)
        python = python2.make_env(interp, benv, tools, log=ctx.log)
        requires = python2.build_requirements(ctx.src)
        wheels = python2.download(requires, ctx.work / "build-wheels", abi=python2.abi(str(interp.path)),
                                  platforms=python2.portable_platforms(ctx.platform), index_url=ctx.spec.upstream_index,
                                  as_of=as_of.exclude_newer if as_of else None, log=ctx.log)
        python2.install(tools, python, wheels, log=ctx.log)
        out = ctx.work / "built"
        out.mkdir(parents=True, exist_ok=True)
        self._package_code(ctx, python2.wheel_command(tools, python, ctx.source, out),
                           policy.adding(readable=[tools.pip_wheel]))
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise PackageFailure("build", f"pip's build left {len(built)} wheels, not one")
        pins = python2.pins(wheels)
        return BuildOutput(
            wheels=built, repaired=False,
            tools={**python2.build_record(tools, interp), "wheel-farm": tool_versions()["wheel-farm"]},
            effective_build_requires=requires, build_environment=pins,
            isolation={"sandbox": ctx.sandbox.describe(), "network": ctx.options.network,
                       "limits": ctx.limits.describe()},
            adjustments={"buildRequiresAsOf": {**as_of.record(), "retry": False, "resolved": pins}} if as_of else {},
        )

    def _policy(self, ctx: BuildContext, interpreter: Path, benv: Path) -> Policy:
        """Package code of this build sees: the source tree and the output folder (writable), the build
        environment and the interpreter (read-only), its own HOME and /tmp; network if granted."""
        network = ctx.options.network
        return Policy(
            cwd=ctx.source, writable=(ctx.work / "src", ctx.work / "built", ctx.work / "home"),
            readable=(benv, *interpreter_roots(interpreter)), network=network, tmp=ctx.work / "tmp",
            env=package_env(home=ctx.work / "home", path=[benv / "bin"], network=network,
                            extra=build_env(ctx)),
            limits=ctx.limits)

    def _package_code(self, ctx: BuildContext, argv: Sequence[str], policy: Policy) -> None:
        """Run package code in the sandbox; its failure is the package's, led by what it lacked."""
        try:
            ctx.record(run_sandboxed(ctx.sandbox, argv, policy, log=ctx.log, timeout=ctx.settings.build_timeout))
        except CommandFailed as exc:
            raise build_failure(failure_message(exc), exc.result.output) from exc

    def _install(self, ctx: BuildContext, python: str, requirements: Iterable[str],
                 as_of: build_requires.AsOf | None = None) -> None:
        """Build requirements into the build environment, by the farm: wheels only, from the configured
        index; as of a time (uv's `--exclude-newer`) when given one."""
        reqs = list(requirements)
        if not reqs:
            return
        argv = [uv_bin(), "pip", "install", "--quiet", "--no-config", "--python", python, "--no-build",
                "--index-url", ctx.spec.upstream_index,
                *(["--exclude-newer", as_of.exclude_newer] if as_of else []), *reqs]
        try:
            ctx.record(run(argv, env=clean_env(_uv_cache()), log=ctx.log, timeout=ctx.settings.build_timeout))
        except CommandFailed as exc:
            raise PackageFailure("build", "the build requirements cannot be installed from the index as wheels "
                                 f"(the farm runs no package code outside the sandbox):\n{exc}") from exc


def build_env(ctx: BuildContext) -> dict[str, str]:
    """The build's own variables: SOURCE_DATE_EPOCH, the platform's, then the recipe's."""
    env = {"SOURCE_DATE_EPOCH": str(ctx.src.timestamp)}
    env.update(ctx.platform.build_environment())
    for key, value in ctx.options.environment.items():
        env[key] = os.path.expandvars(value) if "$" in value else value
    return env


def _installed(python: str) -> list[str]:
    """What the build environment holds, `name==version` (recorded in the provenance: `farm rebuild
    --affected-by NAME` finds the builds that used a version)."""
    res = run([uv_bin(), "pip", "freeze", "--no-config", "--python", python], env=clean_env(_uv_cache()), timeout=120,
              check=False)
    return sorted(line.strip() for line in res.output.splitlines() if "==" in line)


def _uv_cache() -> dict[str, str]:
    return {"UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))}


def _config_settings(ctx: BuildContext) -> dict[str, str | list[str]]:
    return {key: list(value) if isinstance(value, list) else value for key, value in ctx.options.config_settings.items()}


def _interpreter(ctx: BuildContext):  # type: ignore[no-untyped-def]
    for interp in ctx.platform.interpreters(ctx.settings.interpreters):
        if interp.tag == ctx.spec.python:
            return interp
    raise ConfigError(f"this worker has no {ctx.spec.python} interpreter (configured: {ctx.settings.interpreters})")


def venv_python(venv: Path, *, windows: bool = os.name == "nt") -> Path:
    """The interpreter of a virtual environment: Scripts\\python.exe on Windows, bin/python elsewhere."""
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"wheel-farm": version("wheel-farm"), "auditwheel": version("auditwheel"), "build": version("build"),
            "uv": run([uv_bin(), "--version"], check=False).output.split()[1]}
