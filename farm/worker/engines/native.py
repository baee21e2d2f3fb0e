"""The native engine: a PEP 517 isolated build with the host's interpreters (uv or pypa/build)."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from farm.errors import ConfigError, PackageFailure
from farm.util.cmd import CommandFailed, clean_env, run
from farm.worker import build_requires
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.hints import build_failure


class NativeEngine:
    name = "native"

    def build(self, ctx: BuildContext) -> BuildOutput:
        interp = _interpreter(ctx)
        family, packages = ctx.platform.system_packages(ctx.options.system_packages)
        ctx.platform.install_system_packages(packages, mode=ctx.settings.system_packages, log=ctx.log)
        env = build_env(ctx)
        for command in [*ctx.options.before_all, *ctx.options.before_build]:
            line = command.format(project=ctx.source, package=ctx.source, python=interp.path)
            self._run(ctx, [line], shell=True, env=env, timeout=ctx.settings.build_timeout)
        effective = build_requires.apply(ctx.src, ctx.options.build_requires)
        out = ctx.work / "built"
        out.mkdir(parents=True, exist_ok=True)
        if ctx.settings.build_frontend == "uv":
            argv = [uv_bin(), "build", "--wheel", "--no-config", "--out-dir", out, "--python", interp.path,
                    "--default-index", ctx.spec.upstream_index]
            for key, value in _settings_pairs(ctx):
                argv.append(f"--config-setting={key}={value}")
            argv.append(ctx.source)
        else:
            argv = [interp.path, "-m", "build", "--wheel", "--outdir", out]
            for key, value in _settings_pairs(ctx):
                argv.append(f"--config-setting={key}={value}")
            argv.append(ctx.source)
            env.setdefault("PIP_INDEX_URL", ctx.spec.upstream_index)
        self._run(ctx, argv, env=env, timeout=ctx.settings.build_timeout)
        wheels = sorted(out.glob("*.whl"))
        if not wheels:
            raise PackageFailure("build", "the build finished without producing a wheel")
        return BuildOutput(
            wheels=wheels, repaired=False,
            tools={"python": ".".join(map(str, interp.version)), **tool_versions(ctx.settings.build_frontend)},
            effective_build_requires=effective if effective is not None else build_requires.declared(ctx.src),
        )

    def _run(self, ctx: BuildContext, argv: list, **kw) -> None:
        try:
            ctx.record(run(argv, cwd=ctx.source, log=ctx.log, **kw))
        except CommandFailed as exc:
            raise build_failure(str(exc), exc.result.output) from exc


def build_env(ctx: BuildContext) -> dict[str, str]:
    """Host environment without installer configuration, plus the recipe's environment."""
    env = clean_env({"SOURCE_DATE_EPOCH": str(ctx.src.timestamp)},
                    path_prepend=[Path(sys.executable).parent])
    env["UV_CACHE_DIR"] = os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv"))
    env.update(ctx.platform.build_environment())
    for key, value in ctx.options.environment.items():
        env[key] = os.path.expandvars(value) if "$" in value else value
    return env


def _settings_pairs(ctx: BuildContext) -> list[tuple[str, str]]:
    pairs = []
    for key, value in ctx.options.config_settings.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, item))
    return pairs


def _interpreter(ctx: BuildContext):  # type: ignore[no-untyped-def]
    for interp in ctx.platform.interpreters(ctx.settings.interpreters):
        if interp.tag == ctx.spec.python:
            return interp
    raise ConfigError(f"this worker has no {ctx.spec.python} interpreter (configured: {ctx.settings.interpreters})")


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


@lru_cache(maxsize=2)
def tool_versions(frontend: str) -> dict[str, str]:
    from importlib.metadata import version

    versions = {"wheel-farm": version("wheel-farm"), "auditwheel": version("auditwheel")}
    if frontend == "uv":
        versions["uv"] = run([uv_bin(), "--version"], check=False).output.split()[1]
    else:
        versions["build"] = version("build")
    return versions
