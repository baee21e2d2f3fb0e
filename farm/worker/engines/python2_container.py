"""Python 2.7 in the build container, for the sdists that still declare it.

`farm image build` puts the suite's CPython 2.7 into bullseye's (and older suites') images, in
/opt/python/cp27-cp27 beside the Python 3s. cibuildwheel builds no cp27, so for a cp27 job the
container engine runs the steps of the native engine's Python 2 path (farm/worker/python2.py) in a
container of the build image itself, confined as cibuildwheel's builds are:

1. the root phase as for any container build (the recipe's system packages and before-all, as
   root, no network: `cibuildwheel.root_phase`), which also reads the image's C library;
2. the build requirements (pyproject.toml's, else the legacy backend's, and wheel) resolved on the
   host by the farm's own pip for cp27mu and the image's glibc, as wheels, mounted read-only with
   the pinned virtualenv 16 and pip 20.3;
3. as the unprivileged build user, no capability, no network unless the recipe grants it: a
   virtualenv with only those wheels in it, before-build, `pip wheel --no-build-isolation --no-index`,
   and the platform's auditwheel repair (as cibuildwheel's `repair-wheel-command`).
"""

from __future__ import annotations

import shlex
import shutil
from importlib.metadata import version

from farm.containers import Container, ContainerCommandFailed, Limits
from farm.errors import CommandTimeout, InfrastructureFault, PackageFailure
from farm.util.python_tags import dotted
from farm.worker import build_requires, python2
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.hints import build_failure
from farm.worker.platforms.linux import container_platform
from farm.worker.wheelhouse import WHEELS_IN_CONTAINER

ABI = "cp27mu"  # Debian's CPython 2.7 is a UCS-4 build (the image build checks it)
TOOLS_IN_CONTAINER = "/farm/python2"
ROOT = "/tmp/farm"


def build(ctx: BuildContext, client, *, image: str, digest: str, family: str, docker_host: str,  # type: ignore[no-untyped-def]
          job_label: str, as_of: build_requires.AsOf | None, emulation: dict[str, str] | None) -> BuildOutput:
    """Build and repair the cp27 wheel of `ctx` in `image` (a build image that carries cp27)."""
    from docker.errors import DockerException

    from farm.worker.engines import cibuildwheel as cibw
    from farm.worker.engines import prepared_image

    if ctx.options.config_settings:
        raise PackageFailure("build", "config-settings cannot be passed to a Python 2 build (pip 20.3, the "
                             "last for Python 2, has no --config-settings): set the recipe's for Python 3 only")
    platform = container_platform(ctx.platform)
    _, root = cibw.root_phase(ctx, client, image=image, digest=digest, family=family, docker_host=docker_host,
                              job_label=job_label, log=ctx.log)
    prepared = root()
    libc = prepared_image.libc(client, prepared.image)
    platforms = platform.image_wheel_platforms(libc)[0] if libc else python2.portable_platforms(ctx.platform)
    tools = python2.tools(ctx.settings.home, ctx.spec.upstream_index, log=ctx.log)
    build_requires.apply(ctx.src, ctx.options.build_requires)  # the recipe's overrides, into the tree's pyproject.toml
    requires = python2.build_requirements(ctx.src)
    wheels = python2.download(requires, ctx.work / "build-wheels", abi=ABI, platforms=platforms,
                              index_url=ctx.spec.upstream_index, as_of=as_of.exclude_newer if as_of else None,
                              log=ctx.log)
    pins = python2.pins(wheels)
    ctx.log.write(f"build requirements for Python 2.7: {' '.join(pins) or 'none'}\n")
    ca = ctx.work / "ca-bundle.crt"
    shutil.copyfile(cibw.ca_bundle(), ca)
    interpreter = platform.image_python(ctx.spec.python)
    script = build_script(ctx, interpreter=interpreter, tree=ctx.source.name, tools=tools,
                          repair=cibw.repair_command(ctx), have_wheels=bool(wheels))
    limits = Limits(memory=ctx.settings.build_memory, pids=ctx.settings.build_pids, drop_capabilities=True)
    mounts = {str(ctx.work / "build-wheels"): WHEELS_IN_CONTAINER, str(ca): cibw.CA_IN_CONTAINER,
              str(tools.pip_wheel): f"{TOOLS_IN_CONTAINER}/{tools.pip_wheel.name}",
              str(tools.virtualenv.parent): f"{TOOLS_IN_CONTAINER}/virtualenv"}
    out = ctx.work / "wheelhouse"
    out.mkdir(parents=True, exist_ok=True)
    try:
        with Container(client, prepared.image, network=cibw.network(ctx), limits=limits,  # type: ignore[arg-type]
                       labels={cibw.JOB_LABEL: job_label}, user=cibw.build_user(ctx), read_only_files=mounts) as box:
            box.call(["mkdir", "-p", ROOT], workdir="/")  # as the build user, who owns what is made there
            box.copy_into(ctx.source, ROOT, owner=ctx.settings.sandbox_uid)
            argv = ["sh", "-c", script]
            ctx.commands.append(shlex.join(argv))
            try:
                box.call(argv, env={"SOURCE_DATE_EPOCH": str(ctx.src.timestamp)}, workdir=ROOT, log=ctx.log,
                         timeout=ctx.settings.cibuildwheel_timeout)
            except ContainerCommandFailed as exc:
                if exc.timed_out:
                    raise CommandTimeout("build", str(exc)) from exc
                raise build_failure(str(exc), exc.result.output) from exc
            for path in box.copy_out(f"{ROOT}/out", ctx.work / "python2-out"):
                for wheel in path.glob("*.whl"):
                    shutil.move(wheel, out / wheel.name)
        server = client.version().get("Version", "?")
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed during the Python 2 build: {exc}") from exc
    built = sorted(out.glob("*.whl"))
    if len(built) != 1:
        raise PackageFailure("build", f"pip's build and the repair left {len(built)} wheels, not one")
    return BuildOutput(
        wheels=built, repaired=True,
        tools={"python": dotted(ctx.spec.python) or "2.7", **tools.versions(), "wheel-farm": version("wheel-farm"), "docker-engine": server,
               "image": image, "build-frontend": "pip", **({"qemu": emulation["qemu"]} if emulation else {})},
        image_digest=digest, effective_build_requires=requires, build_environment=pins,
        isolation=cibw.isolation(ctx, image=image, prepared=prepared, build_wheels=[w.name for w in wheels],
                                 emulation=emulation),
        adjustments={"buildRequiresAsOf": {**as_of.record(), "retry": False, "resolved": pins}} if as_of else {},
    )


def build_script(ctx: BuildContext, *, interpreter: str, tree: str, tools: python2.Tools, repair: str,
                 have_wheels: bool) -> str:
    """The build container's script: the environment, before-build, pip's build, the repair (a pure
    wheel is kept as it is)."""
    from farm.worker.engines.cibuildwheel import container_environment

    env, pip = f"{ROOT}/env", f"{ROOT}/env/bin/python {TOOLS_IN_CONTAINER}/{tools.pip_wheel.name}/pip"
    quiet = "--no-python-version-warning --disable-pip-version-check"
    lines = [
        f"export {container_environment(ctx)}",
        f'export PATH="{env}/bin:$PATH"',
        "set -e",
        f"{shlex.quote(interpreter)} {TOOLS_IN_CONTAINER}/virtualenv/virtualenv.py --quiet --no-download --no-pip "
        f"--no-setuptools --no-wheel {env}",
        *([f"{pip} install --quiet {quiet} --no-index --no-deps --only-binary=:all: --find-links "
           f"{WHEELS_IN_CONTAINER} {WHEELS_IN_CONTAINER}/*.whl"] if have_wheels else []),
        f"cd {ROOT}/{shlex.quote(tree)}",
        *[c.replace("{python}", "python").replace("{project}", ".").replace("{package}", ".")
          for c in ctx.options.before_build],
        f"{pip} wheel {quiet} --no-deps --no-build-isolation --no-index --no-cache-dir --wheel-dir {ROOT}/built .",
        f"mkdir -p {ROOT}/out",
        "set +e  # the repair command tests its own exit status (cibuildwheel runs it so)",
        f"for wheel in {ROOT}/built/*.whl; do",
        '  case "$wheel" in',
        f'    *-none-any.whl) cp "$wheel" {ROOT}/out/ || exit 1;;',
        "    *) (" + repair.replace("{wheel}", '"$wheel"').replace("{dest_dir}", f"{ROOT}/out") + ") || exit 1;;",
        "  esac",
        "done",
    ]
    return "\n".join(lines)


__all__ = ["ABI", "build", "build_script"]
