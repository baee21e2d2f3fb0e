"""Benchmark: what the sandbox costs a build, on real C-extension sdists.

One process, the same sdists, the same uv cache, the same native engine: per round and sdist, the
build step (`NativeEngine.build`: build environment, build requirements, both PEP 517 hooks) and
the verification (fresh venv, install, imports) are run once with `sandbox = true` (bubblewrap,
unprivileged uid, limits) and once with `sandbox = false`, the order alternating from round to
round. One warm-up round (not counted) fills the uv cache. Medians are reported, with the ratio
sandboxed / unsandboxed of the build and of build + verification.

    .venv/bin/python bench/sandbox.py [--sdist REQ ...] [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import platform as host
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from farm.config import Settings
from farm.messages import JobSpec, SdistRef
from farm.recipes.schema import Options
from farm.util.archive import Limits as ArchiveLimits
from farm.util.hashing import sha256_file
from farm.worker import verify
from farm.worker.engines.base import BuildContext
from farm.worker.engines.native import NativeEngine
from farm.worker.platforms import get_platform, host_platform_name
from farm.worker.sandbox import job_limits
from farm.worker.source import SdistSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import cached_sdist  # noqa: E402  (the same cached, sha256-checked upstream sdists)

DEFAULT_SDISTS = ["pyyaml==6.0.2", "msgpack==1.1.0", "markupsafe==3.0.2"]
UPSTREAM = "https://pypi.org/simple/"


def one(sdist: Path, *, sandbox: bool, root: Path) -> tuple[float, float]:
    """Seconds of the build step and of the verification of its wheel, in a fresh job folder."""
    work = root / f"job-{'box' if sandbox else 'open'}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    plat = get_platform(host_platform_name())
    settings = Settings(home=root / "home", sandbox=sandbox)
    options = Options()
    python = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    name, _, version = sdist.name.removesuffix(".tar.gz").rpartition("-")
    spec = JobSpec(job_id=1, attempt=1, name=name, version=version,
                   sdist=SdistRef(filename=sdist.name, sha256=sha256_file(sdist), size=sdist.stat().st_size,
                                  storage_key="s"),
                   platform=plat.name, python=python, build_id=plat.build_identifier(python), engine="native",
                   recipe_name=None, recipe_digest="d", options={}, upstream_index=UPSTREAM)
    src = SdistSource(sdist, work / "src", ArchiveLimits.from_settings(settings))
    src.path  # unpacking is not timed
    box, limits = plat.sandbox(settings), job_limits(settings, options)
    ctx = BuildContext(spec=spec, options=options, platform=plat, settings=settings, src=src, work=work,
                       log=io.StringIO(), sandbox=box, limits=limits)
    start = time.perf_counter()
    out = NativeEngine().build(ctx)
    built = time.perf_counter() - start
    wheel = plat.repair(out.wheels[0], work / "repaired", exclude=[], log=io.StringIO())
    interp = next(i for i in plat.interpreters(settings.interpreters) if i.tag == python)
    start = time.perf_counter()
    result = verify.verify_on_host(wheel=wheel, interp=interp, index_url=UPSTREAM, options=options, project=None,
                                   work=work, log=io.StringIO(), timeout=600, sandbox=box, limits=limits)
    checked = time.perf_counter() - start
    assert result.passed, result.detail
    shutil.rmtree(work, ignore_errors=True)
    return built, checked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", action="append", help="NAME==VERSION (default: pyyaml, msgpack, markupsafe)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sdists = [cached_sdist(r) for r in args.sdist or DEFAULT_SDISTS]
    root = Path(tempfile.mkdtemp(prefix="farm-bench-sandbox-"))
    times: dict[str, dict[str, list[tuple[float, float]]]] = {s.name: {"on": [], "off": []} for s in sdists}
    try:
        for rnd in range(args.rounds + 1):
            for sdist in sdists:
                order = [True, False] if rnd % 2 == 0 else [False, True]
                for sandboxed in order:
                    t = one(sdist, sandbox=sandboxed, root=root)
                    if rnd:  # round 0 warms the uv cache
                        times[sdist.name]["on" if sandboxed else "off"].append(t)
            print(f"round {rnd} done", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report: dict[str, Any] = {"machine": f"{host.node()} {host.machine()} python {host.python_version()}",
                              "rounds": args.rounds, "sdists": {}}
    print("| sdist | build, no sandbox | build, sandbox | ratio | build+verify, no sandbox | build+verify, sandbox | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t in times.items():
        b_off = statistics.median(x[0] for x in t["off"])
        b_on = statistics.median(x[0] for x in t["on"])
        a_off = statistics.median(x[0] + x[1] for x in t["off"])
        a_on = statistics.median(x[0] + x[1] for x in t["on"])
        report["sdists"][name] = {"build_off": b_off, "build_on": b_on, "all_off": a_off, "all_on": a_on,
                                  "raw": t}
        print(f"| {name} | {b_off:.2f} s | {b_on:.2f} s | {b_on / b_off:.3f} | {a_off:.2f} s | {a_on:.2f} s | "
              f"{a_on / a_off:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
