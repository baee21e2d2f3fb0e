"""System packages found for what a failed build reports missing (Debian's Contents index).

The lookups run against the real Contents index of Debian bullseye (the build image's suite),
downloaded from the mirror once and cached under ~/.cache/wheel-farm/contents. Each kind of
message the hints recognise maps to the package a person would install: a header, a pkg-config
module, a meson dependency, a CMake package, a `-l` library and a `*-config` program. A name that
no package provides gives no package, not a guess.
"""

from __future__ import annotations

import pytest

from farm.worker import hints, sysdeps
from farm.worker.sysdeps import ContentsIndex, Missing

_SAMPLE = """\
usr/include/yaml.h                                          libdevel/libyaml-dev
usr/include/libxml2/libxml/parser.h                         libdevel/libxml2-dev
usr/include/x86_64-linux-gnu/ffi.h                          libdevel/libffi-dev
usr/lib/x86_64-linux-gnu/pkgconfig/libxml-2.0.pc            libdevel/libxml2-dev
usr/lib/x86_64-linux-gnu/libz.so                            libdevel/zlib1g-dev
usr/lib/x86_64-linux-gnu/libz.so.1                          libs/zlib1g
usr/lib/x86_64-linux-gnu/cmake/Foo/FooConfig.cmake          libdevel/libfoo-dev
usr/bin/xml2-config                                         libdevel/libxml2-dev
usr/share/doc/libyaml-dev/copyright                         libdevel/libyaml-dev
usr/include/other/yaml.h                                    libdevel/otheryaml-dev,libdevel/third-dev
"""


def test_the_contents_format_is_reduced_and_ranked() -> None:
    index = ContentsIndex.parse(_SAMPLE.splitlines(keepends=True))
    assert "usr/share/doc/libyaml-dev/copyright" not in index.paths  # nothing a build asks for
    assert "usr/lib/x86_64-linux-gnu/libz.so.1" not in index.paths  # runtime library only
    ranked = [p.package for p in index.providers(Missing("yaml.h", "header"))]
    assert ranked == ["libyaml-dev", "otheryaml-dev", "third-dev"]  # the direct path first
    assert index.packages_for([Missing("ffi.h", "header"), Missing("libxml/parser.h", "header"),
                               Missing("libxml-2.0", "pkg-config"), Missing("z", "linker"),
                               Missing("Foo", "CMake"), Missing("xml2-config", "program"),
                               Missing("nosuch.h", "header")]) == {
        Missing("ffi.h", "header"): "libffi-dev", Missing("libxml/parser.h", "header"): "libxml2-dev",
        Missing("libxml-2.0", "pkg-config"): "libxml2-dev", Missing("z", "linker"): "zlib1g-dev",
        Missing("Foo", "CMake"): "libfoo-dev", Missing("xml2-config", "program"): "libxml2-dev",
        Missing("nosuch.h", "header"): None}


def test_build_output_to_missing_things() -> None:
    output = ("ext/_yaml.c:1:10: fatal error: yaml.h: No such file or directory\n"
              "/usr/bin/ld: cannot find -lgdbm\n"
              "Could not resolve host: github.com\n")
    found = list(sysdeps.parse_missing(hints.missing_system_dependencies(output)))
    assert found == [Missing("yaml.h", "header"), Missing("gdbm", "linker")]  # the host is no package
    assert sysdeps.dnf_provides_argv(found[0]) == ["dnf", "-q", "provides", "*/include/yaml.h"]


@pytest.mark.network
@pytest.mark.slow
def test_real_bullseye_contents_answer_as_a_person_would() -> None:
    index = sysdeps.load_index("http://deb.debian.org/debian", "bullseye", "amd64")
    wanted = {
        Missing("yaml.h", "header"): "libyaml-dev",
        Missing("ffi.h", "header"): "libffi-dev",
        Missing("libxml/xmlversion.h", "header"): "libxml2-dev",
        Missing("libxslt", "pkg-config"): "libxslt1-dev",
        Missing("zlib", "meson"): "zlib1g-dev",
        Missing("gdbm", "linker"): "libgdbm-dev",
        Missing("pg_config", "program"): "libpq-dev",
        Missing("xml2-config", "program"): "libxml2-dev",
        Missing("definitely_not_a_header_xyz.h", "header"): None,
    }
    assert index.packages_for(wanted) == wanted
    again = sysdeps.load_index("http://deb.debian.org/debian", "bullseye", "amd64")  # from the cache
    assert again.paths == index.paths
