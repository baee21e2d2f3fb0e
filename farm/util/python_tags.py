"""The Python of a job, as the farm names it: an interpreter tag like `cp39`, `cp314`, or `cp314t`
for CPython's free-threaded build (PEP 703: no GIL, its own ABI `cp314t`, where abi3 wheels do not
install). One parser, so that the planner, the workers, the images and the wheel checks agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TAG = re.compile(r"(cp|pp|py)(\d)(\d+)(t?)")


@dataclass(frozen=True)
class PythonTag:
    implementation: str  # cp, pp, py
    major: int
    minor: int
    threaded: bool = False  # CPython's free-threaded build (cp314t)

    @classmethod
    def parse(cls, tag: str) -> PythonTag | None:
        """`cp314t` -> PythonTag("cp", 3, 14, threaded=True); None for what is no such tag."""
        m = _TAG.fullmatch(tag or "")
        if m is None or (m.group(4) and m.group(1) != "cp"):
            return None
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), bool(m.group(4)))

    @property
    def version(self) -> tuple[int, int]:
        return (self.major, self.minor)

    @property
    def dotted(self) -> str:
        """`3.14`, what Requires-Python and `python_version` markers compare."""
        return f"{self.major}.{self.minor}"

    @property
    def abi(self) -> str:
        """The ABI tag of its platform wheels: `cp314`, `cp314t`."""
        return f"{self.implementation}{self.major}{self.minor}{'t' if self.threaded else ''}"

    @property
    def install_dir(self) -> str:
        """Its folder under /opt/python in a manylinux-style image: `cp314-cp314`, `cp314-cp314t`."""
        return f"{self.implementation}{self.major}{self.minor}-{self.abi}"

    def __str__(self) -> str:
        return self.abi


def sort_key(tag: str) -> tuple[int, int, int]:
    """Oldest first, a free-threaded build right after its GIL build; what is no tag sorts last."""
    parsed = PythonTag.parse(tag)
    return (parsed.major, parsed.minor, int(parsed.threaded)) if parsed else (99, 0, 0)


_VERSION = re.compile(r"(\d+)\.(\d+)(t?)")


def version_key(version: str) -> tuple[int, int, int]:
    """`3.13t` -> (3, 13, 1): how installers name a Python (`py -V:3.13t`, python3.13t), oldest first,
    a free-threaded build right after its GIL build; what is no such version sorts last."""
    m = _VERSION.fullmatch(version)
    return (int(m[1]), int(m[2]), int(bool(m[3]))) if m else (99, 0, 0)


def major_of(interpreter: str) -> int | None:
    """The Python major version a wheel tag's interpreter part names: `py3`, `py38`, `cp39` -> 3,
    `py2`, `cp27` -> 2; None for what names none. A `py3-none-any` wheel does not install on 2.7,
    a `py2.py3-none-any` one (two tags) does."""
    m = re.fullmatch(r"[a-z]+(\d)\d*t?", interpreter)
    return int(m[1]) if m else None


def pure_majors(interpreters: Iterable[str], *, requires_python: bool) -> set[int | None]:
    """The Python majors a pure (or abi3) wheel is for, from its tags' interpreter parts: 2 only when
    it also has a Requires-Python (that then decides), since a universal `py2.py3` tag alone is often
    left over from an older release. The coordinator (deps.job_pythons) and the worker
    (verify.targets_for) decide by this one rule."""
    majors = {major_of(i) for i in interpreters}
    return majors if requires_python else majors - {2}


def dotted(tag: str) -> str | None:
    """`cp314t` -> `3.14`; None for what is no tag."""
    parsed = PythonTag.parse(tag)
    return parsed.dotted if parsed else None


def is_threaded(tag: str) -> bool:
    parsed = PythonTag.parse(tag)
    return bool(parsed and parsed.threaded)


__all__ = ["PythonTag", "dotted", "is_threaded", "major_of", "pure_majors", "sort_key", "version_key"]
