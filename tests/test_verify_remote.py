"""`farm verify` from another machine: a fresh environment with no FARM_HOME, no farm.toml and no
database (a `farm` process in an empty folder with an empty HOME), against a farm whose index is
served by uvicorn on 127.0.0.1, with only the index URL (or a wheel's URL) and the farm's public key.

The upstream index the statement names is a second server on 127.0.0.1 that lists the sdist with its
sha256 and serves its bytes. Verdicts and exit codes: a good wheel (by URL and by index + NAME==VERSION)
0; a changed wheel, a changed statement, a wrong key, an upstream sdist with other bytes 1; an
unreachable sdist 0 with a warning; no key 2. The `.intoto.jsonl` bundle served beside the wheel is
the DSSE envelope and verifies with the key; `farm reindex` writes it for a wheel published without it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers.env import free_port
from tests.helpers.farms import publish_wheel
from tests.helpers.indexes import _Server
from tests.helpers.wheels import make_wheel

ROOT = Path(__file__).resolve().parent.parent
NAME, VERSION = "remotepkg", "1.0"
SDIST = f"{NAME}-{VERSION}.tar.gz"


def _upstream(sdist_bytes: bytes, listed_sha256: str) -> Starlette:
    """A PEP 691 index listing one sdist of NAME (with `listed_sha256`) and serving `sdist_bytes`."""

    async def page(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"meta": {"api-version": "1.1"}, "name": NAME, "versions": [VERSION],
                             "files": [{"filename": SDIST, "url": f"../../files/{SDIST}",
                                        "hashes": {"sha256": listed_sha256}}]},
                            media_type="application/vnd.pypi.simple.v1+json")

    async def file(request):  # type: ignore[no-untyped-def]
        return Response(sdist_bytes, media_type="application/octet-stream")

    return Starlette(routes=[Route(f"/simple/{NAME}/", page), Route(f"/files/{SDIST}", file)])


@dataclass
class Remote:
    index: str  # the farm's first channel, /simple/
    wheel_url: str
    key: Path  # the farm's public key, copied to the other machine
    other: Path  # the other machine's empty HOME and working folder
    tree_file: Path  # the served wheel in the farm's index tree

    def verify(self, *args: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        env.update(HOME=str(self.other), PYTHONPATH=str(ROOT))
        key_args = ["--key", str(key or self.key)] if key is not False else []
        return subprocess.run([sys.executable, "-m", "farm.cli", "verify", *args, *key_args], cwd=self.other,
                              env=env, capture_output=True, text=True, timeout=120)


def _farm(farm_home: Path, tmp_path: Path, upstream_index: str, sdist_sha256: str) -> Iterator[Remote]:
    from farm.api.app import create_app
    from farm.cli import main
    from farm.config import get_settings

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init"]) == 0
    settings = get_settings()
    wheel = make_wheel(tmp_path / "built", NAME, VERSION)
    publish_wheel(settings, wheel, version=VERSION, upstream_index=upstream_index, sdist_sha256=sdist_sha256)
    other = tmp_path / "other-machine"
    other.mkdir()
    key = tmp_path / "trusted" / "farm.pub"
    key.parent.mkdir()
    key.write_bytes((farm_home / "keys" / "farm.pub").read_bytes())
    with _Server(create_app(settings)) as server:
        base = f"http://127.0.0.1:{server.port}"
        yield Remote(index=f"{base}/simple/", wheel_url=f"{base}/files/{NAME}/{wheel.name}", key=key, other=other,
                     tree_file=settings.index / "files" / NAME / wheel.name)
    assert sorted(p.name for p in other.iterdir()) == [], "verify made files on the other machine"


@pytest.fixture
def sdist() -> bytes:
    return b"the sdist's bytes, as upstream serves them\n"


@pytest.fixture
def remote(farm_home: Path, tmp_path: Path, sdist: bytes) -> Iterator[Remote]:
    digest = hashlib.sha256(sdist).hexdigest()
    with _Server(_upstream(sdist, digest)) as up:
        yield from _farm(farm_home, tmp_path, f"http://127.0.0.1:{up.port}/simple/", digest)


def test_good_wheel_by_url_and_by_index(remote: Remote) -> None:
    r = remote.verify(remote.wheel_url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "  verified" in r.stdout
    assert "ok    sdist" in r.stdout and "is the signed one" in r.stdout
    assert "ok    signature" in r.stdout and "ok    subject" in r.stdout

    r = remote.verify(remote.index, f"{NAME}=={VERSION}", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (report,) = json.loads(r.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert [checks[n]["ok"] for n in ("signature", "subject", "sdist", "verification")] == [True] * 4
    assert "/files/remotepkg/" in checks["signature"]["detail"]  # the page's absolute provenance link


def test_intoto_bundle_beside_the_wheel(remote: Remote, farm_home: Path) -> None:
    from farm.provenance import keys, sign

    r = httpx.get(remote.wheel_url + ".intoto.jsonl")
    assert r.status_code == 200 and r.headers["content-type"] == "application/jsonl"
    lines = r.content.decode().splitlines()
    assert len(lines) == 1 and r.content.endswith(b"\n")
    envelope = json.loads(lines[0])
    assert set(envelope) == {"payload", "payloadType", "signatures"}
    pub = keys.load_public(remote.key.read_bytes())
    payload = sign.dsse_verify(envelope, {keys.keyid_of(pub): pub})
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(remote.tree_file.read_bytes()).hexdigest()
    doc = httpx.get(remote.wheel_url + ".provenance").json()
    assert doc["attestation_bundles"][0]["attestations"][0]["dsse_envelope"] == envelope

    # A wheel published before the bundle existed gets it from `farm reindex`.
    from farm.cli import main

    bundle = remote.tree_file.with_name(remote.tree_file.name + ".intoto.jsonl")
    bundle.unlink()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["reindex"]) == 0
    assert bundle.read_bytes() == r.content


def test_changed_wheel_fails(remote: Remote) -> None:
    data = bytearray(remote.tree_file.read_bytes())
    data[-30] ^= 0xFF
    remote.tree_file.write_bytes(bytes(data))
    r = remote.verify(remote.wheel_url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  subject" in r.stdout and "was changed after it was signed" in r.stdout
    assert "NOT VERIFIED" in r.stdout


def test_changed_statement_fails(remote: Remote) -> None:
    path = remote.tree_file.with_name(remote.tree_file.name + ".provenance")
    doc = json.loads(path.read_bytes())
    att = doc["attestation_bundles"][0]["attestations"][0]
    stmt = json.loads(base64.b64decode(att["dsse_envelope"]["payload"]))
    stmt["predicate"]["runDetails"]["byproducts"][-1]["annotations"]["passed"] = True
    stmt["subject"][0]["name"] = "other-1.0-py3-none-any.whl"
    forged = base64.b64encode(json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()).decode()
    att["dsse_envelope"]["payload"] = att["envelope"]["statement"] = forged
    path.write_text(json.dumps(doc))
    r = remote.verify(remote.wheel_url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  signature" in r.stdout and "does not verify" in r.stdout
    assert "subject" not in r.stdout  # nothing in an unverified statement is trusted


def test_wrong_key_fails(remote: Remote, tmp_path: Path) -> None:
    other_key = tmp_path / "other.pub"
    other_key.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r = remote.verify(remote.wheel_url, key=other_key)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL  signature" in r.stdout and "not by the expected key" in r.stdout


def test_no_key_is_a_usage_error(remote: Remote) -> None:
    r = remote.verify(remote.wheel_url, key=False)  # type: ignore[arg-type]
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--key" in r.stderr


def test_local_file_with_key_away_from_the_farm(remote: Remote, tmp_path: Path) -> None:
    copy = tmp_path / "downloads" / remote.tree_file.name
    copy.parent.mkdir()
    copy.write_bytes(httpx.get(remote.wheel_url).content)
    r = remote.verify(str(copy), "--provenance", remote.wheel_url + ".provenance")
    assert r.returncode == 0, r.stdout + r.stderr
    copy.with_name(copy.name + ".provenance").write_bytes(httpx.get(remote.wheel_url + ".provenance").content)
    r = remote.verify(str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert remote.verify(str(copy)).returncode == 1


def test_unreachable_sdist_is_a_warning(farm_home: Path, tmp_path: Path, sdist: bytes) -> None:
    closed = f"http://127.0.0.1:{free_port()}/simple/"
    for remote in _farm(farm_home, tmp_path, closed, hashlib.sha256(sdist).hexdigest()):
        r = remote.verify(remote.wheel_url)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "warn  sdist" in r.stdout and "cannot reach" in r.stdout
        assert "  verified" in r.stdout


def test_upstream_sdist_with_other_bytes_fails(farm_home: Path, tmp_path: Path, sdist: bytes) -> None:
    digest = hashlib.sha256(sdist).hexdigest()
    with _Server(_upstream(b"other bytes\n", digest)) as up:
        for remote in _farm(farm_home, tmp_path, f"http://127.0.0.1:{up.port}/simple/", digest):
            r = remote.verify(remote.wheel_url)
            assert r.returncode == 1, r.stdout + r.stderr
            assert "FAIL  sdist" in r.stdout and "not the one the wheel was built from" in r.stdout


_PYPI_ATTESTATIONS_CHECK = r"""
import json, sys
from pydantic import ValidationError
from pypi_attestations import Envelope, Provenance
doc = json.loads(sys.stdin.read())
att = doc["attestation_bundles"][0]["attestations"][0]
env = Envelope.model_validate(att["envelope"])
errors = []
try:
    Provenance.model_validate(doc)
except ValidationError as exc:
    errors = [[str(p) for p in e["loc"]] for e in exc.errors()]
print(json.dumps({"statement": env.statement.decode(), "errors": errors}))
"""


def test_pypi_attestations_reads_what_matches_pep_740(remote: Remote) -> None:
    """pypi-attestations (PEP 740's reference models) parses the farm's `envelope` (the signed statement
    comes out byte for byte) and refuses the document exactly where it departs from PEP 740: no
    Trusted Publisher kind, no Sigstore certificate, no transparency log entries (docs/security.md)."""
    from tests.helpers.clients import tool_venv

    python = tool_venv("pypi-attestations", "pypi-attestations==0.0.31") / "python"
    doc = httpx.get(remote.wheel_url + ".provenance").content
    r = subprocess.run([str(python), "-c", _PYPI_ATTESTATIONS_CHECK], input=doc.decode(), capture_output=True,
                       text=True, timeout=120, check=True)
    out = json.loads(r.stdout)
    dsse = json.loads(doc)["attestation_bundles"][0]["attestations"][0]["dsse_envelope"]
    assert out["statement"].encode() == base64.b64decode(dsse["payload"])
    assert sorted(".".join(e[2:]) for e in out["errors"]) == [
        "attestations.0.verification_material.certificate",
        "attestations.0.verification_material.transparency_entries",
        "publisher",
    ]
