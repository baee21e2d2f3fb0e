"""Sdist intake: `inspect_sdist` / `extract_sdist` on real archives built in tmp_path.

Accepted: a small .tar.gz sdist (with an in-tree symlink and an executable file), the same as a
.zip, a legacy non-normalized name (PyYAML-6.0.1.tar.gz), a leading "./" in member names, an
asked-for version spelled differently but equal (1.0.0 for 1.0).

Refused, each with a specific SdistError message naming the file (and member):
  * file larger than max_bytes (checked before the content is looked at)
  * wrong extension (.tar.bz2, .tgz, .whl), file name that is not NAME-VERSION (no version,
    invalid version, invalid project name)
  * wrong content: random bytes named .tar.gz, gzip data that is not tar, an empty gzip,
    a truncated gzip, a wheel or a zip renamed .tar.gz, a wheel renamed .zip, a .tar.gz renamed .zip
  * members with absolute paths (tar and zip), `..` components (tar and zip), symlinks that leave
    the tree (relative, absolute, `..` after a name; tar and zip), hard links outside the tree or to
    a missing member, members inside a symlink, character/block devices and fifos (tar and zip)
  * members not all under one top-level directory; a file at the top level
  * more than max_members members (tar and zip)
  * declared unpacked size over max_unpacked_bytes (tar and zip), and a gzip stream that
    decompresses past the limit although every declared size is small (a huge pax header)
  * missing top_dir/PKG-INFO (also when only a nested PKG-INFO exists), PKG-INFO without Version
  * PKG-INFO name/version not matching the file name; not matching expect_name/expect_version
  * zip: duplicate member names, empty archive
Extraction: the tree lands at dest/top_dir; on every refused archive nothing is written to dest
or its parent (a `../evil` member does not create tmp_path/evil); unpacking twice is refused.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from pathlib import Path

import pytest

from farm.errors import SdistError
from farm.util.archive import Limits, SdistInfo, extract_sdist, inspect_sdist
from tests.helpers.sdists import F, L, LIMITS, PYPROJECT, Z, pkg_info, sdist_members, write_tar, write_zip


# Archive builders ------------------------------------------------------------------------------


def T(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    return ti, None


def zip_members(top: str = "foo-1.0", name: str = "foo", version: str = "1.0"):
    return [
        Z(f"{top}/"),
        Z(f"{top}/PKG-INFO", pkg_info(name, version)),
        Z(f"{top}/pyproject.toml", PYPROJECT),
        Z(f"{top}/src/{name}.py", b"print('hello')\n"),
        Z(f"{top}/run.sh", b"#!/bin/sh\necho hi\n", mode=stat.S_IFREG | 0o755),
        Z(f"{top}/src/README", b"../pyproject.toml", mode=stat.S_IFLNK | 0o777),
    ]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def refused(path: Path, match: str, *, limits: Limits = LIMITS, **expect) -> str:
    """`path` is refused by inspect_sdist and by extract_sdist, with `match` in the message, and
    extracting it writes nothing: neither dest nor anything beside it changes."""
    with pytest.raises(SdistError, match=match) as exc:
        inspect_sdist(path, limits, **expect)
    assert path.name in str(exc.value)
    work = path.parent / f"work-{path.name}"
    dest = work / "dest"
    dest.mkdir(parents=True)
    before = snapshot(path.parent)
    with pytest.raises(SdistError, match=match):
        extract_sdist(path, dest, limits, **expect)
    assert snapshot(path.parent) == before
    assert list(dest.iterdir()) == []
    return str(exc.value)


# Accepted ----------------------------------------------------------------------------------------


def test_valid_tar_gz(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    info = inspect_sdist(path, LIMITS, expect_name="Foo", expect_version="1.0")
    assert info == SdistInfo(name="foo", display_name="foo", version="1.0", filename="foo-1.0.tar.gz",
                             top_dir="foo-1.0", requires_python=">=3.9", members=7,
                             unpacked_bytes=sum(len(d) for _, d in sdist_members() if d))
    dest = tmp_path / "out"
    tree = extract_sdist(path, dest, LIMITS)
    assert tree == dest / "foo-1.0"
    assert (tree / "PKG-INFO").read_bytes() == pkg_info()
    assert (tree / "src" / "foo.py").read_text() == "print('hello')\n"
    assert os.readlink(tree / "src" / "README") == "../pyproject.toml"
    assert (tree / "src" / "README").read_bytes() == PYPROJECT
    assert os.access(tree / "run.sh", os.X_OK)
    assert sorted(p.name for p in dest.iterdir()) == ["foo-1.0"]  # no staging left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foo-1.0.tar.gz", "out"]


def test_valid_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "foo-1.0.zip", zip_members())
    info = inspect_sdist(path, LIMITS)
    assert (info.name, info.version, info.top_dir, info.members) == ("foo", "1.0", "foo-1.0", 6)
    tree = extract_sdist(path, tmp_path / "out", LIMITS)
    assert (tree / "pyproject.toml").read_bytes() == PYPROJECT
    assert (tree / "src" / "foo.py").read_text() == "print('hello')\n"
    assert os.readlink(tree / "src" / "README") == "../pyproject.toml"
    assert os.access(tree / "run.sh", os.X_OK) and not os.access(tree / "PKG-INFO", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["foo-1.0"]


def test_legacy_name_pyyaml(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "PyYAML-6.0.1.tar.gz", sdist_members("PyYAML-6.0.1", "PyYAML", "6.0.1"))
    info = inspect_sdist(path, LIMITS, expect_name="pyyaml", expect_version="6.0.1")
    assert (info.name, info.display_name, info.version, info.top_dir) == ("pyyaml", "PyYAML", "6.0.1", "PyYAML-6.0.1")
    assert extract_sdist(path, tmp_path / "out", LIMITS) == tmp_path / "out" / "PyYAML-6.0.1"


def test_gnu_format_and_dot_prefix(tmp_path: Path) -> None:
    members = [(ti, d) for ti, d in sdist_members()]
    for ti, _ in members:
        ti.name = "./" + ti.name
    path = write_tar(tmp_path / "foo-1.0.tar.gz", members, fmt=tarfile.GNU_FORMAT)
    assert inspect_sdist(path, LIMITS).top_dir == "foo-1.0"
    assert (extract_sdist(path, tmp_path / "out", LIMITS) / "PKG-INFO").is_file()


def test_expected_version_compares_as_pep440(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    assert inspect_sdist(path, LIMITS, expect_version="1.0.0").version == "1.0"


def test_limits_from_settings() -> None:
    class S:
        max_sdist_bytes, max_unpacked_bytes, max_members = 1, 2, 3

    assert Limits.from_settings(S()) == Limits(1, 2, 3)


def test_one_megabyte_is_decompressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ~1 MB sdist: extract_sdist decompresses it exactly once (no re-reading of the archive)."""
    rnd = __import__("random").Random(1)
    words = [bytes(rnd.choice(b"abcdefghijklmnop_ ") for _ in range(8)) for _ in range(500)]
    members = sdist_members()
    for i in range(150):
        body = b"\n".join(b" ".join(rnd.choice(words) for _ in range(12)) for _ in range(300))
        members.append(F(f"foo-1.0/src/mod{i}.py", body))
    path = write_tar(tmp_path / "foo-1.0.tar.gz", members)
    assert 800_000 < path.stat().st_size < 1_500_000
    limits = Limits(200 << 20, 1 << 30, 10_000)

    opened = []
    real = gzip.GzipFile

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(gzip, "GzipFile", counting)
    tree = extract_sdist(path, tmp_path / "out", limits)
    assert len(opened) == 1
    assert len(list((tree / "src").glob("mod*.py"))) == 150


# The file: size, name, content -------------------------------------------------------------------


def test_too_big_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "foo-1.0.tar.gz"
    path.write_bytes(b"not even gzip" * 100)
    msg = refused(path, "over the limit of 1000 bytes", limits=Limits(1000, 1 << 20, 100))
    assert "1300 bytes" in msg


@pytest.mark.parametrize("fn", ["foo-1.0.tar.bz2", "foo-1.0.tgz", "foo-1.0-py3-none-any.whl", "foo-1.0.tar"])
def test_wrong_extension(tmp_path: Path, fn: str) -> None:
    refused(write_tar(tmp_path / fn, sdist_members()), r"must end in \.tar\.gz or \.zip")


@pytest.mark.parametrize("fn, why", [
    ("foo.tar.gz", "not a valid sdist file name"),
    ("foo-notaversion.tar.gz", r"invalid version"),
    ("foo bar-1.0.tar.gz", "'foo bar' is not a valid project name"),
    ("-1.0.zip", "not a valid sdist file name"),
])
def test_bad_file_name(tmp_path: Path, fn: str, why: str) -> None:
    path = tmp_path / fn
    if fn.endswith(".zip"):
        write_zip(path, zip_members())
    else:
        write_tar(path, sdist_members())
    refused(path, why)


def test_random_bytes_named_tar_gz(tmp_path: Path) -> None:
    path = tmp_path / "foo-1.0.tar.gz"
    path.write_bytes(os.urandom(2000).replace(b"\x1f", b"x"))
    refused(path, "not gzip-compressed")


def test_gzip_that_is_not_tar(tmp_path: Path) -> None:
    path = tmp_path / "foo-1.0.tar.gz"
    path.write_bytes(gzip.compress(b"this is just text, not a tar archive\n" * 50))
    refused(path, "gzip-compressed but not a tar archive")


def test_empty_gzip(tmp_path: Path) -> None:
    path = tmp_path / "foo-1.0.tar.gz"
    path.write_bytes(gzip.compress(b""))
    refused(path, "not a tar archive")


def test_truncated_gzip(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 12])
    refused(path, "corrupt gzip data")


def test_wheel_renamed_tar_gz(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "foo-1.0.tar.gz", [Z("foo/__init__.py"), Z("foo-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")])
    refused(path, "the file is a wheel, not a gzip-compressed tar archive")


def test_zip_renamed_tar_gz(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "foo-1.0.tar.gz", zip_members()), "is a zip archive, not a gzip-compressed tar")


def test_wheel_renamed_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "foo-1.0.zip", [Z("foo/__init__.py"), Z("foo-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")])
    refused(path, r"is a wheel \(it has 'foo-1.0.dist-info/WHEEL'\), not an sdist")


def test_tar_gz_renamed_zip(tmp_path: Path) -> None:
    refused(write_tar(tmp_path / "foo-1.0.zip", sdist_members()), "gzip-compressed data, not a zip archive")


def test_random_bytes_named_zip(tmp_path: Path) -> None:
    path = tmp_path / "foo-1.0.zip"
    path.write_bytes(b"hello" * 100)
    refused(path, "not a zip archive")


# Hostile members --------------------------------------------------------------------------------


def test_absolute_member(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), F("/tmp/evil")])
    refused(path, "member '/tmp/evil' has an absolute path")


def test_dotdot_member_writes_nothing_outside(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), F("foo-1.0/../../evil", b"pwned")])
    refused(path, r"member 'foo-1.0/../../evil' has a '\.\.' component")
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "work-foo-1.0.tar.gz" / "evil").exists()


def test_dotdot_member_first(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [F("../evil", b"pwned"), *sdist_members()])
    refused(path, r"member '\.\./evil' has a '\.\.' component")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("target, why", [
    ("../../../etc", "points outside the tree"),
    ("../..", "points outside the tree"),
    ("/etc/passwd", "symlink to the absolute path '/etc/passwd'"),
    ("sub/../../..", "has '..' after a name"),
    ("", "empty target"),
])
def test_symlink_leaving_tree(tmp_path: Path, target: str, why: str) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), L("foo-1.0/src/link", target)])
    refused(path, f"member 'foo-1.0/src/link' is a {why}" if why.startswith("symlink") else why)


def test_symlink_then_write_through_it(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), L("foo-1.0/lnk", "src"), F("foo-1.0/lnk/x.py")])
    refused(path, "member 'foo-1.0/lnk/x.py' is inside 'foo-1.0/lnk', which is a symlink")


def test_file_replacing_symlink(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), L("foo-1.0/lnk", "src"), F("foo-1.0/lnk")])
    refused(path, "is a file with the same name as an earlier symlink")


@pytest.mark.parametrize("target, why", [
    ("/etc/passwd", "outside the tree"),
    ("foo-1.0/../../x", "outside the tree"),
    ("other/x", "outside the tree"),
    ("foo-1.0/missing", "not an earlier regular file"),
])
def test_hardlink(tmp_path: Path, target: str, why: str) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), L("foo-1.0/h", target, tarfile.LNKTYPE)])
    refused(path, f"member 'foo-1.0/h' is a hard link to {target!r}, which is {why}")


def test_hardlink_inside_is_fine(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), L("foo-1.0/h.toml", "foo-1.0/pyproject.toml", tarfile.LNKTYPE)])
    tree = extract_sdist(path, tmp_path / "out", LIMITS)
    assert (tree / "h.toml").read_bytes() == PYPROJECT


@pytest.mark.parametrize("kind, why", [(tarfile.CHRTYPE, "is a device file"), (tarfile.BLKTYPE, "is a device file"),
                                       (tarfile.FIFOTYPE, "is a fifo")])
def test_device_and_fifo(tmp_path: Path, kind: bytes, why: str) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), T("foo-1.0/dev", kind)])
    refused(path, f"member 'foo-1.0/dev' {why}")


def test_two_top_level_directories(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), F("bar-2.0/setup.py")])
    refused(path, "member 'bar-2.0/setup.py' is not under the top-level directory 'foo-1.0'")


def test_file_at_top_level(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [F("setup.py"), *sdist_members()])
    refused(path, "member 'setup.py' is a file at the top level")


def test_too_many_members(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    refused(path, "more than 5 members", limits=Limits(10 << 20, 1 << 20, 5))


def test_unpacked_size_declared(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), F("foo-1.0/big.bin", b"\0" * 300_000)])
    refused(path, "members unpack to more than 200000 bytes .*'foo-1.0/big.bin'", limits=Limits(10 << 20, 200_000, 100))


def test_gzip_stream_bomb(tmp_path: Path) -> None:
    """Declared sizes are tiny; a 16 MiB pax header makes the decompressed stream huge."""
    ti, data = F("foo-1.0/setup.py")
    ti.pax_headers = {"comment": "x" * (16 << 20)}
    path = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), (ti, data)])
    assert path.stat().st_size < 100_000
    refused(path, "decompressed data exceeds .* archive bomb", limits=Limits(10 << 20, 100_000, 50))


def test_missing_pkg_info(tmp_path: Path) -> None:
    members = [m for m in sdist_members() if not m[0].name.endswith("PKG-INFO")]
    members.append(F("foo-1.0/src/foo.egg-info/PKG-INFO", pkg_info()))
    refused(write_tar(tmp_path / "foo-1.0.tar.gz", members), "no foo-1.0/PKG-INFO")


def test_pkg_info_without_version(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members(meta=b"Metadata-Version: 2.1\nName: foo\n"))
    refused(path, "foo-1.0/PKG-INFO has no Version")


def test_pkg_info_name_mismatch(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members(meta=pkg_info("bar", "1.0")))
    refused(path, "PKG-INFO says the project is 'bar', but the file name says 'foo'")


def test_pkg_info_version_mismatch(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members(meta=pkg_info("foo", "1.1")))
    refused(path, "PKG-INFO says version '1.1', but the file name says '1.0'")


def test_pkg_info_version_not_normalized_form(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members(meta=pkg_info("foo", "1.0.0")))
    refused(path, "says version '1.0.0', but the file name says '1.0'")


def test_expected_name_mismatch(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    refused(path, "this is an sdist of 'foo', but 'bar' was asked for", expect_name="bar")


def test_expected_version_mismatch(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.1.tar.gz", sdist_members("foo-1.1", "foo", "1.1"))
    refused(path, "this is foo 1.1, but version 1.0 was asked for", expect_name="foo", expect_version="1.0")


# Zip specifics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("member, why", [
    (Z("/abs/evil"), "member '/abs/evil' has an absolute path"),
    (Z("foo-1.0/../../evil"), r"member 'foo-1.0/../../evil' has a '\.\.' component"),
    (Z("foo-1.0/link", b"../../etc", mode=stat.S_IFLNK | 0o777), "is a symlink to '../../etc', which points outside"),
    (Z("foo-1.0/link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777), "symlink to the absolute path"),
    (Z("foo-1.0/dev", b"", mode=stat.S_IFCHR | 0o644), "member 'foo-1.0/dev' is a device file"),
    (Z("foo-1.0/fifo", b"", mode=stat.S_IFIFO | 0o644), "member 'foo-1.0/fifo' is a fifo"),
    (Z("other/x"), "not under the top-level directory 'foo-1.0'"),
    (Z("foo-1.0/PKG-INFO", pkg_info()), "appears twice"),
])
def test_zip_hostile(tmp_path: Path, member, why: str) -> None:
    refused(write_zip(tmp_path / "foo-1.0.zip", [*zip_members(), member]), why)
    assert not (tmp_path / "evil").exists()


def test_zip_too_many_members(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "foo-1.0.zip", zip_members()), "more than the limit of 3", limits=Limits(1 << 20, 1 << 20, 3))


def test_zip_unpacked_size(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "foo-1.0.zip", [*zip_members(), Z("foo-1.0/zeros.bin", b"\0" * 5_000_000)])
    assert path.stat().st_size < 100_000
    refused(path, "members unpack to more than 1048576 bytes")


def test_zip_empty(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "foo-1.0.zip", []), "the archive is empty")


def test_zip_missing_pkg_info(tmp_path: Path) -> None:
    members = [m for m in zip_members() if not m[0].filename.endswith("PKG-INFO")]
    refused(write_zip(tmp_path / "foo-1.0.zip", members), "no foo-1.0/PKG-INFO")


# Extraction ---------------------------------------------------------------------------------------


def test_extract_twice_is_refused(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members())
    extract_sdist(path, tmp_path / "out", LIMITS)
    with pytest.raises(SdistError, match="already exists"):
        extract_sdist(path, tmp_path / "out", LIMITS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["foo-1.0"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SdistError, match="foo-1.0.tar.gz: no such file"):
        inspect_sdist(tmp_path / "foo-1.0.tar.gz", LIMITS)


# The job's sdist, unpacked on first use (farm/worker/source.py) --------------------------------------


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_sdist_source_reads_top_level_files_without_unpacking(tmp_path: Path, kind: str) -> None:
    from farm.worker import build_requires
    from farm.worker.source import SdistSource

    if kind == "tar":
        members = sdist_members()
        for ti, _ in members:
            ti.mtime = 1_700_000_000
        sdist = write_tar(tmp_path / "foo-1.0.tar.gz", members)
    else:
        sdist = write_zip(tmp_path / "foo-1.0.zip", zip_members())
    source = SdistSource(sdist, tmp_path / "src", LIMITS)
    assert source.top_level("pyproject.toml") == PYPROJECT
    with pytest.raises(ValueError):
        source.top_level("nothing.txt")
    from farm.util.archive import read_top_level

    assert read_top_level(sdist, "foo.py", "nothing.txt") == {}  # only the top folder's own files
    assert source.timestamp == (1_700_000_000 if kind == "tar" else 1_704_067_200)  # zip 2024-01-01 00:00 as UTC
    assert build_requires.declared(source) == ["setuptools"]
    assert not source.is_unpacked and not (tmp_path / "src").exists()

    tree = source.path  # unpacked now, once, with the archive checks
    assert source.is_unpacked and tree == tmp_path / "src" / "foo-1.0" and (tree / "src" / "foo.py").is_file()
    assert source.path is tree
    (tree / "pyproject.toml").write_bytes(PYPROJECT.replace(b'"setuptools"', b'"setuptools>=70"'))
    assert build_requires.declared(source) == ["setuptools>=70"]  # from the tree, as the build sees it
    assert source.timestamp == (1_700_000_000 if kind == "tar" else 1_704_067_200)


def test_build_requirement_changes_unpack_and_rewrite_the_tree(tmp_path: Path) -> None:
    from farm.recipes.schema import BuildRequires
    from farm.worker import build_requires
    from farm.worker.source import SdistSource

    source = SdistSource(write_tar(tmp_path / "foo-1.0.tar.gz", sdist_members()), tmp_path / "src", LIMITS)
    assert build_requires.apply(source, BuildRequires()) is None and not source.is_unpacked
    assert build_requires.apply(source, BuildRequires(add=["cython<3"])) == ["setuptools", "cython<3"]
    assert source.is_unpacked and b'"cython<3"' in (source.path / "pyproject.toml").read_bytes()


def test_hostile_sdist_is_still_refused_when_unpacked_late(tmp_path: Path) -> None:
    from farm.worker.source import SdistSource

    sdist = write_tar(tmp_path / "foo-1.0.tar.gz", [*sdist_members(), F("foo-1.0/../../escape.txt")])
    source = SdistSource(sdist, tmp_path / "src", LIMITS)
    assert source.top_level("PKG-INFO") is not None
    with pytest.raises(SdistError):
        source.path
    assert not (tmp_path / "escape.txt").exists()
