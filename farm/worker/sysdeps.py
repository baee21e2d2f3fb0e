"""Which distribution package provides what a failed build says is missing.

`farm.worker.hints` reads a failed build's output for a missing header, pkg-config module, CMake
package, `-l` library or `*-config` program. Here each is looked up in Debian's Contents index of
the image's suite (`dists/<suite>/main/Contents-<arch>.gz` on the configured mirror, what apt-file
reads), so the build can be retried with the package that provides it installed, and a recipe
suggested. The index is downloaded once per mirror, suite and architecture (about 10 MB), reduced
to the paths that can answer such a question (headers, `.pc` files, CMake package files, shared
and static libraries, `*-config` programs) and cached under `~/.cache/wheel-farm/contents/`.

A name is matched against the files a package of that kind installs, and candidates are ranked:
development packages (`-dev`) first, then the most direct path (`usr/include/yaml.h` before
`usr/include/foo/yaml.h`), then the package name. RPM-based images answer the same question with
`dnf provides` inside the image (`dnf_provides_argv`); it needs the image's repositories.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.errors import CommandTimeout, FarmError, InfrastructureFault, PackageFailure

if TYPE_CHECKING:
    from farm.config import Settings
    from farm.recipes.schema import Options
    from farm.worker.engines.base import BuildContext, BuildOutput, Engine

_KEEP = re.compile(
    r"^usr/include/.+"
    r"|^usr/(?:lib|share)/(?:[^/]+/)*pkgconfig/[^/]+\.pc$"
    r"|^usr/(?:lib|share)/(?:[^/]+/)*cmake/[^/]+/[^/]+(?:Config|-config)\.cmake$"
    r"|^usr/lib/(?:[^/]+/)?lib[^/]+\.(?:so|a)$"
    r"|^(?:usr/)?s?bin/[^/]+$"  # programs: *-config scripts, and tools a build system requires
)
_LINE = re.compile(r"^(\S.*?)\s+(\S+)\s*$")
_TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "i386": "i386-linux-gnu",
             "armhf": "arm-linux-gnueabihf", "ppc64el": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu"}
_CACHE_VERSION = 2  # 2: every program in (usr/)(s)bin, not only *-config


@dataclass(frozen=True)
class Missing:
    """Something a build reports missing: its name as the output says it, and what kind it is."""

    name: str
    kind: str  # header, pkg-config, meson, CMake, linker, program

    def basenames(self) -> set[str]:
        """The lowercased file names the matching paths end with (the index is keyed on them)."""
        base, lower = self.name.rsplit("/", 1)[-1], self.name.lower()
        names = {
            "header": {base}, "pkg-config": {f"{base}.pc"}, "program": {base},
            "meson": {f"{base}.pc", f"{base}config.cmake", f"{lower}-config.cmake", f"{lower}.pc", f"lib{lower}.pc",
                      f"lib{lower}.so"},
            "CMake": {f"{base}config.cmake", f"{lower}-config.cmake", f"{lower}.pc", f"lib{lower}.pc", f"lib{lower}.so"},
            "linker": {f"lib{base}.so", f"lib{base}.a"},
        }.get(self.kind, set())
        return {n.lower() for n in names}

    def patterns(self, triplet: str) -> list[re.Pattern[str]]:
        """Path patterns of files that would satisfy it, best first."""
        n = re.escape(self.name)
        lib = rf"usr/lib/(?:{re.escape(triplet)}/)?"
        if self.kind == "header":
            return [re.compile(rf"^usr/include/(?:{re.escape(triplet)}/)?{n}$"),
                    re.compile(rf"^usr/include/.+/{n}$")]
        if self.kind in ("pkg-config", "meson"):
            pc = [re.compile(rf"^usr/(?:lib|share)/(?:[^/]+/)*pkgconfig/{n}\.pc$")]
            return pc if self.kind == "pkg-config" else [*pc, *Missing(self.name, "CMake").patterns(triplet)]
        if self.kind == "CMake":
            lower = re.escape(self.name.lower())
            return [re.compile(rf"^usr/(?:lib|share)/(?:[^/]+/)*cmake/[^/]+/(?:{n}Config|{lower}-config)\.cmake$", re.I),
                    re.compile(rf"^usr/(?:lib|share)/(?:[^/]+/)*pkgconfig/(?:lib)?{lower}\.pc$", re.I),
                    re.compile(rf"^{lib}lib{lower}\.so$", re.I)]
        if self.kind == "linker":
            return [re.compile(rf"^{lib}lib{n}\.so$"), re.compile(rf"^{lib}lib{n}\.a$")]
        if self.kind == "program":
            return [re.compile(rf"^usr/bin/{n}$"), re.compile(rf"^(?:usr/sbin|s?bin)/{n}$")]
        return []


@dataclass(frozen=True)
class Provider:
    package: str
    path: str


class ContentsIndex:
    """The reduced Contents index of one suite and architecture: path -> packages."""

    def __init__(self, paths: dict[str, list[str]], *, arch: str = "amd64") -> None:
        self.paths = paths
        self.triplet = _TRIPLETS.get(arch, f"{arch}-linux-gnu")
        self._by_base: dict[str, list[str]] = {}
        for path in paths:
            self._by_base.setdefault(path.rsplit("/", 1)[-1].lower(), []).append(path)

    @classmethod
    def parse(cls, lines: Iterable[str], *, arch: str = "amd64") -> ContentsIndex:
        """From the lines of a Contents file (`path   section/package[,section/package...]`)."""
        paths: dict[str, list[str]] = {}
        for line in lines:
            m = _LINE.match(line)
            if m is None or not _KEEP.match(m.group(1)):
                continue
            path, owners = m.groups()
            paths[path] = [o.rsplit("/", 1)[-1] for o in owners.split(",") if o]
        return cls(paths, arch=arch)

    def providers(self, missing: Missing) -> list[Provider]:
        """The packages whose files would satisfy `missing`, best first (none when nothing matches)."""
        found: list[tuple[tuple[int, int, int, str], Provider]] = []
        candidates = [p for base in missing.basenames() for p in self._by_base.get(base, ())]
        for rank, pattern in enumerate(missing.patterns(self.triplet)):
            for path in candidates:
                if pattern.match(path):
                    for pkg in self.paths[path]:
                        found.append(((rank, 0 if pkg.endswith("-dev") else 1, path.count("/"), pkg),
                                      Provider(pkg, path)))
        seen: dict[str, Provider] = {}
        for _key, provider in sorted(found, key=lambda item: item[0]):
            seen.setdefault(provider.package, provider)
        return list(seen.values())

    def packages_for(self, missing: Iterable[Missing]) -> dict[Missing, str | None]:
        """The one package to install for each missing thing (None: nothing in the suite provides it)."""
        return {m: (p[0].package if (p := self.providers(m)) else None) for m in missing}


def contents_url(mirror: str, suite: str, arch: str, component: str | None = "main") -> str:
    """Debian keeps a Contents file per component (`main/Contents-amd64.gz`), Ubuntu one per suite."""
    where = f"{component}/" if component else ""
    return f"{mirror.rstrip('/')}/dists/{suite}/{where}Contents-{arch}.gz"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wheel-farm" / "contents"


def load_index(mirror: str, suite: str, arch: str = "amd64", *, cache: Path | None = None,
               timeout: float = 120.0) -> ContentsIndex:
    """The reduced Contents index of `suite`/`arch` from `mirror`, downloaded once and cached."""
    cache = cache or default_cache()
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{mirror}_{suite}_{arch}")
    reduced = cache / f"{safe}.v{_CACHE_VERSION}.json.gz"
    if reduced.is_file():
        with gzip.open(reduced, "rt") as f:
            return ContentsIndex(json.load(f), arch=arch)
    cache.mkdir(parents=True, exist_ok=True)
    index = None
    for url in (contents_url(mirror, suite, arch), contents_url(mirror, suite, arch, None)):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, gzip.open(resp, "rt", errors="replace") as lines:
                index = ContentsIndex.parse(lines, arch=arch)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise InfrastructureFault("system packages", f"cannot read the Contents index {url}: {exc}") from exc
        except OSError as exc:
            raise InfrastructureFault("system packages", f"cannot read the Contents index {url}: {exc}") from exc
    if index is None:
        raise InfrastructureFault("system packages", f"{mirror} has no Contents index for {suite}/{arch}")
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
    with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt") as f:
        json.dump(index.paths, f)
    os.replace(tmp, reduced)
    return index


def parse_missing(hints: Iterable[str]) -> Iterator[Missing]:
    """`Missing` from `farm.worker.hints.missing_system_dependencies`'s `name (kind)` strings."""
    for hint in hints:
        m = re.fullmatch(r"(.+) \(([^)]+)\)", hint)
        if m and m.group(2) in ("header", "pkg-config", "meson", "CMake", "linker", "program"):
            yield Missing(m.group(1), m.group(2))


def dnf_provides_argv(missing: Missing) -> list[str] | None:
    """`dnf provides` for `missing` in an RPM image (glob paths), or None when the kind has no file to ask for."""
    globs = {"header": f"*/include/{missing.name}", "pkg-config": f"*/pkgconfig/{missing.name}.pc",
             "meson": f"*/pkgconfig/{missing.name}.pc", "linker": f"*/lib{missing.name}.so",
             "program": f"*/bin/{missing.name}", "CMake": f"*/cmake/*/{missing.name}Config.cmake"}
    glob = globs.get(missing.kind)
    return ["dnf", "-q", "provides", glob] if glob else None


# Where to look: the build image's or the host's package sources ---------------------------------------

_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "armhf", "ppc64le": "ppc64el",
           "s390x": "s390x"}


def parse_os_release(text: str) -> dict[str, str]:
    """`/etc/os-release` as a dict (quotes removed)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            out[key] = value.strip().strip("\"'")
    return out


def apt_sources(text: str) -> list[tuple[str, str]]:
    """(mirror, suite) of every `deb` source in sources.list lines and deb822 `.sources` stanzas."""
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append((words[1], words[2]))
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t", "#")) and re.fullmatch(r"[A-Za-z-]+", key):
                fields[key.lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            found += [(uri, suite) for uri in fields.get("uris", "").split() for suite in fields.get("suites", "").split()]
    return found


@dataclass(frozen=True, kw_only=True)
class AptTarget:
    """The Contents index to read: the mirror, the suite and the architecture of a Debian-like system."""

    mirror: str
    suite: str
    arch: str

    def describe(self) -> str:
        return f"the Contents index of {self.suite}/{self.arch} at {self.mirror}"


def apt_target(os_release: str, sources: str, arch: str, *, mirror: str = "") -> AptTarget | None:
    """What `os_release`, the apt `sources` and `arch` of a system say to read (None: not a Debian-like one).
    `mirror`, when configured, is used instead of the one the sources name."""
    release = parse_os_release(os_release)
    listed = apt_sources(sources)
    suite = release.get("VERSION_CODENAME") or next((s for _, s in listed), "")
    if not suite:
        return None
    chosen = mirror or next((m for m, s in listed if s == suite), "") or next((m for m, _ in listed), "")
    if not chosen:
        return None
    return AptTarget(mirror=chosen.rstrip("/"), suite=suite, arch=arch)


_SYSTEM_FACTS = ("cat /etc/os-release 2>/dev/null; echo '#--farm--'; (dpkg --print-architecture 2>/dev/null || true); "
                 "echo '#--farm--'; cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
                 "/etc/apt/sources.list.d/*.sources 2>/dev/null; true")


def _facts_target(output: str, *, mirror: str, fallback_arch: str) -> AptTarget | None:
    release, arch, sources = ([*output.split("#--farm--"), "", ""])[:3]
    return apt_target(release, sources, arch.strip() or fallback_arch, mirror=mirror)


# What provides the missing things ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Lookup:
    """What each missing thing is provided by, in one package-manager family, and where that was read."""

    family: str  # the recipe's system-packages key: apt, yum
    where: str  # "the Contents index of bullseye/amd64 at http://deb.debian.org/debian"
    found: dict[Missing, Provider | None]

    def packages(self) -> list[str]:
        """The packages to install, first needed first, each once."""
        return list(dict.fromkeys(p.package for p in self.found.values() if p is not None))

    def not_found(self) -> list[Missing]:
        return [m for m, p in self.found.items() if p is None]

    def record(self) -> dict[str, Any]:
        """As recorded in the job, the provenance (`adjustments.systemPackages`) and the suggested recipe."""
        return {"family": self.family, "lookup": self.where, "packages": self.packages(),
                "found": [{"missing": m.name, "kind": m.kind, "package": p.package, "path": p.path}
                          for m, p in self.found.items() if p is not None],
                "notFound": [{"missing": m.name, "kind": m.kind} for m in self.not_found()]}


def describe(missing: Iterable[Missing]) -> str:
    return ", ".join(f"{m.name} ({m.kind})" for m in missing)


def lookup_apt(target: AptTarget, missing: list[Missing], *, cache: Path | None = None) -> Lookup:
    index = load_index(target.mirror, target.suite, target.arch, cache=cache)
    found: dict[Missing, Provider | None] = {}
    for m in missing:
        providers = index.providers(m)
        found[m] = providers[0] if providers else None
    return Lookup(family="apt", where=target.describe(), found=found)


def parse_dnf_provides(output: str) -> str | None:
    """The first package name in `dnf provides` (or `yum provides`) output: `libffi-devel-3.1-23.el8.x86_64 : ...`."""
    for line in output.splitlines():
        m = re.match(r"^(?:\d+:)?([A-Za-z0-9_.+-]+?)-(?:\d+:)?[^-\s]+-[^-\s]+\.(?:\w+)\s+:", line.strip())
        if m:
            return m.group(1)
    return None


def lookup_in_image(ctx: BuildContext, missing: list[Missing]) -> Lookup | None:
    """Ask the job's build image: apt images through the Contents index of their suite and mirror (the
    image's sources, read in a container without network), RPM images with `dnf provides` in a
    container of the image with the host's network (its repositories). None: another family."""
    from farm.containers import Container, Limits, docker_client, image_digest, resolve_docker_host
    from farm.worker.engines.cibuildwheel import choose_image, image_facts
    from farm.worker.platforms.linux import container_platform

    image = choose_image(ctx).image
    arch = _ARCHES.get(container_platform(ctx.platform).arch, container_platform(ctx.platform).arch)
    client = docker_client(resolve_docker_host(ctx.settings.docker_host), step="build")
    try:
        family, _ = image_facts(client, image, image_digest(client, image))
        limits = Limits(memory="512m", pids=256, drop_capabilities=True)
        if family == "apt":
            with Container(client, image, network="none", limits=limits, lifetime=120) as box:
                output = box.call(["sh", "-c", _SYSTEM_FACTS], timeout=60).output
            target = _facts_target(output, mirror=ctx.settings.contents_mirror, fallback_arch=arch)
            return lookup_apt(target, missing) if target else None
        if family == "yum":
            found: dict[Missing, Provider | None] = {}
            with Container(client, image, network="host", limits=limits, lifetime=900) as box:
                for m in missing:
                    argv = dnf_provides_argv(m)
                    if argv is None:
                        found[m] = None
                        continue
                    script = 'if command -v dnf >/dev/null 2>&1; then exec dnf -q provides "$1"; else exec yum -q provides "$1"; fi'
                    result = box.call(["sh", "-c", script, "sh", argv[-1]], check=False, timeout=300)
                    package = parse_dnf_provides(result.output) if result.exit_code == 0 else None
                    found[m] = Provider(package, argv[-1]) if package else None
            return Lookup(family="yum", where=f"dnf provides in {image}", found=found)
        return None
    finally:
        client.close()


def lookup_on_host(ctx: BuildContext, missing: list[Missing]) -> Lookup | None:
    """The worker host's own distribution (apt hosts: the Contents index of its suite). None: another kind of host."""
    import platform as pyplatform

    if ctx.platform.family != "linux" or not Path("/etc/os-release").is_file():
        return None
    sources = "\n".join(p.read_text(errors="replace") for p in
                        [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
                         *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))] if p.is_file())
    if not sources:
        return None
    machine = pyplatform.machine()
    target = apt_target(Path("/etc/os-release").read_text(), sources, _ARCHES.get(machine, machine),
                        mirror=ctx.settings.contents_mirror)
    return lookup_apt(target, missing) if target else None


def lookup(ctx: BuildContext, missing: list[Missing]) -> Lookup | None:
    """In the build image (cibuildwheel engine) or on the host (native engine); None: nowhere to look."""
    from docker.errors import DockerException

    if ctx.spec.engine != "cibuildwheel":
        return lookup_on_host(ctx, missing)
    try:
        return lookup_in_image(ctx, missing)
    except DockerException as exc:
        raise InfrastructureFault("build", f"the Docker engine failed while the build image was asked: {exc}") from exc


# The retry ---------------------------------------------------------------------------------------------

# Left from a failed attempt in the job's folder, made again by the next one.
_ATTEMPT_FOLDERS = ("build-env", "built", "wheelhouse", "system-packages", "system-packages-download", "pure-out")


def installs_on_host(settings: Settings) -> bool:
    """Whether the native engine may install packages the farm found on the worker host: only when
    `system_packages = "install"` is configured explicitly (farm.toml or FARM_SYSTEM_PACKAGES); the
    default "install" is for a recipe's own `system-packages`."""
    return settings.system_packages == "install" and "system_packages" in settings.model_fields_set


def with_packages(options: Options, family: str, packages: Sequence[str]) -> Options:
    """`options` whose system packages of `family` include `packages`."""
    current = list(getattr(options.system_packages, family))
    wanted = current + [p for p in packages if p not in current]
    return options.model_copy(update={"system_packages": options.system_packages.model_copy(update={family: wanted})})


def _failure(step: str, message: str, record: dict[str, Any], missing: list[str]) -> PackageFailure:
    failure = PackageFailure(step, message)
    failure.missing = missing  # type: ignore[attr-defined]
    failure.adjustments = {"systemPackages": record}  # type: ignore[attr-defined]  # the job keeps it (pipeline)
    return failure


ROUNDS = 3  # builds with more packages found, at most: a library's -dev package may reveal the next one missing


def _merge(record: dict[str, Any], later: dict[str, Any] | None) -> None:
    """Add what a later round found to `record` (one record, one suggested recipe, for all rounds)."""
    if not later:
        return
    record["packages"] = list(dict.fromkeys([*record.get("packages", []), *later.get("packages", [])]))
    for key in ("found", "notFound"):
        record[key] = [*record.get(key, []), *[x for x in later.get(key, []) if x not in record.get(key, [])]]
    record["rounds"] = 1 + int(later.get("rounds", 1))


def build(engine: Engine, ctx: BuildContext, *, _round: int = 1) -> BuildOutput:
    """Build; when the build fails reporting missing headers, libraries or tools, look up the packages
    that provide them and build once more with them installed: in the container's root phase (the
    cibuildwheel engine, offline as a recipe's system packages), on the host only when configured
    (`installs_on_host`). What was found, and the recipe that would have avoided the retry, go into
    the log, the failure or the provenance (`adjustments.systemPackages`)."""
    from farm.recipes.suggest import recipe_text

    try:
        return engine.build(ctx)
    except PackageFailure as exc:
        hints = list(getattr(exc, "missing", None) or [])
        wanted = list(parse_missing(hints))
        if not wanted or isinstance(exc, CommandTimeout):
            raise
        message = str(exc).removeprefix(f"{exc.step}: ")
        first = message.splitlines()[0][:300]
        ctx.log.write(f"\n===== system packages: what provides {describe(wanted)} =====\n")
        try:
            found = lookup(ctx, wanted)
        except (FarmError, OSError) as fault:  # the package's failure stands; the lookup only helps
            ctx.log.write(f"the lookup failed: {fault}\n")
            raise _failure(exc.step, f"{message}\n(the farm could not look up which system packages provide "
                           f"{describe(wanted)}: {fault})", {"lookupFailed": str(fault)}, hints) from exc
        if found is None:
            ctx.log.write("no package index to look them up in for this system\n")
            raise
        record = {**found.record(), "firstFailure": first}
        for m, p in found.found.items():
            ctx.log.write(f"  {m.name} ({m.kind}): {f'{p.package} ({p.path})' if p else 'no package provides it'}\n")
        packages = found.packages()
        if not packages:
            record["retry"] = False
            raise _failure(exc.step, f"{message}\n(no package in {found.where} provides {describe(wanted)}; "
                           "nothing was installed)", record, hints) from exc
        new = [p for p in packages if p not in getattr(ctx.options.system_packages, found.family)]
        suggestion = recipe_text(ctx.spec.name, ctx.spec.version, record, recipe=ctx.spec.recipe_name)
        if not new:
            record["retry"] = False
            raise _failure(exc.step, f"{message}\n(the packages that provide {describe(wanted)}, "
                           f"{' '.join(packages)}, were installed already)", record, hints) from exc
        if ctx.spec.engine != "cibuildwheel" and not installs_on_host(ctx.settings):
            record.update(retry=False, installed=False)
            ctx.log.write(f"not installed on this host (system_packages = \"install\" is not configured): "
                          f"{' '.join(new)}\n")
            raise _failure(exc.step, f"{message}\n(the system packages {' '.join(new)} provide "
                           f"{describe(m for m, p in found.found.items() if p)}; nothing is installed on this host "
                           "unless the worker's configuration says system_packages = \"install\". Suggested "
                           f"recipe, recipes/{ctx.spec.name}.toml (`farm recipe suggest {ctx.spec.name}`):\n"
                           f"{suggestion})", record, hints) from exc
        ctx.log.write(f"\n===== retry: with the system packages {' '.join(new)} =====\n")
        ctx.options = with_packages(ctx.options, found.family, new)
        ctx.src = ctx.src.fresh()
        for folder in _ATTEMPT_FOLDERS:
            shutil.rmtree(ctx.work / folder, ignore_errors=True)
        record.update(retry=True, installed=True)
        try:  # the retry may report the next thing missing: look that up too, for a few rounds
            out = build(engine, ctx, _round=_round + 1) if _round < ROUNDS else engine.build(ctx)
        except PackageFailure as again:
            _merge(record, (getattr(again, "adjustments", None) or {}).get("systemPackages"))
            record["outcome"] = "failed"
            raise _failure(again.step, f"{str(again).removeprefix(f'{again.step}: ')}\n(also tried with the system "
                           f"packages {' '.join(new)} found for {describe(wanted)}; the first attempt failed with: "
                           f"{first})", record, list(getattr(again, "missing", None) or [])) from again
        _merge(record, out.adjustments.get("systemPackages"))
        record["outcome"] = "built"
        out.adjustments["systemPackages"] = record
        suggestion = recipe_text(ctx.spec.name, ctx.spec.version, record, recipe=ctx.spec.recipe_name)
        ctx.log.write(f"built with the system packages {' '.join(record['packages'])}; suggested recipe "
                      f"(`farm recipe suggest {ctx.spec.name}`):\n{suggestion}")
        return out
