"""Benchmark: what the sandbox costs a build, on real C-extension sdists.

One process, the same sdists, the same uv cache, the same native engine: per round and sdist, the
build step (`NativeEngine.build`: build environment, build requirements, both PEP 517 hooks) and
the verification (fresh venv, install, imports) are run once with `sandbox = true` (bubblewrap,
unprivileged uid, limits) and once with `sandbox = false`, the order alternating from round to
round. One warm-up round (not counted) fills the uv cache. Medians are reported, with the ratio
sandboxed / unsandboxed of the build and of build + verification.

Whole builds vary by a few percent from run to run on a shared machine, more than the sandbox
costs, so the script also measures the sandbox's fixed cost directly: the same `python -c pass`
run 30 times through `run_sandboxed` with and without bubblewrap (a build runs two such hook
commands, verification one), and the chown of a real unpacked source tree.

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
from tests.helpers.sdists import cached_sdist  # noqa: E402  (the same cached, sha256-checked upstream sdists)

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


def fixed_cost(sdist: Path, root: Path, n: int = 30) -> dict[str, float]:
    """Milliseconds per sandboxed command (over an unsandboxed one), and for preparing a source tree."""
    from farm.worker.sandbox import Policy, Unsandboxed, interpreter_roots, package_env, run_sandboxed

    plat = get_platform(host_platform_name())
    box = plat.sandbox(Settings(home=root / "home"))
    work = root / "fixed"
    src = SdistSource(sdist, work / "src", ArchiveLimits.from_settings(Settings(home=root / "home")))
    tree = src.path
    policy = Policy(cwd=tree, writable=(work / "src",), readable=interpreter_roots(sys.executable), tmp=work / "tmp",
                    env=package_env(home=work / "src"), limits=job_limits(Settings(home=root / "home"), Options()))
    per: dict[str, float] = {}
    for name, sandbox in (("open", Unsandboxed()), ("box", box)):
        start = time.perf_counter()
        for _ in range(n):
            run_sandboxed(sandbox, [str(Path(sys.executable).resolve()), "-c", "pass"], policy, log=None, timeout=60)
        per[name] = (time.perf_counter() - start) / n * 1000
    shutil.rmtree(work, ignore_errors=True)
    src = SdistSource(sdist, work / "src", ArchiveLimits.from_settings(Settings(home=root / "home")))
    src.path
    start = time.perf_counter()
    box.prepare(policy)
    chown = (time.perf_counter() - start) * 1000
    return {"command_open_ms": per["open"], "command_sandboxed_ms": per["box"],
            "per_command_ms": per["box"] - per["open"], "prepare_tree_ms": chown}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", action="append", help="NAME==VERSION (default: pyyaml, msgpack, markupsafe)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sdists = [cached_sdist(r) for r in args.sdist or DEFAULT_SDISTS]
    root = Path(tempfile.mkdtemp(prefix="farm-bench-sandbox-"))
    times: dict[str, dict[str, list[tuple[float, float]]]] = {s.name: {"on": [], "off": []} for s in sdists}
    fixed: dict[str, dict[str, float]] = {}
    try:
        for sdist in sdists:
            fixed[sdist.name] = fixed_cost(sdist, root)
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
                              "rounds": args.rounds, "sdists": {}, "fixed": fixed}
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
    print()
    print("| sdist | a command, no sandbox | a command, sandboxed | sandbox per command | chown of the tree | "
          "fixed cost of one build (3 commands + chown) / build time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in fixed.items():
        cost = 3 * f["per_command_ms"] + f["prepare_tree_ms"]
        build = report["sdists"][name]["build_off"] * 1000
        print(f"| {name} | {f['command_open_ms']:.1f} ms | {f['command_sandboxed_ms']:.1f} ms | "
              f"{f['per_command_ms']:.1f} ms | {f['prepare_tree_ms']:.1f} ms | {cost:.0f} ms / {build:.0f} ms = "
              f"{cost / build:.1%} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
