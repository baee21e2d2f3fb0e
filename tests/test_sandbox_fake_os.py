"""The macOS and Windows sandboxes, checked on Linux with their command lines only (fake_os).

These hosts cannot run here: what is tested is the profile and the command line each produces
from a policy; neither has run on a real macOS or Windows worker here (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.config import Settings
from farm.worker.platforms import get_platform
from farm.worker.sandbox import Limits, Policy, Unsandboxed
from farm.worker.sandbox.macos import SandboxExec, profile
from farm.worker.sandbox.windows import JobObject

pytestmark = pytest.mark.fake_os


def make_policy(tmp_path: Path, **kw) -> Policy:  # type: ignore[no-untyped-def]
    return Policy(cwd=tmp_path / "home" / "work" / "src", writable=(tmp_path / "home" / "work" / "src",),
                  readable=(Path("/Library/Frameworks/Python.framework"),), tmp=tmp_path / "home" / "work" / "tmp",
                  limits=Limits(memory=2 * 1024 ** 3, processes=256, file_size=1024 ** 3, cpu_seconds=600), **kw)


def test_macos_profile_denies_network_writes_and_the_farm_home(tmp_path: Path) -> None:
    """sandbox-exec: no network (unless granted), writes only to the job's folders, FARM_HOME
    unreadable but for the job's own folders."""
    home = tmp_path / "home"
    text = profile(make_policy(tmp_path), hidden=[home])
    assert "(deny network*)" in text
    assert f'(subpath "{home}/work/src")' in text and f'(subpath "{home}/work/tmp")' in text
    assert f'(deny file-read* (require-all (subpath "{home}")' in text
    assert "(deny network*)" not in profile(make_policy(tmp_path, network=True), hidden=[home])


def test_macos_command_sets_limits_then_runs(tmp_path: Path) -> None:
    wrapped = SandboxExec(hidden=[tmp_path]).wrap(["python", "-c", "pass"], make_policy(tmp_path))
    assert wrapped.argv[:2] == ["/usr/bin/sandbox-exec", "-p"]
    script = wrapped.argv[5]
    assert "ulimit -v 2097152" in script and "ulimit -u 256" in script and "ulimit -t 600" in script
    assert wrapped.argv[-3:] == ["python", "-c", "pass"]


def test_windows_job_object_launcher(tmp_path: Path) -> None:
    wrapped = JobObject(python="C:/Python312/python.exe").wrap(["python", "-c", "pass"], make_policy(tmp_path))
    assert wrapped.argv[:3] == ["C:/Python312/python.exe", "-m", "farm.worker.sandbox.windows"]
    assert "--processes=256" in wrapped.argv and f"--memory={2 * 1024 ** 3}" in wrapped.argv
    assert wrapped.argv[wrapped.argv.index("--") + 1:] == ["python", "-c", "pass"]


@pytest.mark.parametrize(("platform", "kind"), [("macos-arm64", "sandbox-exec"), ("windows-amd64", "job-object"),
                                                ("linux-x86_64", "bubblewrap")])
def test_each_platform_has_its_sandbox_and_it_can_be_turned_off(platform: str, kind: str) -> None:
    assert get_platform(platform).sandbox(Settings()).name == kind
    assert isinstance(get_platform(platform).sandbox(Settings(sandbox=False)), Unsandboxed)
