"""Fake platform tools for the platform tests: scripts on PATH that record their calls."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest


def fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    """A stand-in for an OS tool: a Python script that appends its argv (and a few variables) to
    calls.jsonl beside it, then runs `body` (argv in `args`)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""
        import json, os, pathlib, shutil, sys
        args = sys.argv[1:]
        here = pathlib.Path(__file__).parent
        env = {k: os.environ.get(k) for k in ("MACOSX_DEPLOYMENT_TARGET", "HOMEBREW_NO_AUTO_UPDATE")}
        with open(here / "calls.jsonl", "a") as f:
            f.write(json.dumps({"tool": pathlib.Path(__file__).name, "args": args, "env": env}) + "\\n")
        """) + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def calls(bin_dir: Path, tool: str | None = None) -> list[list[str]]:
    log = bin_dir / "calls.jsonl"
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [e["args"] for e in entries if tool is None or e["tool"] == tool]


@pytest.fixture
def bin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder put first on PATH (for the fake OS tools, and for real programs under other names)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


FAKE_DELOCATE = """
    # -w DIR ... WHEEL: copy the wheel into DIR, renamed by FAKE_TAG when set
    dest = pathlib.Path(args[args.index("-w") + 1])
    wheel = pathlib.Path(args[-1])
    dest.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAKE_FAIL"):
        print("delocate.libsana.DelocationError: Library dependencies do not satisfy target MacOS version 11.0")
        sys.exit(1)
    name = wheel.name
    if os.environ.get("FAKE_TAG"):
        name = "-".join(name.split("-")[:-1]) + "-" + os.environ["FAKE_TAG"] + ".whl"
    shutil.copy(wheel, dest / name)
    print("Copied to package .dylibs directory:\\n  /opt/homebrew/lib/libz.1.dylib")
    """
