"""Intentional rebuilds: a published file name never changes, so a rebuild of the same version gets a
PEP 427 build tag (`-1`, `-2`, ...) and the reason is recorded on the job and in the provenance.

Bad inputs covered: a rebuild without a reason, and a build tag that does not start with a digit.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import parse_wheel_filename

from farm.errors import FarmError
from farm.util.wheel import with_build_tag
from tests.helpers.wheels import make_wheel


def test_a_build_tag_renames_the_wheel_and_keeps_it_valid(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "in", "tagme", "1.0", tag="cp311-cp311-manylinux_2_31_x86_64")
    tagged = with_build_tag(wheel, "2", tmp_path / "out")
    assert tagged.name == "tagme-1.0-2-cp311-cp311-manylinux_2_31_x86_64.whl"
    assert parse_wheel_filename(tagged.name)[2] == (2, "")
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(tagged) as b:
        assert b.read("tagme-1.0.dist-info/WHEEL").decode().endswith("Build: 2\n")
        for name in a.namelist():
            if not name.endswith(("/WHEEL", "/RECORD")):
                assert a.read(name) == b.read(name)
    # pip checks RECORD's hashes when it installs (the tag is for this interpreter: a pure wheel here)
    pure = with_build_tag(with_build_tag(make_wheel(tmp_path / "p", "tagpure", "1.0"), "1", tmp_path / "p1"),
                          "3", tmp_path / "p3")
    assert pure.name == "tagpure-1.0-3-py3-none-any.whl"
    with zipfile.ZipFile(pure) as zf:
        assert zf.read("tagpure-1.0.dist-info/WHEEL").decode().count("Build:") == 1
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                           str(pure)], capture_output=True, text=True, env={"PIP_CONFIG_FILE": "/dev/null",
                                                                           "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert (target / "tagpure" / "__init__.py").is_file()


def test_a_build_tag_must_start_with_a_digit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must start with a digit"):
        with_build_tag(make_wheel(tmp_path, "tagbad", "1.0"), "x1", tmp_path / "out")


def test_a_rebuild_needs_a_reason(farm_home: Path) -> None:
    from farm.cli import main
    from farm.config import get_settings
    from farm.coordinator.submit import submit

    assert main(["init"]) == 0
    with pytest.raises(FarmError, match="a rebuild needs a reason"):
        submit("anything==1.0", settings=get_settings(), rebuild="  ")


@pytest.mark.slow
def test_a_rebuild_publishes_a_build_tagged_wheel_beside_the_first(running_farm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Through `farm up`: the first build publishes `NAME-V-TAGS.whl`; `submit --rebuild REASON` of the
    same sdist builds again and publishes `NAME-V-1-TAGS.whl` beside it (the first is unchanged and
    still served), its provenance records the reason, and pip installs the rebuild (the higher tag)."""
    import hashlib
    import json

    import httpx

    from tests.helpers.env import installed_and_run
    from tests.helpers.sdists import make_project, make_sdist

    farm = running_farm
    sdist = make_sdist(make_project(tmp_path, "farmtest-rebuild"), tmp_path / "dist")
    first = farm.farm("submit", "--wait", "--timeout", "600", str(sdist))
    assert first.returncode == 0, first.stdout + first.stderr
    files = {f["filename"]: f for f in httpx.get(f"{farm.url}/simple/farmtest-rebuild/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]}
    (original,) = files
    before = hashlib.sha256(httpx.get(f"{farm.url}/files/farmtest-rebuild/{original}").content).hexdigest()

    again = farm.farm("submit", "--wait", "--timeout", "600", "--rebuild", "libfoo security fix", str(sdist))
    assert again.returncode == 0, again.stdout + again.stderr
    files = {f["filename"]: f for f in httpx.get(f"{farm.url}/simple/farmtest-rebuild/", headers={
        "Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]}
    tagged = original.replace("-0.1.0-", "-0.1.0-1-")
    assert set(files) == {original, tagged}
    assert files[original]["hashes"]["sha256"] == before  # the published file never changed
    prov = httpx.get(files[tagged]["provenance"]).json()
    statement = json.loads(__import__("base64").b64decode(
        prov["attestation_bundles"][0]["attestations"][0]["envelope"]["statement"]))
    assert statement["predicate"]["buildDefinition"]["internalParameters"]["rebuild"] == {
        "buildTag": "1", "reason": "libfoo security fix"}
    code = "import importlib.metadata as m, farmtest_rebuild; print(m.distribution('farmtest-rebuild').read_text('WHEEL'))"
    assert "Build: 1" in installed_and_run(farm.index_url, tmp_path, "farmtest-rebuild==0.1.0", code)
