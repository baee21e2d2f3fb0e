"""Benchmark: the farm's Linux container path against cibuildwheel run by hand, same sdist, same image.

Per round, alternating which goes first:

  plain  `python -m cibuildwheel --output-dir D --platform linux SDIST` as a person runs it by hand
         for this job: the same build identifier, image, build[uv] front end, the recipe's apt
         packages installed online in before-all and its environment, the index and CA bundle,
         memory and process limits, the host's network, no tests (`plain_environment`). The farm
         instead prepares a wheelhouse and the packages first and builds without network
         (docs/security.md). The clock covers the cibuildwheel command only;
  farm   a running `farm up` (engine cibuildwheel, the same build image, the clean verification
         image; a fresh FARM_HOME each round, started and idle before the clock starts): from the
         in-process `submit()` call until http://127.0.0.1:PORT/simple/<project>/ lists the wheel.
         That includes the clean-container verification, attestation and publishing. Step durations
         come from `farm status --json`, command times from the job log.
         The farm's root phase (system packages and before-all, as root) makes a prepared image
         that later builds with the same inputs reuse for a day: the warm-up round makes it (unless
         an earlier run did) and the counted rounds reuse it; the report says which.

One warm-up round (not counted) first; medians over `--rounds` (default 3). Needs the private Docker
engine (`eval "$(scripts/docker-up.sh)"`), the bullseye images (`farm image build --suite bullseye
[--verify]`, made here if missing) and https://pypi.org/simple/ (build requirements, apt archive).

    .venv/bin/python bench/containers.py [--rounds 3] [--json results.json] [--work DIR] [--fresh-root-phase]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded import Farm, _job_state, commands_in_log, fetch_sdist, median, say
from packaging.utils import canonicalize_name, parse_sdist_filename

UPSTREAM = "https://pypi.org/simple/"
PLATFORM = "linux-x86_64"
PYTHON = "cp39"
SUITE = "bullseye"
TARGET = 1.10  # farm submit-to-installable / plain cibuildwheel
PATHS = ("farm", "plain")
STEPS = ("fetching", "building", "repairing", "verifying", "attesting", "uploading")
_CIBW_TOTAL = re.compile(r"^\d+ wheels? produced in (\d+) seconds", re.MULTILINE)


def images(docker_host: str, sources: Sequence[Any] = (), tag: str | None = None) -> tuple[Any, Any]:
    """The bullseye build image and its verification image (`NAME-verify:VERSION`), made or found up to
    date. Without `sources`, bullseye's cp39 only: the farm would otherwise build a matrix of every
    compiled Python (bench/matrix.py passes its Pythons)."""
    from farm.images import image_build

    tags: tuple[str | None, str | None] = (None, None)
    if tag is not None:
        name, _, version = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
        tags = (f"{name}:{version}", f"{name}-verify:{version}")
    # No CPython 2.7 (bullseye's images carry it by default): cibuildwheel, the baseline, builds no cp27.
    build = image_build(suite=SUITE, tag=tags[0], docker_host=docker_host, index_url=UPSTREAM, log=sys.stderr,
                        python_sources=list(sources), python2=False)
    verify = image_build(suite=SUITE, tag=tags[1], verify=True, docker_host=docker_host, index_url=UPSTREAM,
                         log=sys.stderr, python_sources=list(sources), python2=False)
    return build, verify


def farm_environment(docker_host: str, build: Any, verify: Any) -> dict[str, str]:
    return {
        "FARM_ENGINE": "cibuildwheel",
        "FARM_DOCKER_HOST": docker_host,
        "FARM_UPSTREAM_INDEX": UPSTREAM,
        "FARM_IMAGES": json.dumps({PLATFORM: [{"image": build.tag, "pythons": build.pythons}]}),
        "FARM_VERIFY_IMAGES": json.dumps({PLATFORM: [{"image": verify.tag, "pythons": verify.pythons}]}),
    }


def plain_environment(sdist: Path, work: Path, *, image: str, docker_host: str) -> dict[str, str]:
    """cibuildwheel as a person runs it by hand for this sdist: the same image, build identifier,
    front end, recipe (its apt packages installed online in before-all, its environment) and CA
    bundle as the farm's job, with the host's network, and none of the farm's offline preparation."""
    import shlex

    from farm.config import get_settings
    from farm.images import default_ca_bundle
    from farm.recipes.load import find_recipe
    from farm.util.cmd import clean_env
    from farm.worker.platforms import get_platform

    plat = get_platform(PLATFORM)
    build_id = plat.build_identifier(PYTHON)
    name, version = parse_sdist_filename(sdist.name)
    recipe = find_recipe(name, str(version))
    if recipe is None:
        raise SystemExit(f"{sdist.name}: no recipe in recipes/ (the plain run would not know its system packages)")
    options = recipe.options_for(build_id, str(version))
    ca = work / "ca-bundle.crt"
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_ca_bundle(), ca)
    index = {"PIP_INDEX_URL": UPSTREAM, "UV_INDEX_URL": UPSTREAM, "PIP_CERT": "/farm/ca-bundle.crt",
             "SSL_CERT_FILE": "/farm/ca-bundle.crt", **options.environment}
    engine = shlex.join(["--network=host", f"--volume={ca}:/farm/ca-bundle.crt:ro",
                         f"--memory={get_settings().build_memory}", f"--pids-limit={get_settings().build_pids}"])
    env = clean_env({
        "CIBW_BUILD": build_id, "CIBW_ARCHS": plat.arch, "CIBW_MANYLINUX_X86_64_IMAGE": image,
        "CIBW_BUILD_FRONTEND": "build[uv]", "CIBW_BUILD_VERBOSITY": "1", "CIBW_TEST_SKIP": "*",
        "CIBW_ENVIRONMENT": " ".join(f"{k}={shlex.quote(v)}" for k, v in index.items()),
        "CIBW_CONTAINER_ENGINE": f"docker; create_args: {engine}; disable_host_mount: true",
        "DOCKER_HOST": docker_host, "TMPDIR": str(work),
    }, path_prepend=[Path(sys.executable).parent])
    if options.system_packages.apt:
        env["CIBW_BEFORE_ALL"] = ("apt-get update -qq && apt-get install -y --no-install-recommends "
                                  + shlex.join(options.system_packages.apt))
    return env


def plain_path(sdist: Path, work: Path, *, image: str, docker_host: str) -> dict[str, Any]:
    env = plain_environment(sdist, work, image=image, docker_host=docker_host)
    out = work / "wheelhouse"
    log = work / "cibuildwheel.log"
    argv = [sys.executable, "-m", "cibuildwheel", "--output-dir", str(out), "--platform", "linux", str(sdist)]
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=3600, check=False)
        seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"plain cibuildwheel failed (exit {proc.returncode}); see {log}")
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"plain cibuildwheel: {len(wheels)} wheels in {out}")
    return {"total": seconds, "wheel": wheels[0].name, "cibw": {k: v for k, v in env.items() if k.startswith("CIBW_")},
            "cibw_reported": _cibw_reported(text)}


def _cibw_reported(text: str) -> float | None:
    m = _CIBW_TOTAL.search(text)
    return float(m.group(1)) if m else None


def farm_path(sdist: Path, work: Path) -> dict[str, Any]:
    from farm.config import get_settings
    from farm.coordinator.submit import submit

    farm = Farm(work / "home")
    result: dict[str, Any] = {}
    try:
        result["startup"] = farm.start()
        start = time.perf_counter()
        submitted = submit(str(sdist), settings=get_settings())
        result["submit_call"] = time.perf_counter() - start
        project = canonicalize_name(submitted.name)
        ((job_id, _, _),) = submitted.jobs
        checked = start
        while not farm.listed(project):
            now = time.perf_counter()
            if now - checked > 1.0:
                checked = now
                state, error = _job_state(job_id)
                if state in ("failed", "cancelled"):
                    raise SystemExit(f"farm job {job_id} {state}: {error}\n{farm.cli('logs', str(job_id)).stdout}")
            if now - start > 3600:
                raise SystemExit(f"farm job {job_id}: not on the index after an hour")
            time.sleep(0.02)
        result["total"] = time.perf_counter() - start
        deadline = time.monotonic() + 30
        while _job_state(job_id)[0] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
        status = json.loads(farm.cli("status", "--json").stdout)
        (view,) = [v for v in status if v["id"] == job_id]
        result["steps"] = {s["name"]: s["seconds"] for s in view["steps"]}
        result["wheel"] = view["wheels"][0] if view["wheels"] else None
        log_text = farm.cli("logs", str(job_id)).stdout
        (work / f"job-{job_id}.log").write_text(log_text)
        result["commands"] = commands_in_log(log_text)
        result["cibw_reported"] = _cibw_reported(log_text)
        result["cibw_logged"] = sorted(line.strip() for line in log_text.splitlines() if line.startswith("  CIBW_"))
        # The root phase (system packages, before-all): made in this job, or a prepared image reused.
        result["root_phase"] = "reused" if re.search(r"^prepared image \S+ reused", log_text, re.M) else "made"
        result["probed"] = "get_requires_for_build_wheel" in log_text
    finally:
        farm.stop()
    return result


def forget_prepared_images(docker_host: str) -> None:
    """Remove the farm's prepared images (`--fresh-root-phase`): the next farm build makes its own."""
    from farm.containers import docker_client
    from farm.worker.engines.prepared_image import KEY_LABEL

    client = docker_client(docker_host)
    try:
        for prepared in client.images.list(filters={"label": KEY_LABEL}):
            client.images.remove(prepared.id, force=True)
    finally:
        client.close()


def one_round(n: int, sdist: Path, root: Path, *, image: str, docker_host: str, warmup: bool,
              fresh: bool = False) -> dict[str, Any]:
    order = PATHS if n % 2 == 0 else PATHS[::-1]
    label = "warm-up" if warmup else f"round-{n}"
    out: dict[str, Any] = {}
    for path in order:
        work = root / label / path
        work.mkdir(parents=True)
        if fresh and path == "farm":
            forget_prepared_images(docker_host)
        load = os.getloadavg()[0]
        res = farm_path(sdist, work) if path == "farm" else plain_path(sdist, work, image=image,
                                                                        docker_host=docker_host)
        res["load_before"] = load
        out[path] = res
        extra = ""
        if path == "farm":
            extra = "  (" + " ".join(f"{k}={v:.1f}" for k, v in res["steps"].items()) + \
                f"; root phase {res['root_phase']}, backend hook {'asked' if res['probed'] else 'not asked'})"
        say(f"{label}: {path}: {res['total']:.2f} s (load average before: {load:.2f}){extra}")
    return out


def _sum_commands(pairs: list[tuple[str, float]]) -> dict[str, float]:
    seen: dict[str, float] = {}
    for name, secs in pairs:
        seen[name] = seen.get(name, 0.0) + secs
    return seen


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {p: median([r[p]["total"] for r in rounds]) for p in PATHS}
    s["ratio"] = s["farm"] / s["plain"]
    s["per_round"] = [(r["farm"]["total"], r["plain"]["total"], r["farm"]["total"] / r["plain"]["total"],
                       r["farm"]["load_before"], r["plain"]["load_before"]) for r in rounds]
    s["farm_steps"] = {k: median([r["farm"]["steps"].get(k) for r in rounds]) for k in STEPS}
    s["submit_call"] = median([r["farm"]["submit_call"] for r in rounds])
    cmds: dict[str, dict[str, list[float]]] = {}
    for r in rounds:
        for step, pairs in r["farm"]["commands"].items():
            for name, secs in _sum_commands(pairs).items():
                cmds.setdefault(step, {}).setdefault(name, []).append(secs)
    s["farm_commands"] = {step: {n: median(v) for n, v in names.items()} for step, names in cmds.items()}
    s["cibw_in_farm"] = median([dict(_sum_commands(r["farm"]["commands"].get("building", []))).get("python")
                                for r in rounds])
    # The build inside the farm is the same cibuildwheel command as the plain path; on a busy machine its
    # time varies more between runs than everything else the farm does. So also: the farm's own cost
    # (farm total minus its cibuildwheel command) per round, and the ratio it gives on the plain median.
    s["overhead"] = median([r["farm"]["total"] - dict(_sum_commands(r["farm"]["commands"].get("building", [])))
                            .get("python", float("nan")) for r in rounds])
    s["ratio_overhead"] = (s["plain"] + s["overhead"]) / s["plain"]
    s["startup"] = median([r["farm"]["startup"] for r in rounds])
    s["wheels"] = sorted({r[p]["wheel"] for r in rounds for p in PATHS})
    s["root_phase"] = [r["farm"]["root_phase"] for r in rounds]
    s["probed"] = [r["farm"]["probed"] for r in rounds]
    return s


def render(s: dict[str, Any], rounds: int, cibw: dict[str, str]) -> str:
    st = s["farm_steps"]
    rest = s["farm"] - sum(v for v in st.values() if not math.isnan(v))
    lines = [f"Medians over {rounds} rounds, seconds.", "",
             "| sdist | plain cibuildwheel | farm (submit to installable) | farm ÷ plain |", "|---|---:|---:|---:|",
             f"| pyyaml==6.0.2 cp39, bullseye image | {s['plain']:.2f} | {s['farm']:.2f} | **{s['ratio']:.2f}×** |",
             "", "Per round (farm / plain / ratio, load average before each):", ""]
    for i, (f, p, r, lf, lp) in enumerate(s["per_round"]):
        lines.append(f"- round {i}: {f:.2f} / {p:.2f} / {r:.2f}× (load {lf:.2f} / {lp:.2f})")
    lines += ["", "Where the farm's time goes (median seconds, `farm status --json`):", "",
              "| " + " | ".join(STEPS) + " | outside steps (submit, queue, gaps, publish) | cibuildwheel command in building |",
              "|" + "---:|" * (len(STEPS) + 2),
              "| " + " | ".join(f"{st[k]:.2f}" for k in STEPS) + f" | {rest:.2f} | {s['cibw_in_farm']:.2f} |",
              "", (f"The farm's own cost (farm total − its cibuildwheel command, median per round): "
              f"{s['overhead']:.2f} s; (plain median + that) ÷ plain median = {s['ratio_overhead']:.2f}×."),
              "", "Commands inside the farm's steps (median seconds, from the job log):", ""]
    for step, names in s["farm_commands"].items():
        lines.append(f"- {step}: " + ", ".join(f"{n} {v:.2f}" for n, v in names.items()))
    lines += ["", "Root phase per counted round (made, or a prepared image reused): "
              + ", ".join(s["root_phase"]) + "; backend hook asked: " + ", ".join(map(str, s["probed"]))]
    lines += ["", "Wheels: " + ", ".join(s["wheels"]), "", "CIBW_* variables of the plain run (the engine's):", ""]
    lines += [f"    {k}={v}" for k, v in sorted(cibw.items())]
    verdict = "met" if s["ratio"] <= TARGET else "NOT met"
    verdict2 = "met" if s["ratio_overhead"] <= TARGET else "NOT met"
    lines += ["", (f"Target farm ≤ {TARGET}× plain: {verdict} on the medians ({s['ratio']:.2f}×); "
              f"{verdict2} on the farm's own cost ({s['ratio_overhead']:.2f}×)")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdist", default="pyyaml==6.0.2", help="NAME==VERSION with a recipe (default pyyaml==6.0.2)")
    p.add_argument("--rounds", type=int, default=3, help="counted rounds (default 3), after one warm-up round")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--fresh-root-phase", action="store_true",
                   help="remove the farm's prepared images before each farm build, so that every one downloads "
                        "and installs the system packages (as the plain run does)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--work", type=Path, help="keep work folders (logs, wheels) here instead of a temporary folder")
    args = p.parse_args(argv)

    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host:
        raise SystemExit('DOCKER_HOST is not set: eval "$(scripts/docker-up.sh)" first')
    build, verify = images(docker_host)
    say(f"images: {build.tag} {build.digest[:19]}, {verify.tag} {verify.digest[:19]}")
    os.environ.update(farm_environment(docker_host, build, verify))
    from farm.config import reset_settings

    reset_settings()
    sdist = Path(args.sdist).absolute() if args.sdist.endswith(".tar.gz") else fetch_sdist(args.sdist)
    say(f"sdist {sdist.name}; python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} cores")
    root = args.work or Path(tempfile.mkdtemp(prefix="farm-bench-containers-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        warm = None
        if not args.no_warmup:
            warm = one_round(0, sdist, root, image=build.tag, docker_host=docker_host, warmup=True,
                             fresh=args.fresh_root_phase)
        rounds = [one_round(n, sdist, root, image=build.tag, docker_host=docker_host, warmup=False,
                            fresh=args.fresh_root_phase) for n in range(args.rounds)]
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(rounds)
    cibw = rounds[0]["plain"]["cibw"]
    logged = {line.split("=", 1)[0] for line in rounds[0]["farm"]["cibw_logged"]}
    if logged != set(cibw):
        say(f"WARNING: the farm's job log shows CIBW_ variables {sorted(logged ^ set(cibw))} differently")
    print()
    print(render(summary, args.rounds, cibw))
    if warm is not None:
        print(f"\nWarm-up round (not counted; root phase {warm['farm']['root_phase']}): farm "
              f"{warm['farm']['total']:.2f} s, plain {warm['plain']['total']:.2f} s, "
              f"{warm['farm']['total'] / warm['plain']['total']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps({
            "date": dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv,
            "python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "images": {"build": [build.tag, build.digest], "verify": [verify.tag, verify.digest]},
            "seconds": round(time.time() - started), "summary": summary, "rounds": rounds, "warmup": warm}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
