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
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from farm.errors import InfrastructureFault

_KEEP = re.compile(
    r"^usr/include/.+"
    r"|^usr/(?:lib|share)/(?:[^/]+/)*pkgconfig/[^/]+\.pc$"
    r"|^usr/(?:lib|share)/(?:[^/]+/)*cmake/[^/]+/[^/]+(?:Config|-config)\.cmake$"
    r"|^usr/lib/(?:[^/]+/)?lib[^/]+\.(?:so|a)$"
    r"|^usr/bin/(?:[^/]+-config|pg_config)$"
)
_LINE = re.compile(r"^(\S.*?)\s+(\S+)\s*$")
_TRIPLETS = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "i386": "i386-linux-gnu",
             "armhf": "arm-linux-gnueabihf", "ppc64el": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu"}
_CACHE_VERSION = 1


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
            return [re.compile(rf"^usr/bin/{n}$")]
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


def contents_url(mirror: str, suite: str, arch: str, component: str = "main") -> str:
    return f"{mirror.rstrip('/')}/dists/{suite}/{component}/Contents-{arch}.gz"


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
    url = contents_url(mirror, suite, arch)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, gzip.open(resp, "rt", errors="replace") as lines:
            index = ContentsIndex.parse(lines, arch=arch)
    except OSError as exc:
        raise InfrastructureFault("system packages", f"cannot read the Contents index {url}: {exc}") from exc
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
