"""Signed provenance: the farm's key, DSSE envelopes in PEP 740-shaped documents served beside each
wheel, the index attributes pointing at them, and `farm verify` failing with a reason for a tampered
wheel, a tampered statement and a wrong key."""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest
from pypi_simple import ProjectPage

from farm.cli import main
from farm.errors import SigningError
from farm.provenance import keys, sign
from tests.helpers.farms import publish_wheel, settings  # noqa: F401 - fixtures
from tests.helpers.wheels import make_wheel


HOST = "http://farm.invalid/"  # no public_url: the placeholder origin the server replaces (farm/index/simple.py)


def test_dsse_pae_matches_the_spec() -> None:
    # The example from the DSSE protocol document.
    assert sign.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert sign.pae("t", b"") == b"DSSEv1 1 t 0 "


def test_statements_and_signed_documents_are_those_the_farm_always_made() -> None:
    """A fixed key and build give the same bytes as before farm.provenance was a package (Ed25519
    signatures are deterministic): the digests below were made by farm/signing.py and
    farm/worker/attest.py at 99d1742. Documents already served keep verifying, and new ones read
    the same to any tool that checks them."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from farm.messages import JobSpec, SdistRef
    from farm.provenance import statement

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    spec = JobSpec(job_id=3, attempt=2, name="demo", version="1.0",
                   sdist=SdistRef(filename="demo-1.0.tar.gz", sha256="c" * 64, size=10,
                                  storage_key="sdists/cc/demo-1.0.tar.gz"),
                   platform="linux-x86_64", python="cp311", build_id="cp311-manylinux_x86_64", engine="native",
                   recipe_name=None, recipe_digest="d" * 64, options={}, upstream_index="https://pypi.org/simple/")
    stmt = statement.statement(
        spec=spec, wheel=Path("demo-1.0-py3-none-any.whl"), wheel_sha256="e" * 64, tools={"uv": "0.5"},
        commands=["uv build", "uv pip install"], timings={"building": 1.23456, "verifying": 2.0},
        started=1_700_000_000.5, finished=1_700_000_100.25, verification={"passed": True, "imports": ["demo"]},
        image_digest=None, build_requires=["setuptools"], isolation={"network": False}, worker="w1")
    payload = statement.payload(stmt)
    assert hashlib.sha256(payload).hexdigest() == "cd08ac53cfd1e1dcaaf2fd79ef60734527b91c9a4097d3e0a498f9a28a33444d"
    doc = sign.provenance_object(key, payload)
    assert hashlib.sha256(sign.document_bytes(doc)).hexdigest() == \
        "02776a5bb69f2a62ec2b97edabad4e63b95b5a39af51b9cb379af1bfc5bc89c7"
    kid = keys.keyid_of(key.public_key())
    assert sign.keyid(doc) == kid
    verified = sign.verify_provenance(json.loads(sign.document_bytes(doc)), {kid: key.public_key()})
    assert verified.payload == payload and verified.statement == stmt
    assert statement.subject(verified.statement) == ("demo-1.0-py3-none-any.whl", "e" * 64)
    assert statement.verification(verified.statement) == {"passed": True, "imports": ["demo"]}


def test_init_makes_a_private_key_and_publishes_the_public_one(farm_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init"]) == 0
    out = capsys.readouterr().out
    folder = farm_home / "keys"
    private = folder / "farm.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    key = keys.load_private(private)
    kid = keys.keyid_of(key.public_key())
    assert kid in out
    for tree in ("", "stable/", "prod/", "dev/"):
        pub = farm_home / "index" / tree / "keys" / "farm.pub"
        assert keys.keyid_of(keys.load_public(pub.read_bytes())) == kid
        doc = json.loads((pub.parent / "farm.json").read_text())
        assert doc["keys"][0]["keyid"] == kid and doc["keys"][0]["algorithm"] == "ed25519"
    trees = json.loads((farm_home / "index" / "trees.json").read_text())
    assert trees["trees"] == {"staging": ".", "stable": "stable", "prod": "prod", "dev": "dev"}
    # Idempotent: the key is kept.
    before = private.read_bytes()
    assert main(["init"]) == 0
    assert private.read_bytes() == before and "existing" in capsys.readouterr().out


def test_a_readable_private_key_is_refused(farm_home: Path) -> None:
    key, _ = keys.ensure_key(farm_home)
    path = farm_home / "keys" / "farm.key"
    path.chmod(0o644)
    with pytest.raises(SigningError, match="readable by others"):
        keys.load_private(path)


def test_publish_signs_and_the_pages_point_at_the_provenance(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "src", "sigdemo", "1.0")
    publish_wheel(settings, wheel, version="1.0")
    folder = settings.index / "files" / "sigdemo"
    doc = json.loads((folder / f"{wheel.name}.provenance").read_bytes())
    public = keys.farm_public_key(settings.home)
    kid = keys.keyid_of(public)
    verified = sign.verify_provenance(doc, {kid: public})
    # The signed payload is exactly the unsigned statement served before (and its recorded digest).
    assert verified.payload == (folder / f"{wheel.name}.provenance.json").read_bytes()
    assert verified.statement["subject"][0]["name"] == wheel.name
    att = doc["attestation_bundles"][0]["attestations"][0]
    assert doc["version"] == 1 and att["version"] == 1
    assert doc["attestation_bundles"][0]["publisher"]["kind"] == "wheel-farm"
    assert att["dsse_envelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert att["dsse_envelope"]["signatures"][0]["keyid"] == kid == att["verification_material"]["keyid"]
    assert att["envelope"]["statement"] == att["dsse_envelope"]["payload"]
    # Pages: HTML data-provenance and JSON "provenance", absolute (PEP 740), parsed by pypi-simple.
    url = f"{HOST}files/sigdemo/{wheel.name}.provenance"
    page_dir = settings.index / "simple" / "sigdemo"
    base = f"{HOST}simple/sigdemo/"
    for page in (ProjectPage.from_html("sigdemo", (page_dir / "index.html").read_text(), base_url=base),
                 ProjectPage.from_json_data(json.loads((page_dir / "index.json").read_bytes()), base_url=base)):
        (pkg,) = page.packages
        assert pkg.provenance_url == url
    # The same wheel in the dev virtual index links to its own copy.
    dev = json.loads((settings.index / "dev" / "simple" / "sigdemo" / "index.json").read_bytes())
    assert dev["files"][0]["provenance"] == f"{HOST}files/sigdemo/{wheel.name}.provenance"  # below the tree served
    assert (settings.index / "dev" / "files" / "sigdemo" / f"{wheel.name}.provenance").is_file()
    from farm.db.models import Provenance
    from farm.db.session import session_scope

    with session_scope() as s:
        prov = s.query(Provenance).one()
        assert prov.keyid == kid and prov.envelope == doc


def _verify(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["verify", *args])
    return code, out.getvalue()


@pytest.fixture
def published(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "src", "sigdemo", "2.0")
    publish_wheel(settings, wheel, version="2.0")
    return settings.index / "files" / "sigdemo" / wheel.name


def test_verify_good_wheel_passes(published: Path) -> None:
    code, out = _verify(str(published), "--offline")
    assert code == 0, out
    assert out.count("ok  ") == 4 and "verified" in out and "submitted as a file" in out
    code, out = _verify("sigdemo==2.0", "--offline")
    assert code == 0, out


def test_verify_tampered_wheel_fails(published: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out" / published.name
    copy.parent.mkdir()
    shutil.copy(published, copy)
    with open(copy, "ab") as fh:
        fh.write(b"\0")
    code, out = _verify(str(copy), "--offline")
    assert code == 1 and "NOT VERIFIED" in out
    assert "FAIL  subject" in out and "changed after it was signed" in out


def test_verify_tampered_statement_fails(published: Path, tmp_path: Path) -> None:
    doc = json.loads(Path(f"{published}.provenance").read_bytes())
    att = doc["attestation_bundles"][0]["attestations"][0]
    statement = json.loads(base64.b64decode(att["dsse_envelope"]["payload"]))
    statement["predicate"]["runDetails"]["byproducts"][2]["annotations"]["passed"] = True
    statement["predicate"]["buildDefinition"]["externalParameters"]["source"]["version"] = "9.9"
    forged = base64.b64encode(json.dumps(statement).encode()).decode()
    att["dsse_envelope"]["payload"] = att["envelope"]["statement"] = forged
    path = tmp_path / "forged.provenance"
    path.write_text(json.dumps(doc))
    code, out = _verify(str(published), "--offline", "--provenance", str(path))
    assert code == 1 and "FAIL  signature" in out and "statement or the signature was changed" in out
    # Only one of the two forms edited: also caught.
    doc = json.loads(Path(f"{published}.provenance").read_bytes())
    doc["attestation_bundles"][0]["attestations"][0]["envelope"]["statement"] = forged
    path.write_text(json.dumps(doc))
    code, out = _verify(str(published), "--offline", "--provenance", str(path))
    assert code == 1 and "disagree" in out


def test_verify_wrong_key_fails(published: Path, tmp_path: Path) -> None:
    other, _ = keys.ensure_key(tmp_path / "other-farm")
    pub = tmp_path / "other.pub"
    pub.write_bytes(keys.public_pem(other.public_key()))
    code, out = _verify(str(published), "--offline", "--key", str(pub))
    assert code == 1 and "FAIL  signature" in out and "not by the expected key" in out
    # A document signed by another key, checked against the farm's key.
    statement = base64.b64decode(json.loads(Path(f"{published}.provenance").read_bytes())
                                 ["attestation_bundles"][0]["attestations"][0]["envelope"]["statement"])
    path = tmp_path / "other.provenance"
    path.write_text(json.dumps(sign.provenance_object(other, statement)))
    code, out = _verify(str(published), "--offline", "--provenance", str(path))
    assert code == 1 and "not by the expected key" in out


def test_verify_failed_verification_and_unknown_sdist(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wheel = make_wheel(tmp_path / "src", "sigbad", "1.0")
    publish_wheel(settings, wheel, version="1.0", passed=False)
    code, out = _verify("sigbad==1.0", "--offline")
    assert code == 1 and "FAIL  verification" in out and "did not pass" in out
    from farm.db.models import Source
    from farm.db.session import session_scope

    with session_scope() as s:
        s.query(Source).filter_by(name="sigbad").one().sha256 = "0" * 64
    code, out = _verify("sigbad==1.0", "--offline")
    assert "FAIL  sdist" in out and "no record of an sdist" in out


def test_verify_checks_the_upstream_record(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The sdist digest is compared with what the upstream index lists (a local index here)."""
    import hashlib

    from farm.index.serve import index_app
    from farm.index.simple import IndexFile, write_project, write_root
    from tests.helpers.indexes import _Server

    upstream = tmp_path / "upstream"
    sdist_sha = hashlib.sha256(b"the real sdist").hexdigest()
    write_project(upstream, "sigup", [IndexFile(filename="sigup-1.0.tar.gz", sha256=sdist_sha, size=14)])
    write_root(upstream, ["sigup"])
    with _Server(index_app(upstream, trees=False)) as server:
        wheel = make_wheel(tmp_path / "src", "sigup", "1.0")
        publish_wheel(settings, wheel, version="1.0", sdist_sha256=sdist_sha, upstream_index=server.url,
                      upstream_url=server.url.replace("/simple/", "/files/sigup/sigup-1.0.tar.gz"))
        code, out = _verify("sigup==1.0")
        assert code == 0, out
        assert f"matches the farm's record #1 and {server.url}" in out
        # The upstream index now lists other bytes under that name.
        write_project(upstream, "sigup", [IndexFile(filename="sigup-1.0.tar.gz", sha256="1" * 64, size=14)])
        code, out = _verify("sigup==1.0")
        assert code == 1 and "FAIL  sdist" in out and "1111111111" in out
        code, out = _verify("sigup==1.0", "--offline")
        assert code == 0 and "--offline" in out
