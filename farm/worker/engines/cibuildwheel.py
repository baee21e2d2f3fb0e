"""The cibuildwheel engine on Linux: the build (and auditwheel repair) runs in a container.

The recipe's options become cibuildwheel's `CIBW_*` variables; the image comes from the
worker's `images` setting for the job's platform and Python. The container has no network
(`--network=none`; the host's only when a recipe grants `network`): before cibuildwheel starts,
the farm downloads the build requirements as wheels (`farm/worker/wheelhouse.py`, mounted
read-only; the front end installs from them only) and the recipe's system packages as package
files (a container of the build image that runs only the package manager). Those are installed,
with `before-all`, as root in a root phase whose container becomes the image cibuildwheel starts
from (`prepared_image.py`); cibuildwheel's container then runs as an unprivileged uid with no
capability. It also gets the site's CA bundle, memory and process limits, and never the host's
root file system (cibuildwheel's default `/:/host` mount is switched off). Tests are skipped here:
the farm verifies separately.
"""

from __future__ import annotations

import dataclasses
import io
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from importlib.metadata import version
from pathlib import Path
from typing import TextIO

from farm.config import ImageConfig
from farm.containers import (
    Container,
    ContainerCommandFailed,
    Limits,
    docker_client,
    image_digest,
    image_labels,
    resolve_docker_host,
)
from farm.errors import CommandTimeout, ConfigError, FarmError, InfrastructureFault, PackageFailure
from farm.util.cmd import CommandFailed, Result, clean_env, run
from farm.util.python_tags import dotted
from farm.worker import build_requires, wheelhouse
from farm.worker.engines import prepared_image, python2_container
from farm.worker.engines.base import BuildContext, BuildOutput
from farm.worker.hints import build_failure
from farm.worker.platforms.base import PackageManager
from farm.worker.platforms.linux import container_platform, image_package_family, package_manager_programs
from farm.worker.wheelhouse import WHEELS_IN_CONTAINER

CA_IN_CONTAINER = "/farm/ca-bundle.crt"
PACKAGES_IN_CONTAINER = "/farm/system-packages"
JOB_LABEL = "farm.cibuildwheel-job"
PURE_WHEEL_REFUSED = "Build failed because a pure Python wheel was generated"


class CibuildwheelEngine:
    name = "cibuildwheel"

    def build(self, ctx: BuildContext) -> BuildOutput:
        """Build; a failed build is tried once more with its build requirements (the wheelhouse)
        resolved as of the sdist's release, as the native engine does (`build_requires.build_as_of_release`)."""
        def reset() -> None:
            for folder in ("wheelhouse", "build-wheels", "pure-out"):
                shutil.rmtree(ctx.work / folder, ignore_errors=True)

        return build_requires.build_as_of_release(ctx, lambda as_of: self._build(ctx, as_of), reset=reset)

    def _build(self, ctx: BuildContext, as_of: build_requires.AsOf | None) -> BuildOutput:
        python2 = (dotted(ctx.spec.python) or "").startswith("2.")  # cibuildwheel builds no cp27
        image = choose_image(ctx)
        emulation = container_platform(ctx.platform).emulation()
        if emulation:
            ctx.log.write(f"building for {emulation['target']} under emulation on this {emulation['host']} host: "
                          f"{emulation['emulator']} (QEMU {emulation['qemu']}, {emulation['interpreter']})\n")
        host = resolve_docker_host(ctx.settings.docker_host)
        client = docker_client(host, step="build")
        job_label = f"{ctx.spec.job_id}-{ctx.spec.attempt}-{uuid.uuid4().hex[:8]}"
        try:
            try:
                digest = image_digest(client, image.image)
            except FarmError as exc:
                raise InfrastructureFault("build", str(exc)) from exc
            family, has_uv = image_facts(client, image.image, digest)
            if python2:  # the same image, root phase and confinement; pip 20.3 and virtualenv 16 in it
                return python2_container.build(ctx, client, image=image.image, digest=digest, family=family,
                                               docker_host=host, job_label=job_label, as_of=as_of, emulation=emulation)
            effective = build_requires.apply(ctx.src, ctx.options.build_requires)
            # The build starts from the sdist file itself unless the tree had to be changed.
            from_sdist = effective is None and ctx.sdist.name.endswith(".tar.gz")
            out = ctx.work / "wheelhouse"
            out.mkdir(parents=True, exist_ok=True)
            frontend = "build[uv]" if has_uv else "pip"
            house, prepared = prepare_offline(ctx, client, image=image.image, digest=digest, family=family,
                                              docker_host=host, frontend=frontend, job_label=job_label, as_of=as_of)
            env = cibw_environment(ctx, image=prepared.image, family=family, has_uv=has_uv, job_label=job_label,
                                   docker_host=host)
            env["CIBW_DEPENDENCY_VERSIONS"] = str(house.constraints(ctx.work / "constraints.txt"))
            if not shutil.which("docker", path=env["PATH"]):
                raise InfrastructureFault("build", "the docker client is not on PATH (cibuildwheel runs it)")
            target, cwd = (ctx.sdist, ctx.work) if from_sdist else (Path("."), ctx.source)
            # The project's own [tool.cibuildwheel] (its CI's before-all scripts, config-settings, ...) is
            # not read: the recipe alone decides, as with the native engine.
            config = ctx.work / "cibuildwheel.toml"
            config.write_text("# the farm's options come from CIBW_* variables; the project's table is ignored\n")
            cibw_platform, _ = container_platform(ctx.platform).cibuildwheel_options(prepared.image)
            argv = [sys.executable, "-m", "cibuildwheel", "--output-dir", out, "--platform", cibw_platform,
                    "--config-file", config, target]
            shown = {k: v for k, v in env.items() if k.startswith("CIBW_")}
            ctx.log.write("".join(f"  {k}={v}\n" for k, v in sorted(shown.items())))
            pure = False
            failed = self._cibuildwheel(ctx, argv, cwd=cwd, env=env, shown=shown)
            if failed and missing_requirement(failed.result.output) and not house.probed and wheelhouse.add_dynamic(
                    ctx, client, image.image, house, digest=digest, frontend=frontend,
                    env_script=container_environment(ctx), labels={JOB_LABEL: job_label}):
                ctx.log.write("building again with what the backend added to the wheelhouse\n")
                failed = self._cibuildwheel(ctx, argv, cwd=cwd, env=env, shown=shown)
            if failed:
                output = failed.result.output
                if PURE_WHEEL_REFUSED not in output:
                    raise build_failure(offline_hint(output) + str(failed), output) from failed
                pure = True
                build_pure_wheel(ctx, client, image=prepared.image, env=env,
                                 src=ctx.sdist if from_sdist else ctx.source, out=out, job_label=job_label)
            server = client.version().get("Version", "?")
        finally:
            _remove_job_containers(client, job_label)
            client.close()
        wheels = sorted(out.glob("*.whl"))
        if not wheels:
            raise PackageFailure("build", "cibuildwheel finished without producing a wheel")
        audited = audit_abi3(ctx, wheels)
        return BuildOutput(
            wheels=wheels, repaired=True,
            tools={"cibuildwheel": version("cibuildwheel"), "wheel-farm": version("wheel-farm"),
                   "docker-engine": server, "image": image.image,
                   "build-frontend": "pip" if pure or not has_uv else "build[uv]",
                   **({"qemu": emulation["qemu"]} if emulation else {}),
                   **({"abi3audit": version("abi3audit")} if audited else {})},
            image_digest=digest,
            effective_build_requires=[*house.declared, *house.dynamic],
            build_environment=house.pins,
            isolation=isolation(ctx, image=image.image, prepared=prepared, build_wheels=house.wheels,
                                emulation=emulation),
            adjustments={"buildRequiresAsOf": {**as_of.record(), "retry": False, "resolved": house.pins}}
            if as_of else {},
        )


    @staticmethod
    def _cibuildwheel(ctx: BuildContext, argv: list, *, cwd: Path, env: dict[str, str],
                      shown: dict[str, str]) -> CommandFailed | None:
        """One cibuildwheel run, recorded: None when it succeeded, its failure when the package's; a
        timeout or an engine fault is raised as such."""
        try:
            result = run(argv, cwd=cwd, env=env, log=ctx.log, timeout=ctx.settings.cibuildwheel_timeout)
        except CommandFailed as exc:
            _record(ctx, exc.result, shown)
            if exc.timed_out:
                raise CommandTimeout("build", str(exc)) from exc
            if docker_client_fault(exc.result.output):
                raise InfrastructureFault("build", str(exc)) from exc
            return exc
        _record(ctx, result, shown)
        return None


def isolation(ctx: BuildContext, *, image: str, prepared: prepared_image.Prepared, build_wheels: list[str],
              emulation: dict[str, str] | None) -> dict[str, object]:
    """What package code of a container build ran in, for provenance: the root phase as root with the
    package managers' capabilities, then the build as the unprivileged user with none."""
    return {"sandbox": {"kind": "container", "image": image, "user": build_user(ctx), "capabilities": [],
                        "rootPhase": {"user": "root", "capabilities": list(prepared_image.ROOT_CAPABILITIES),
                                      "preparedImage": prepared.image, "reused": prepared.reused}},
            "network": network(ctx), "limits": {"memory": ctx.settings.build_memory, "processes": ctx.settings.build_pids},
            "buildWheels": build_wheels, **({"emulation": emulation} if emulation else {})}


def network(ctx: BuildContext) -> str:
    """The build container's network: none, unless the recipe grants `network` (then the host's)."""
    return "host" if ctx.options.network else "none"


def build_user(ctx: BuildContext) -> str:
    """The uid:gid package code runs as in the build container (the sandbox's unprivileged uid)."""
    return f"{ctx.settings.sandbox_uid}:{ctx.settings.sandbox_uid}"


def root_phase(ctx: BuildContext, client, *, image: str, digest: str, family: str, docker_host: str,  # type: ignore[no-untyped-def]
               job_label: str, log: TextIO) -> tuple[str | None, Callable[[], prepared_image.Prepared]]:
    """The prepared image already made for this build's inputs (None: none yet), and the root phase
    that reuses it or makes it: the recipe's system packages downloaded with the network and installed
    with before-all as root, without it (farm/worker/engines/prepared_image.py)."""
    packages = list(getattr(ctx.options.system_packages, family, [])) if family else []
    env_script = container_environment(ctx)
    script = before_all_script(ctx, family)
    prepared_key = prepared_image.key(ctx, digest=digest, family=family, packages=packages, script=script,
                                      env_script=env_script, user=build_user(ctx))
    labels = {JOB_LABEL: job_label}
    found = prepared_image.find(client, prepared_key)

    def run() -> prepared_image.Prepared:
        if found is None:
            fetch_system_packages(ctx, docker_host=docker_host, image=image, family=family, packages=packages,
                                  labels=labels, log=log)
        sub = dataclasses.replace(ctx, log=log)
        return prepared_image.prepare(
            sub, client, image=image, prepared_key=prepared_key, script=script, env_script=env_script,
            user=build_user(ctx), python=container_platform(ctx.platform).image_python(ctx.spec.python),
            mounts={str(ctx.work / "system-packages"): PACKAGES_IN_CONTAINER,
                    **({str(ctx.source): prepared_image.PROJECT_IN_ROOT_PHASE} if script else {})},
            labels=labels)

    return found, run


def prepare_offline(ctx: BuildContext, client, *, image: str, digest: str, family: str, docker_host: str,  # type: ignore[no-untyped-def]
                    frontend: str, job_label: str, as_of: build_requires.AsOf | None = None,
                    ) -> tuple[wheelhouse.Wheelhouse, prepared_image.Prepared]:
    """The build's inputs, made before it starts: the wheelhouse, and meanwhile (in a thread, its log
    appended afterwards) the prepared image (`root_phase`)."""
    log = io.StringIO()
    _ = ctx.source  # unpacked here, not in both threads
    found, root = root_phase(ctx, client, image=image, digest=digest, family=family, docker_host=docker_host,
                             job_label=job_label, log=log)
    libc = prepared_image.libc(client, found) if found else None
    with ThreadPoolExecutor(max_workers=1) as pool:
        fetched = pool.submit(root)
        try:
            house = wheelhouse.prepare(ctx, client, image, digest=digest, frontend=frontend, libc=libc, as_of=as_of)
        except BaseException:
            fetched.exception()  # waits for it: the wheelhouse's failure is the one reported
            raise
        finally:
            wait([fetched])
            ctx.log.write(log.getvalue())
        prepared = fetched.result()
    return house, prepared


def fetch_system_packages(ctx: BuildContext, *, docker_host: str, image: str, family: str, packages: list[str],  # noqa: PLR0913
                          labels: dict[str, str], log: io.StringIO) -> list[Path]:
    """The recipe's system packages and what they need beyond the image, as package files in
    `ctx.work/system-packages` (mounted into the build container, where before-all installs them).

    Downloaded in a container of the build image with the host's network that runs only the package
    manager in download-only mode: no package code, no maintainer scripts."""
    dest = ctx.work / "system-packages"
    dest.mkdir(parents=True, exist_ok=True)
    if not packages:
        return []
    from docker.errors import DockerException

    manager = ctx.platform.package_manager(family)
    script = manager.download_script(packages, "/tmp/farm/pkgs")
    client = docker_client(docker_host, step="build")
    try:
        with Container(client, image, network="host", labels=labels, environment={"DEBIAN_FRONTEND": "noninteractive"},
                       limits=Limits(memory=ctx.settings.build_memory, pids=ctx.settings.build_pids)) as box:
            argv = ["sh", "-c", script]
            ctx.commands.append(shlex.join(argv))
            try:
                box.call(argv, log=log, timeout=900)
            except ContainerCommandFailed as exc:
                if exc.timed_out:
                    raise InfrastructureFault("build", str(exc)) from exc
                raise PackageFailure("build", f"the recipe's system packages could not be downloaded:\n{exc}") from exc
            box.copy_out("/tmp/farm/pkgs", ctx.work / "system-packages-download")
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed while the system packages were fetched: {exc}") from exc
    finally:
        client.close()
    files = []
    for path in sorted((ctx.work / "system-packages-download" / "pkgs").glob(f"*{manager.package_files}")):
        files.append(Path(shutil.move(path, dest / path.name)))
    log.write(f"system packages for the offline build: {' '.join(p.name for p in files) or 'all in the image'}\n")
    return files


def choose_image(ctx: BuildContext) -> ImageConfig:
    """The first image configured for the job's platform that carries its Python."""
    for image in ctx.settings.images.get(ctx.platform.name, []):
        if ctx.spec.python in image.pythons:
            return image
    configured = ", ".join(f"{i.image} ({'/'.join(i.pythons)})" for i in ctx.settings.images.get(ctx.platform.name, []))
    raise ConfigError(f"no build image for {ctx.spec.python} on {ctx.platform.name} "
                      f"(configured: {configured or 'none'})")


def cibw_environment(ctx: BuildContext, *, image: str, family: str, has_uv: bool, job_label: str,
                     docker_host: str) -> dict[str, str]:
    """The host environment cibuildwheel runs with: clean of installer settings, private temp dirs."""
    _, selected = container_platform(ctx.platform).cibuildwheel_options(image)
    for folder in ("tmp", "build-wheels"):  # the last is mounted into the container
        (ctx.work / folder).mkdir(parents=True, exist_ok=True)
    tmp = ctx.work / "tmp"
    ca = ctx.work / "ca-bundle.crt"
    shutil.copyfile(ca_bundle(), ca)
    env = clean_env({
        "CIBW_BUILD": ctx.spec.build_id,
        **selected,
        "CIBW_BUILD_FRONTEND": "build[uv]" if has_uv else "pip",
        "CIBW_BUILD_VERBOSITY": "1",
        "CIBW_TEST_SKIP": "*",
        "CIBW_TEST_COMMAND": "",
        # cibuildwheel's own audit would make a venv and install abi3audit from an index at build
        # time; the farm audits abi3 wheels itself, offline (`audit_abi3`)
        "CIBW_AUDIT_COMMAND": "",
        "CIBW_AUDIT_REQUIRES": "",
        "CIBW_ENVIRONMENT": container_environment(ctx),
        "CIBW_REPAIR_WHEEL_COMMAND": repair_command(ctx),
        "CIBW_CONTAINER_ENGINE": engine_config(ctx, ca=ca, job_label=job_label),
        "CIBW_CACHE_PATH": str(ctx.work / "cibw-cache"),
        "SOURCE_DATE_EPOCH": str(ctx.src.timestamp),
        "DOCKER_HOST": docker_host,
        "DOCKER_CONFIG": str(ctx.work / "docker-config"),
        "TMPDIR": str(tmp),
    }, path_prepend=[Path(sys.executable).parent])
    before_build = [c.replace("{python}", "python") for c in ctx.options.before_build]
    if before_build:
        env["CIBW_BEFORE_BUILD"] = _script(before_build)
    if ctx.options.config_settings:
        env["CIBW_CONFIG_SETTINGS"] = config_settings(ctx.options.config_settings)
    return env


def container_environment(ctx: BuildContext) -> str:
    """CIBW_ENVIRONMENT: the front end installs from the wheelhouse only; the CA bundle; the recipe's variables.

    pip gets `PIP_NO_INDEX` and `PIP_FIND_LINKS`; uv, which has no variable for `--no-index`, gets
    `UV_OFFLINE` (no network access at all) and `UV_FIND_LINKS`. Values are double-quoted, so `$VAR`
    in a recipe value expands inside the container.
    """
    pairs = {
        "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_IN_CONTAINER,
        "UV_NO_CONFIG": "1", "UV_OFFLINE": "1", "UV_FIND_LINKS": WHEELS_IN_CONTAINER,
        "PIP_CERT": CA_IN_CONTAINER, "SSL_CERT_FILE": CA_IN_CONTAINER, "REQUESTS_CA_BUNDLE": CA_IN_CONTAINER,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    literal = " ".join(f"{k}={shlex.quote(v)}" for k, v in pairs.items())
    recipe = " ".join(f"{k}={_double_quote(v)}" for k, v in ctx.options.environment.items())
    return f"{literal} {recipe}".strip()


# Where any download a tool tries would go: nowhere (a closed port on this host).
NO_NETWORK_PROXY = "http://127.0.0.1:9"


def audit_abi3(ctx: BuildContext, wheels: list[Path]) -> list[str]:
    """The audit cibuildwheel runs for abi3 wheels, done by the farm: its own abi3audit (a dependency
    of the farm, installed with it), strict, on each repaired abi3 wheel, with no index and no
    network (proxies to a closed port). Nothing is downloaded at build time. Reading the wheel's
    ELF files runs no package code. A wheel tagged abi3 that uses more than the limited API of its
    floor fails the build (the package's fault). Returns the wheels audited."""
    abi3 = [w for w in wheels if "-abi3-" in w.name]
    env = clean_env({"ABI3AUDIT_LOGLEVEL": "warning", "HTTP_PROXY": NO_NETWORK_PROXY, "HTTPS_PROXY": NO_NETWORK_PROXY,
                     "http_proxy": NO_NETWORK_PROXY, "https_proxy": NO_NETWORK_PROXY, "NO_PROXY": "", "no_proxy": "",
                     "XDG_CACHE_HOME": str(ctx.work / "audit-cache")})
    for wheel in abi3:
        try:
            ctx.record(run([sys.executable, "-m", "abi3audit", "--strict", "--verbose", str(wheel)], env=env,
                           log=ctx.log, timeout=600))
        except CommandFailed as exc:
            if exc.timed_out:
                raise CommandTimeout("build", str(exc)) from exc
            failure = PackageFailure("build", f"{wheel.name} is tagged abi3 but abi3audit finds it uses more than "
                                     f"the limited API it declares:\n{exc.result.output[-3000:]}")
            failure.retry_as_of = False  # type: ignore[attr-defined]  # the source's calls, not its build requirements
            raise failure from exc
    return [w.name for w in abi3]


def _double_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return f'"{escaped}"'


def repair_command(ctx: BuildContext) -> str:
    """CIBW_REPAIR_WHEEL_COMMAND: the platform's repair command line with the image's tool and
    cibuildwheel's placeholders (put in after quoting, which would quote the braces)."""
    platform = container_platform(ctx.platform)
    first = shlex.join(platform.repair_command("WHEEL", "DEST", ctx.options.repair_exclude, program="auditwheel"))
    plat = platform.oldest_policy()
    again = shlex.join(platform.repair_command("WHEEL", "DEST", ctx.options.repair_exclude, program="auditwheel",
                                               plat=plat))
    # As the native path does (LinuxPlatform.repair): an extension that links no C library leaves
    # auditwheel nothing to detect the libc from; then the oldest policy of the platform's libc is named.
    script = (f'out=$({first} 2>&1); rc=$?; printf "%s\\n" "$out"; '
              f'if [ $rc -ne 0 ]; then case "$out" in *"couldn\'t detect libc"*) '
              f'echo "auditwheel could not tell the C library from the wheel; repairing for {plat}"; '
              f'{again};; *) exit $rc;; esac; fi')
    return script.replace("DEST", "{dest_dir}").replace("WHEEL", "{wheel}")


def engine_config(ctx: BuildContext, *, ca: Path, job_label: str) -> str:
    args = [f"--network={network(ctx)}", f"--memory={ctx.settings.build_memory}",
            f"--memory-swap={ctx.settings.build_memory}", f"--pids-limit={ctx.settings.build_pids}",
            f"--volume={ca}:{CA_IN_CONTAINER}:ro",
            f"--volume={ctx.work / 'build-wheels'}:{WHEELS_IN_CONTAINER}:ro",
            f"--label={JOB_LABEL}={job_label}", "--security-opt=no-new-privileges",
            # package code: an unprivileged user without any capability (root ran in the root phase)
            f"--user={build_user(ctx)}", "--cap-drop=ALL"]
    return f"docker; create_args: {shlex.join(args)}; disable_host_mount: true"


def config_settings(settings: dict[str, str | list[str]]) -> str:
    items = [f"{k}={item}" for k, v in settings.items() for item in (v if isinstance(v, list) else [v])]
    return shlex.join(items)


def system_packages_command(manager: PackageManager, packages: list[str]) -> str | None:
    """before-all's install of the downloaded package files (mounted at PACKAGES_IN_CONTAINER), offline."""
    if not packages:
        return None
    return (f'set -- {PACKAGES_IN_CONTAINER}/*{manager.package_files}; '
            f'if [ -e "$1" ]; then {manager.install_files}; fi')


def before_all_script(ctx: BuildContext, family: str) -> str | None:
    """The root phase's script (farm/worker/engines/prepared_image.py): the offline install of the
    system packages, then the recipe's before-all."""
    packages = list(getattr(ctx.options.system_packages, family, [])) if family else []
    system = system_packages_command(ctx.platform.package_manager(family), packages) if packages else None
    return prepared_image.root_script(ctx, install=system,
                                      before_all=[c.replace("{python}", "python") for c in ctx.options.before_all])


def _script(commands: list[str]) -> str:
    """One shell script from several commands, stopping at the first that fails."""
    if len(commands) == 1:
        return commands[0]
    return "set -e\n" + "\n".join(commands)


_FACTS: dict[str, tuple[str, bool]] = {}


def image_facts(client, image: str, digest: str) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    """The image's package-manager family and whether it has uv: from the farm's labels, else a probe."""
    labels = image_labels(client, image)
    if labels.get("farm.family") and labels.get("farm.kind") == "build":
        return labels["farm.family"], True
    if digest not in _FACTS:
        programs = " ".join(["uv", *package_manager_programs()])
        probe = f"for t in {programs}; do command -v $t >/dev/null 2>&1 && echo $t; done; true"
        with Container(client, image, network="none", limits=Limits(memory="256m", pids=64)) as box:
            found = set(box.call(["sh", "-c", probe], timeout=60).output.split())
        _FACTS[digest] = (image_package_family(found), "uv" in found)
    return _FACTS[digest]


# What pip (--no-index) and uv (--offline) say when a requirement is not in the wheelhouse.
_NOT_IN_WHEELHOUSE = ("was not found in the cache", "No matching distribution found for")


def missing_requirement(output: str) -> bool:
    """Whether the offline front end failed for a requirement the wheelhouse lacks."""
    return any(m in output for m in _NOT_IN_WHEELHOUSE)


def offline_hint(output: str) -> str:
    """A first line for a build that asked for a requirement the wheelhouse lacks, else nothing."""
    if not missing_requirement(output):
        return ""
    return ("the build's front end asked for a requirement that is not in the farm's wheelhouse (the build "
            "container has no network; the backend may ask for more there than in the farm's probe of its "
            "hook, e.g. because of the recipe's system packages)\n")


def docker_client_fault(output: str) -> bool:
    """True when cibuildwheel failed because of the engine rather than the package."""
    markers = ("Cannot connect to the Docker daemon", "is too old or is not working properly",
               "error during connect", "No such image")
    return any(m in output for m in markers)


def build_pure_wheel(ctx: BuildContext, client, *, image: str, env: dict[str, str], src: Path, out: Path,  # type: ignore[no-untyped-def]
                     job_label: str) -> None:
    """cibuildwheel refuses pure-Python wheels (a dependency such as pycparser): build it here instead.

    Same image, network, limits, CA bundle, wheelhouse and recipe environment as the cibuildwheel build;
    the wheel goes to `out`. A failing build is the package's failure.
    """
    python = container_platform(ctx.platform).image_python(ctx.spec.python)
    target = shlex.quote(src.name)
    if env["CIBW_BUILD_FRONTEND"] == "build[uv]":
        # pypa/build as cibuildwheel runs it: its verbose runner lets the hooks write straight to the
        # output instead of through a pipe it waits on, which a daemon started by setup.py could hold.
        ctx.log.write("cibuildwheel refused a pure-Python wheel: building it with build in the same image\n")
        tree = f'mkdir -p /tmp/farm/tree && tar -xzf {target} -C /tmp/farm/tree && cd /tmp/farm/tree/*/' \
            if src.is_file() else f"cd {target}"
        build = f"exec {python} -m build -v --wheel --installer=uv --outdir /tmp/farm/out ."
        script = f"export {env['CIBW_ENVIRONMENT']}; set -e; {tree}; {build}"
    else:
        ctx.log.write("cibuildwheel refused a pure-Python wheel: building it with pip in the same image\n")
        script = (f"export {env['CIBW_ENVIRONMENT']}; "
                  f"exec {python} -m pip wheel --no-deps --wheel-dir /tmp/farm/out {target}")
    limits = Limits(memory=ctx.settings.build_memory, pids=ctx.settings.build_pids, drop_capabilities=True)
    uid = ctx.settings.sandbox_uid
    with Container(client, image, network=network(ctx), limits=limits, labels={JOB_LABEL: job_label},  # type: ignore[arg-type]
                   user=build_user(ctx), read_only_files={str(ctx.work / "build-wheels"): WHEELS_IN_CONTAINER,
                                                          str(ctx.work / "ca-bundle.crt"): CA_IN_CONTAINER}) as box:
        box.call(["mkdir", "-p", "/tmp/farm"])  # as the build user, who writes the tree and the wheel there
        box.copy_into(src, "/tmp/farm", owner=uid)
        argv = ["sh", "-c", script]
        ctx.commands.append(shlex.join(argv))
        try:
            box.call(argv, env={"SOURCE_DATE_EPOCH": env["SOURCE_DATE_EPOCH"]}, workdir="/tmp/farm", log=ctx.log,
                     timeout=ctx.settings.cibuildwheel_timeout)
        except ContainerCommandFailed as exc:
            if exc.timed_out:
                raise CommandTimeout("build", str(exc)) from exc
            raise build_failure(offline_hint(exc.result.output) + str(exc), exc.result.output) from exc
        for path in box.copy_out("/tmp/farm/out", ctx.work / "pure-out"):
            for wheel in path.glob("*.whl"):
                shutil.move(wheel, out / wheel.name)


def _record(ctx: BuildContext, result: Result, shown: dict[str, str]) -> None:
    ctx.record(dataclasses.replace(result, argv=["env", *[f"{k}={v}" for k, v in sorted(shown.items())],
                                                 *result.argv]))


def _remove_job_containers(client, job_label: str) -> None:  # type: ignore[no-untyped-def]
    """A killed cibuildwheel leaves its container running: remove whatever this build started."""
    from docker.errors import DockerException

    try:
        for container in client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_label}"}):
            container.remove(force=True, v=True)
    except DockerException:
        pass


def ca_bundle() -> Path:
    from farm.images import default_ca_bundle

    return default_ca_bundle()
