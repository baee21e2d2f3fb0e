"""What a failed build's output says is missing from the system, put first in the job's error.

Most sdists that do not build on a worker lack a C library or its headers, and the compiler's or
the build system's message for that is buried in hundreds of lines. The lines matched here are the
standard ones (gcc/clang, pkg-config, meson, CMake, the linker, `*-config` scripts); what they name
is reported as the build output says it, with where a recipe fixes it (`system-packages`).
"""

from __future__ import annotations

import re

from farm.errors import PackageFailure

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"fatal error: ([\w./+-]+\.h(?:h|pp|xx)?): No such file or directory"), "header"),
    (re.compile(r"ERROR: Dependency \"?([\w.+-]+)\"? not found"), "meson"),
    # meson without a pkg-config program: the module it looked for (and the program, below)
    (re.compile(r"Dependency lookup for ([\w.+-]+) with method '?pkg-?config'? failed", re.I), "pkg-config"),
    (re.compile(r"Dependency lookup for ([\w.+-]+) with method '?(?!pkg-?config)[\w-]+'? failed", re.I), "meson"),
    (re.compile(r"Package '?([\w.+-]+)'?,? required by .*?, not found"), "pkg-config"),
    (re.compile(r"Package ([\w.+-]+) was not found in the pkg-config search path"), "pkg-config"),
    (re.compile(r"No package '([\w.+-]+)' found"), "pkg-config"),
    (re.compile(r"Could NOT find ([\w.+-]+) \(missing"), "CMake"),
    (re.compile(r"cannot find -l([\w.+-]+)"), "linker"),
    (re.compile(r"\b([\w-]+-config|pg_config)(?::| executable)? (?:command )?not found", re.I), "program"),
    # meson's find_program() of a required tool (e.g. a test runner its meson.build insists on)
    (re.compile(r"ERROR: Program '([\w.+-]+)' not found or not executable"), "program"),
    # a build that downloads (Rust crates, meson wraps, CMake FetchContent) on a worker without that access
    (re.compile(r"Could not resolve host(?:name)?\)?:? ([\w.-]+\.[a-z]{2,})"), "host the build downloads from"),
]


# Lines that say a fixed program is missing (meson's words for a missing pkg-config).
_PROGRAMS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Did not find pkg-config by name|Pkg-config (?:binary )?(?:for machine [\w ]+ )?not found",
                re.I), "pkg-config"),
]


def missing_system_dependencies(output: str) -> list[str]:
    """`name (kind)` for each missing library, header or tool the output reports, first seen first."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        for pattern, program in _PROGRAMS:
            if pattern.search(line):
                found.setdefault(program, "program")
        for pattern, kind in _PATTERNS:
            for name in pattern.findall(line):
                found.setdefault(name, kind)
    return [f"{name} ({kind})" for name, kind in found.items()]


def build_failure(message: str, output: str) -> PackageFailure:
    """The build step's PackageFailure, led by what the output says is missing, if anything."""
    missing = missing_system_dependencies(output)
    failure_missing = list(missing)
    if missing:
        hint = ("a recipe's `system-packages` installs system libraries (docs/recipes.md)"
                if any(not m.endswith("(host the build downloads from)") for m in missing)
                else "the build fetches from the network at build time; give the worker access or vendor the sources")
        message = f"the build output reports missing: {', '.join(missing)}; {hint}\n{message}"
    failure = PackageFailure("build", message)
    failure.missing = failure_missing  # type: ignore[attr-defined]  # read by the engines' retries
    return failure
