"""TLS in front of the farm with Debian's nginx, using the configuration the operating guide ships
(docs/nginx/farm.conf) as it is, with only its port, certificate and upstream port replaced.

A real farm API (a `farm api` process on a loopback port) serves a published wheel; nginx on
another loopback port terminates TLS with a test certificate. pip installs the wheel over HTTPS with
nothing but the index URL and the certificate, and an authenticated API call and a 1 MB upload go
through the proxy. Skipped only where nginx is not installed (scripts/install-nginx.sh installs it;
scripts/setup.sh runs that).
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from farm.config import get_settings
from farm.tokens import create_token
from tests.helpers.env import free_port, installer_env
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel

CONF = Path(__file__).resolve().parent.parent / "docs" / "nginx" / "farm.conf"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                                   reason="nginx not installed (scripts/install-nginx.sh)")]


def _wait(url: str, verify: bool | ssl.SSLContext = True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, verify=verify, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _certificates(folder: Path) -> None:
    """A test CA, and a certificate for 127.0.0.1 that it signed (clients refuse a CA as a server's)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=farm test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "privkey.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "fullchain.pem", "-days", "1", "-extfile", "ext.cnf")


def test_pip_and_the_api_through_nginx_with_tls(farm_home: Path, tmp_path: Path) -> None:
    from farm.cli import main

    api_port, tls_port = free_port(), free_port()
    public = f"https://127.0.0.1:{tls_port}/"
    (farm_home).mkdir(parents=True, exist_ok=True)
    (farm_home / "farm.toml").write_text(f'public_url = "{public}"\napi_port = {api_port}\n')
    from farm.config import reset_settings

    reset_settings()
    assert main(["init"]) == 0
    wheel = make_wheel(tmp_path / "w", "tlsdemo", "1.0")
    publish_wheel(get_settings(), wheel, version="1.0")
    token = create_token(farm_home, "tls-admin", "admin")

    tls = tmp_path / "tls"
    tls.mkdir()
    _certificates(tls)
    conf = CONF.read_text()
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
    conf = conf.replace("/etc/ssl/farm/", f"{tls}/")
    conf = conf.replace("http://127.0.0.1:8477", f"http://127.0.0.1:{api_port}")
    assert f"127.0.0.1:{tls_port}" in conf and f"127.0.0.1:{api_port}" in conf
    run = tmp_path / "nginx"
    (run / "tmp").mkdir(parents=True)
    wrapper = run / "nginx.conf"
    wrapper.write_text(
        f"user root;\nworker_processes 1;\npid {run}/nginx.pid;\nerror_log {run}/error.log warn;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n  access_log {run}/access.log;\n  client_body_temp_path {run}/tmp/body;\n"
        f"  proxy_temp_path {run}/tmp/proxy;\n  fastcgi_temp_path {run}/tmp/fcgi;\n  uwsgi_temp_path {run}/tmp/uwsgi;\n"
        f"  scgi_temp_path {run}/tmp/scgi;\n{conf}\n}}\n")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-c", str(wrapper), "-p", str(run)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(farm_home)
    api = subprocess.Popen([sys.executable, "-m", "farm.cli", "api", "--port", str(api_port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=open(tmp_path / "api.log", "wb"))
    proxy = subprocess.Popen([nginx, "-c", str(wrapper), "-p", str(run), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "nginx.err", "wb"))
    try:
        _wait(f"http://127.0.0.1:{api_port}/health")
        ca_file = str(tls / "ca.pem")
        ca = ssl.create_default_context(cafile=ca_file)
        _wait(f"{public}health", verify=ca)
        page = httpx.get(f"{public}simple/tlsdemo/", verify=ca, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        assert page.status_code == 200 and "tlsdemo-1.0-py3-none-any.whl" in page.text
        assert re.search(r'"provenance":\s*"https://127\.0\.0\.1:%d/' % tls_port, page.text), page.text[:800]

        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        proc = subprocess.run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--index-url",
                               f"{public}simple/", "tlsdemo==1.0"], env={**installer_env(), "SSL_CERT_FILE": ca_file},
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override pip's --cert (requests#3829): unset here.
        pip_env = {k: v for k, v in installer_env().items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp_path / "dl"),
                               "--index-url", f"{public}simple/", "--cert", ca_file, "tlsdemo==1.0"],
                              env=pip_env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "dl" / wheel.name).read_bytes() == wheel.read_bytes()

        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{public}api/jobs", verify=ca).status_code == 401
        jobs = httpx.get(f"{public}api/jobs", verify=ca, headers=auth)
        assert jobs.status_code == 200, jobs.text
        big = tmp_path / "big-1.0.tar.gz"
        big.write_bytes(os.urandom(1024 * 1024))
        with open(big, "rb") as f:  # through the proxy to the API, which judges it (not an sdist): 4xx, not 413
            resp = httpx.post(f"{public}api/submissions", verify=ca, headers=auth, files={"file": (big.name, f)})
        assert 400 <= resp.status_code < 500 and resp.status_code != 413, resp.text
    finally:
        proxy.terminate()
        api.terminate()
        proxy.wait(timeout=10)
        api.wait(timeout=10)
