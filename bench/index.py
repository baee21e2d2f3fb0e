"""Benchmark of the farm's index against pypiserver and devpi-server serving the same wheels.

Servers, all on 127.0.0.1, all holding the same 2,000 + 20 wheels:

    farm      `farm api` (uvicorn; farm/index/serve.py with PEP 691 negotiation) on the farm's index
    static    the same index folder as plain files, stdlib ThreadingHTTPServer (`python -m http.server`)
    nginx     the same folder, nginx with the Accept -> index.json map of workers/linux/nginx-index.conf
    pypiserver  `pypi-server run` (its default backend and server), uploads with a password
    devpi     `devpi-server --offline-mode`, user index without bases, uploads with a password

Measured:

    page latency   GET the project page of a project with 2,000 files, HTML and PEP 691 JSON,
                   sequential requests on one keep-alive connection (like pip's session)
    install        `pip install` and `uv pip install` of 20 wheels into a fresh environment, no cache
    publish        publish-to-visible as the project grows: farm = the coordinator's publish
                   (database rows, signing, files, page rewrites in the first channel and the
                   virtual index over it) until GET /simple/<project>/ lists the file; pypiserver and
                   devpi = the upload POST until their simple page lists the file

    .venv/bin/python bench/index.py --json /tmp/bench-index/results.json
    .venv/bin/python bench/index.py --report /tmp/bench-index/results.json    # the Markdown tables
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.helpers.env import free_port  # noqa: E402
from tests.helpers.servers import DevpiServer, PypiServer  # noqa: E402

JSON = "application/vnd.pypi.simple.v1+json"
BIG = "benchproj"


def checkpoints(n: int) -> list[int]:
    """Project sizes at which publish-to-visible is timed (3 publishes from each): 0, 1/8, 1/4, 1/2, 3/4, full."""
    return sorted({0, n // 8, n // 4, n // 2, 3 * n // 4, max(n - 3, 0)})


def _timed(i: int, n: int) -> bool:
    return any(c <= i < c + 3 for c in checkpoints(n))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_wheels(work: Path, n_big: int, n_set: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    from tests.helpers.wheels import make_wheel

    big = [(make_wheel(work / "wheels" / "big", BIG, f"{i // 100}.{i % 100}"), f"{i // 100}.{i % 100}")
           for i in range(n_big)]
    small = [(make_wheel(work / "wheels" / "set", f"benchset-{i:02d}", "1.0"), "1.0") for i in range(n_set)]
    return big, small


# The farm --------------------------------------------------------------------------------------------


class FarmServer:
    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = {**os.environ, "FARM_HOME": str(home), "FARM_API_PORT": str(self.port)}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FarmServer:
        log_file = open(self.home / "api.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "api", "--port", str(self.port)], env=self.env,
                                     stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError("farm api did not start")

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def farm_publish_all(wheels: list[tuple[Path, str]], page_url: str | None) -> dict[int, float]:
    """Publish each wheel with the coordinator's publish(). At the checkpoints (with `page_url`) the
    clock runs from publish() until the served page lists the file; the job's rows, its stored wheel
    and its statement are made before, as a worker leaves them (not timed)."""
    from farm.config import get_settings
    from tests.helpers.farms import prepare_job, publish_prepared

    settings = get_settings()
    timings: dict[int, float] = {}
    with httpx.Client(timeout=30) as client:
        for i, (wheel, version) in enumerate(wheels):
            job_id, report = prepare_job(settings, wheel, version=version)
            timed = page_url is not None and _timed(i, len(wheels))
            start = time.perf_counter()
            publish_prepared(settings, job_id, report)
            if timed:
                assert page_url is not None
                while wheel.name not in client.get(page_url, headers={"Accept": JSON}).text:
                    time.sleep(0.001)
                timings[i] = time.perf_counter() - start
    return timings


# Uploads to pypiserver / devpi ---------------------------------------------------------------------------


def upload_all(name: str, target: Any, wheels: list[tuple[Path, str]], page_url: str | None) -> dict[int, float]:
    from farm.config import UploadTarget
    from farm.index.targets import form_fields

    cfg = UploadTarget(url=target.url, username=target.username, password=target.password)
    timings: dict[int, float] = {}
    with httpx.Client(timeout=120) as client:
        for i, (wheel, _) in enumerate(wheels):
            fields = form_fields(wheel)
            start = time.perf_counter()
            with open(wheel, "rb") as fh:
                r = client.post(cfg.url, data=fields, files={"content": (wheel.name, fh, "application/octet-stream")},
                                auth=(cfg.username, cfg.password))
            if not r.is_success:
                raise RuntimeError(f"{name}: upload of {wheel.name}: HTTP {r.status_code} {r.text[:200]}")
            if page_url is not None and _timed(i, len(wheels)):
                while wheel.name not in client.get(page_url, headers={"Accept": "text/html"}).text:
                    time.sleep(0.001)
                timings[i] = time.perf_counter() - start
    return timings


# Static servers ---------------------------------------------------------------------------------------------


class Static:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Static:
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                      str(self.root), str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_up(self.url + "simple/")
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


NGINX_CONF = """
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
    types {{ application/octet-stream whl; text/plain metadata; }}
    sendfile on; tcp_nopush on; keepalive_requests 100000;
    map $http_accept $simple_page {{
        default                                    index.html;
        "~application/vnd\\.pypi\\.simple\\.v1\\+json" index.json;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /simple/ {{
            index $simple_page;
            types {{ text/html html; application/vnd.pypi.simple.v1+json json; }}
            add_header Vary Accept;
        }}
        location /files/ {{ }}
    }}
}}
"""


class Nginx:
    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work, self.port = root, work, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=self.work, port=self.port, root=self.root))
        self.proc = subprocess.Popen([shutil.which("nginx") or "nginx", "-p", str(self.work), "-c", str(conf), "-g",
                                      "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        _wait_up(self.url + "simple/")
        return self

    def __exit__(self, *exc: object) -> None:
        _stop(self.proc)


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


# Measurements -------------------------------------------------------------------------------------------------


def page_latency(url: str, accept: str, n: int) -> dict[str, Any]:
    with httpx.Client(timeout=60, headers={"Accept": accept}) as client:
        for _ in range(20):
            r = client.get(url)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            r = client.get(url)
            r.read()
            times.append(time.perf_counter() - start)
        assert r.status_code == 200, (url, r.status_code)
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1000, 2), "p95_ms": round(times[int(len(times) * 0.95)] * 1000, 2),
            "content_type": r.headers.get("content-type", "").split(";")[0], "bytes": len(r.content), "n": n}


def install(tool: str, index_url: str, requirements: list[str], work: Path) -> float:
    from farm.util.cmd import clean_env

    env = clean_env({})
    venv = work / f"venv-{tool}"
    shutil.rmtree(venv, ignore_errors=True)
    uv = _uv()
    if tool == "pip":
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        cmd = [str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check",
               "--index-url", index_url, *requirements]
    else:
        subprocess.run([uv, "venv", "-q", str(venv)], check=True, env=env)
        cmd = [uv, "pip", "install", "-q", "--no-cache", "--no-config", "--python", str(venv / "bin/python"),
               "--index-url", index_url, *requirements]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{tool} install from {index_url}: {r.stdout}{r.stderr}")
    shutil.rmtree(venv, ignore_errors=True)
    return took


def _uv() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--set", type=int, default=20)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-index"))
    p.add_argument("--json", type=Path)
    p.add_argument("--no-devpi", action="store_true", help="leave devpi out (its 2,000 uploads take the longest)")
    p.add_argument("--report", type=Path, metavar="JSON", help="print the Markdown tables of an earlier run's --json")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    work = args.work.absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["FARM_HOME"] = str(work / "farm")
    started = time.time()
    big, small = make_wheels(work, args.files, args.set)
    log(f"made {len(big)} + {len(small)} wheels")
    result: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "files": len(big),
                              "set": len(small), "checkpoints": checkpoints(len(big)), "machine": _machine(),
                              "latency": {}, "install": {}, "publish": {}, "load": {}}

    def save(phase: str) -> None:
        result["load"][phase] = os.getloadavg()
        result["seconds"] = round(time.time() - started, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
        log(f"{phase} done (load {os.getloadavg()[0]:.1f})")

    requirements = [f"benchset-{i:02d}" for i in range(len(small))]

    def measure(indexes: dict[str, str]) -> None:
        for name, base in indexes.items():
            page = base + f"{BIG}/"
            result["latency"][name] = {
                "html": page_latency(page, "text/html", args.requests),
                "json": page_latency(page + ("index.json" if name == "static" else ""), JSON, args.requests),
            }
            log(f"page latency {name}: {result['latency'][name]['html']['median_ms']} ms html, "
                f"{result['latency'][name]['json']['median_ms']} ms json")
        save("latency " + ",".join(indexes))
        names = list(indexes)
        for r in range(args.rounds):  # the order of the servers rotates every round
            for name in names[r % len(names):] + names[: r % len(names)]:
                for tool in ("pip", "uv"):
                    t = install(tool, indexes[name], requirements, work)
                    result["install"].setdefault(name, {}).setdefault(tool, []).append(round(t, 3))
                    log(f"install round {r + 1}: {tool} from {name}: {t:.2f} s")
        save("install " + ",".join(indexes))

    from farm.cli import main as farm_main

    farm_main(["init"])
    with contextlib.ExitStack() as stack:
        farm = stack.enter_context(FarmServer(work / "farm"))
        os.environ["FARM_API_PORT"] = str(farm.port)
        from farm.config import reset_settings

        reset_settings()
        farm_publish_all(small, None)
        result["publish"]["farm"] = farm_publish_all(big, farm.url + f"simple/{BIG}/")
        save("publish farm")
        pypi = stack.enter_context(PypiServer(work / "pypiserver"))
        upload_all("pypiserver", pypi, small, None)
        result["publish"]["pypiserver"] = upload_all("pypiserver", pypi, big, pypi.index_url + f"{BIG}/")
        save("publish pypiserver")
        static = stack.enter_context(Static(work / "farm" / "index"))
        indexes = {"farm": farm.url + "simple/", "static": static.url + "simple/", "pypiserver": pypi.index_url}
        if shutil.which("nginx"):
            indexes["nginx"] = stack.enter_context(Nginx(work / "farm" / "index", work / "nginx")).url + "simple/"
        measure(indexes)
        if not args.no_devpi:
            devpi = stack.enter_context(DevpiServer(work / "devpi"))
            upload_all("devpi", devpi, small, None)
            result["publish"]["devpi"] = upload_all("devpi", devpi, big, devpi.index_url + f"{BIG}/")
            save("publish devpi")
            measure({"devpi": devpi.index_url})
    print(json.dumps(result, indent=1))
    return 0


ORDER = ("farm", "nginx", "static", "pypiserver", "devpi")


def report(result: dict[str, Any]) -> str:
    """Markdown tables of a run: page latency, installs (median of the rounds), publish-to-visible."""
    names = [n for n in ORDER if n in result["latency"] or n in result["publish"]]
    lines = [f"Page of a project with {result['files']:,} files (median / p95 of {_n(result)} requests, ms):", "",
             "| server | HTML | JSON | JSON content type | HTML bytes | JSON bytes |", "|---|---:|---:|---|---:|---:|"]
    for n in names:
        lat = result["latency"].get(n)
        if lat:
            h, j = lat["html"], lat["json"]
            lines.append(f"| {n} | {h['median_ms']:.2f} / {h['p95_ms']:.2f} | {j['median_ms']:.2f} / {j['p95_ms']:.2f} "
                         f"| {j['content_type']} | {h['bytes']:,} | {j['bytes']:,} |")
    lines += ["", f"Install {result['set']} wheels into a fresh environment, no cache (median of the rounds, s; "
              "every round in brackets):", "", "| server | pip install | uv pip install |", "|---|---:|---:|"]
    for n in names:
        inst = result["install"].get(n)
        if inst:
            cells = [f"{statistics.median(inst[t]):.2f} ({', '.join(f'{x:.2f}' for x in inst[t])})" for t in ("pip", "uv")]
            lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
    points = result["checkpoints"]
    pub = [n for n in names if n in result["publish"]]
    lines += ["", "Publish-to-visible as the project grows (median of the 3 publishes after N files, ms):", "",
              "| files already there | " + " | ".join(pub) + " |", "|---:|" + "---:|" * len(pub)]
    for c in points:
        row = []
        for n in pub:
            got = [v for k, v in result["publish"][n].items() if c <= int(k) < c + 3]
            row.append(f"{statistics.median(got) * 1000:.1f}" if got else "-")
        lines.append(f"| {c:,} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _n(result: dict[str, Any]) -> int:
    return next(iter(result["latency"].values()))["html"]["n"]


def _machine() -> dict[str, Any]:
    versions = {}
    for mod in ("uvicorn", "starlette", "pypiserver", "devpi_server", "waitress", "httpx", "pip"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True) if shutil.which("nginx") else None
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "load": os.getloadavg(), "versions": versions, "nginx": nginx.stderr.strip() if nginx else None,
            "uv": subprocess.run([_uv(), "--version"], capture_output=True, text=True).stdout.strip()}


if __name__ == "__main__":
    sys.exit(main())
