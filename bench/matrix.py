"""Benchmark: one C-extension sdist for every Python of a bullseye build image, the farm's matrix
against cibuildwheel's own serial run of the same identifiers on the same image.

  cibuildwheel  `python -m cibuildwheel --platform linux SDIST` with CIBW_BUILD naming every
                identifier (cp39-manylinux_x86_64 cp311-... ...): one container, the identifiers one
                after the other, as cibuildwheel's users run it. build[uv] front end, the index and CA
                bundle, the host's network, no tests. The clock covers the command.
  farm          `farm up --jobs N` (engine cibuildwheel, the same build image, its verification image;
                N = `--workers`, default the farm's own (`worker_jobs` 0: the core count, as
                far as the memory holds build_memory for each); from the in-process `submit()` until every job of the
                matrix succeeded, so it includes each wheel's clean-container verification, attestation
                and publishing.

The image's Pythons are bullseye's cp39 and those compiled from `--debian-pythons` and
`--python-source` (farm.images.pythons, cached in ~/.cache/wheel-farm/pythons: the first run compiles
them, minutes each). Rounds alternate which path goes first; medians over `--rounds`.

    .venv/bin/python bench/matrix.py [--sdist markupsafe==3.0.2] [--workers 2] [--rounds 1] [--tag NAME:VERSION]
        [--debian-pythons python3.11/bookworm,python3.13/trixie,python3.14/sid] [--python-source FILE]...
        [--free-threaded 3.14]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from containers import SUITE, UPSTREAM, farm_environment, images
from embedded import Farm, _job_state, fetch_sdist, median, say

from farm.cli.processes import default_jobs

TAG = "wheel-farm/debian-bullseye-matrix:bench"
TARGET = 0.6  # farm wall time / cibuildwheel's serial run


def cibuildwheel_path(sdist: Path, work: Path, *, image: str, identifiers: list[str], docker_host: str) -> dict[str, Any]:
    from farm.images import default_ca_bundle
    from farm.util.cmd import clean_env

    ca = work / "ca-bundle.crt"
    shutil.copyfile(default_ca_bundle(), ca)
    index = {"PIP_INDEX_URL": UPSTREAM, "UV_INDEX_URL": UPSTREAM, "PIP_CERT": "/farm/ca-bundle.crt",
             "SSL_CERT_FILE": "/farm/ca-bundle.crt"}
    engine = shlex.join(["--network=host", f"--volume={ca}:/farm/ca-bundle.crt:ro"])
    env = clean_env({
        "CIBW_BUILD": " ".join(identifiers), "CIBW_ARCHS": "x86_64", "CIBW_MANYLINUX_X86_64_IMAGE": image,
        "CIBW_BUILD_FRONTEND": "build[uv]", "CIBW_BUILD_VERBOSITY": "1", "CIBW_TEST_SKIP": "*",
        "CIBW_ENVIRONMENT": " ".join(f"{k}={shlex.quote(v)}" for k, v in index.items()),
        "CIBW_CONTAINER_ENGINE": f"docker; create_args: {engine}; disable_host_mount: true",
        "DOCKER_HOST": docker_host, "TMPDIR": str(work),
    }, path_prepend=[Path(sys.executable).parent])
    out, log = work / "wheelhouse", work / "cibuildwheel.log"
    # The project's own [tool.cibuildwheel] table is not read, as the farm does not read it: both paths build
    # the same identifiers with the same options (zstandard's table names an enable group 4.x refuses).
    config = work / "cibuildwheel.toml"
    config.write_text("# the project's [tool.cibuildwheel] table is ignored, as by the farm\n")
    argv = [sys.executable, "-m", "cibuildwheel", "--output-dir", str(out), "--platform", "linux",
            "--config-file", str(config), str(sdist)]
    with open(log, "w") as fh:
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=7200, check=False)
        seconds = time.perf_counter() - start
    wheels = sorted(p.name for p in out.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != len(identifiers):
        raise SystemExit(f"cibuildwheel: exit {proc.returncode}, {len(wheels)} wheels for {len(identifiers)}; see {log}")
    return {"total": seconds, "wheels": wheels}


def farm_path(sdist: Path, work: Path, *, env: dict[str, str], workers: int, pythons: list[str]) -> dict[str, Any]:
    from farm.config import get_settings
    from farm.coordinator.submit import submit

    farm = Farm(work / "home", jobs=workers)  # `farm up --jobs`: one worker slot per core by default
    farm.env.update(env)
    result: dict[str, Any] = {}
    try:
        result["startup"] = farm.start()
        start = time.perf_counter()
        submitted = submit(str(sdist), settings=get_settings())
        jobs = [job_id for job_id, _, _ in submitted.jobs]
        if len(jobs) != len(pythons):
            raise SystemExit(f"the farm planned {len(jobs)} jobs for {len(pythons)} Pythons ({pythons})")
        pending = set(jobs)
        while pending:
            for job_id in list(pending):
                state, error = _job_state(job_id)
                if state == "succeeded":
                    pending.discard(job_id)
                elif state in ("failed", "cancelled"):
                    raise SystemExit(f"farm job {job_id} {state}: {error}\n{farm.cli('logs', str(job_id)).stdout}")
            if time.perf_counter() - start > 7200:
                raise SystemExit("farm: the matrix did not finish in two hours")
            time.sleep(0.2)
        result["total"] = time.perf_counter() - start
        status = json.loads(farm.cli("status", "--json", "--limit", "50").stdout)
        views = [v for v in status if v["id"] in jobs]
        result["wheels"] = sorted(w for v in views for w in v["wheels"])
        result["steps"] = {v["build_id"]: {s["name"]: s["seconds"] for s in v["steps"]} for v in views}
    finally:
        farm.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    from farm.images import add_arguments, python_sources

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdist", default="markupsafe==3.0.2", help="a C-extension sdist, NAME==VERSION or a .tar.gz")
    p.add_argument("--workers", type=int, default=default_jobs(),
                   help="farm job slots (default: the farm's own default, farm.cli.processes.default_jobs)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tag", default=TAG, help=f"the build image (default {TAG}; its verification image NAME-verify:VERSION)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--work", type=Path, help="keep work folders (logs, wheels) here")
    images_options = argparse.ArgumentParser(add_help=False)
    add_arguments(images_options)
    for action in images_options._actions:
        if action.dest in ("debian_pythons", "python_source", "free_threaded"):
            p._add_action(action)
    args = p.parse_args(argv)
    args.suite = SUITE
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host:
        raise SystemExit('DOCKER_HOST is not set: eval "$(scripts/docker-up.sh)" first')
    build, verify = images(docker_host, python_sources(args), args.tag)
    identifiers = [f"{py}-manylinux_x86_64" for py in build.pythons]
    say(f"images {build.tag} / {verify.tag}: {', '.join(build.pythons)}")
    env = farm_environment(docker_host, build, verify)
    os.environ.update(env)
    sdist = Path(args.sdist).absolute() if args.sdist.endswith(".tar.gz") else fetch_sdist(args.sdist)
    say(f"sdist {sdist.name}; {platform.platform()}, {os.cpu_count()} cores, farm workers {args.workers}")
    root = args.work or Path(tempfile.mkdtemp(prefix="farm-bench-matrix-"))
    rounds = []
    try:
        for n in range(args.rounds):
            order = ("farm", "cibuildwheel") if n % 2 == 0 else ("cibuildwheel", "farm")
            one: dict[str, Any] = {}
            for path in order:
                work = root / f"round-{n}" / path
                work.mkdir(parents=True)
                load = os.getloadavg()[0]
                if path == "farm":
                    one[path] = farm_path(sdist, work, env=env, workers=args.workers, pythons=build.pythons)
                else:
                    one[path] = cibuildwheel_path(sdist, work, image=build.tag, identifiers=identifiers,
                                                  docker_host=docker_host)
                one[path]["load_before"] = load
                say(f"round {n}: {path}: {one[path]['total']:.1f} s (load average before {load:.1f}); "
                    f"{len(one[path]['wheels'])} wheels")
            rounds.append(one)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    farm_s, cibw_s = median([r["farm"]["total"] for r in rounds]), median([r["cibuildwheel"]["total"] for r in rounds])
    ratio = farm_s / cibw_s
    print(f"\n{sdist.name}, {len(identifiers)} Pythons ({' '.join(build.pythons)}), bullseye image, "
          f"{os.cpu_count()} cores, {args.workers} farm workers, medians over {args.rounds} round(s):\n")
    print("| cibuildwheel serial | farm matrix (submit to all succeeded) | farm ÷ cibuildwheel |")
    print("|---:|---:|---:|")
    print(f"| {cibw_s:.1f} s | {farm_s:.1f} s | **{ratio:.2f}×** |")
    print(f"\nTarget farm ≤ {TARGET}× cibuildwheel: {'met' if ratio <= TARGET else 'NOT met'}")
    print("Wheels: " + ", ".join(rounds[0]["farm"]["wheels"]))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "ratio": ratio, "pythons": build.pythons}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
