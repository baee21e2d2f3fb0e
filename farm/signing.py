"""The farm's signing key and the signed provenance it serves beside every wheel.

Key pair: Ed25519 (the `cryptography` library), made by `farm init` (or by the coordinator's first
publish when `farm init` was not run)::

    $FARM_HOME/keys/farm.key     private key, PKCS#8 PEM, mode 0600 (folder 0700); only the coordinator reads it
    $FARM_HOME/keys/farm.pub     public key, SubjectPublicKeyInfo PEM
    <index tree>/keys/farm.pub   the same public key, published with every index tree
    <index tree>/keys/farm.json  {"keys": [{"keyid", "algorithm": "ed25519", "url": "farm.pub", "public_key_pem", "created"}]}

The key id is the hex sha256 of the raw 32-byte public key.

Signature: DSSE (https://github.com/secure-systems-lab/dsse, protocol v1): the payload is the
in-toto Statement as canonical JSON (sorted keys, no spaces: exactly the bytes of the unsigned
`<wheel>.provenance.json` and of `Provenance.digest`), payloadType `application/vnd.in-toto+json`,
and the Ed25519 signature is over PAE(payloadType, payload) =
`"DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload` (lengths as ASCII decimals of byte counts).

Served file: `files/<project>/<wheel>.provenance`, shaped like a PEP 740 provenance object::

    {"version": 1,
     "attestation_bundles": [{
        "publisher": {"kind": "wheel-farm", "claims": {"keyid": K, "key_url": "../../keys/farm.pub"}},
        "attestations": [{
           "version": 1,
           "verification_material": {"keyid": K, "algorithm": "ed25519", "key_url": "../../keys/farm.pub"},
           "envelope": {"statement": base64(payload), "signature": base64(sig)},
           "dsse_envelope": {"payload": base64(payload), "payloadType": "application/vnd.in-toto+json",
                             "signatures": [{"keyid": K, "sig": base64(sig)}]}}]}]}

This is *not* PEP 740 proper: there, `verification_material` is a Sigstore signing certificate with
transparency log entries and the publisher is a Trusted Publisher identity. Ours is one DSSE
signature made with the farm's own long-lived key; the layout only follows PEP 740 so that tools can
find the statement where they look for it. `envelope` is PEP 740's pair (the same signature over the
same PAE), `dsse_envelope` is the standard DSSE JSON of it for DSSE tools. `key_url` is relative to
the provenance file's URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from farm.errors import SignatureInvalid, SigningError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PUBLISHER_KIND = "wheel-farm"
KEY_FILE = "farm.key"
PUB_FILE = "farm.pub"
KEYS_JSON = "farm.json"


# DSSE --------------------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(pem: bytes, origin: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SigningError(f"{origin}: not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{origin}: not an Ed25519 key ({type(key).__name__})")
    return key


def dsse_sign(key: Ed25519PrivateKey, payload: bytes, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, payload))
    return {"payload": _b64(payload), "payloadType": payload_type,
            "signatures": [{"keyid": keyid_of(key.public_key()), "sig": _b64(sig)}]}


def dsse_verify(envelope: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> bytes:
    """The payload of `envelope` if one of its signatures verifies with one of `keys` (by key id)."""
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = envelope["payloadType"]
        signatures = envelope["signatures"]
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"not a DSSE envelope: {exc!r}") from exc
    if payload_type != PAYLOAD_TYPE:
        raise SignatureInvalid(f"payloadType is {payload_type!r}, expected {PAYLOAD_TYPE!r}")
    named = [s.get("keyid") for s in signatures]
    for s in signatures:
        key = keys.get(s.get("keyid", ""))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(s["sig"]), pae(payload_type, payload))
        except (InvalidSignature, ValueError, KeyError):
            raise SignatureInvalid(
                f"the signature by key {s['keyid'][:16]} does not verify: the statement or the signature was changed"
            ) from None
        return payload
    raise SignatureInvalid(f"signed by key(s) {', '.join(str(k)[:16] for k in named) or '(none)'}, "
                           f"not by the expected key {', '.join(k[:16] for k in keys) or '(none)'}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# PEP 740-shaped provenance object ------------------------------------------------------------------


def provenance_object(key: Ed25519PrivateKey, statement: bytes, key_url: str = "../../keys/farm.pub") -> dict[str, Any]:
    """Sign the canonical-JSON `statement` and wrap it as the served `.provenance` document."""
    env = dsse_sign(key, statement)
    kid = env["signatures"][0]["keyid"]
    return {
        "version": 1,
        "attestation_bundles": [{
            "publisher": {"kind": PUBLISHER_KIND, "claims": {"keyid": kid, "key_url": key_url}},
            "attestations": [{
                "version": 1,
                "verification_material": {"keyid": kid, "algorithm": "ed25519", "key_url": key_url},
                "envelope": {"statement": env["payload"], "signature": env["signatures"][0]["sig"]},
                "dsse_envelope": env,
            }],
        }],
    }


@dataclass(frozen=True)
class Verified:
    keyid: str
    statement: dict[str, Any]
    payload: bytes


def verify_provenance(obj: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> Verified:
    """Check the first attestation of `obj` (the farm writes exactly one) against `keys`.

    Both forms must agree: the DSSE envelope verifies, and PEP 740's `envelope` carries the same
    statement and signature (a document edited in one place and not the other is rejected).
    """
    try:
        att = obj["attestation_bundles"][0]["attestations"][0]
        dsse = att["dsse_envelope"]
        pair = att["envelope"]
    except (KeyError, IndexError, TypeError) as exc:
        raise SigningError(f"not a farm provenance object (missing {exc})") from exc
    if obj.get("version") != 1 or att.get("version") != 1:
        raise SigningError("provenance object version is not 1")
    payload = dsse_verify(dsse, keys)
    if pair.get("statement") != dsse.get("payload") or pair.get("signature") not in [s.get("sig") for s in dsse["signatures"]]:
        raise SignatureInvalid("the PEP 740 envelope and the DSSE envelope disagree: the document was changed")
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise SigningError(f"signed payload is not JSON: {exc}") from exc
    kid = next(s["keyid"] for s in dsse["signatures"] if s.get("keyid") in keys)
    return Verified(keyid=kid, statement=statement, payload=payload)


# Keys on disk ----------------------------------------------------------------------------------------


def key_dir(home: Path) -> Path:
    return Path(home) / "keys"


def ensure_key(home: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The farm's private key, made now if there is none; (key, created).

    Made under a temporary name and linked into place, so two processes racing here end up with
    the same key (the loser loads the winner's).
    """
    folder = key_dir(home)
    path = folder / KEY_FILE
    if path.is_file():
        return load_private(path), False
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    key = load_private(path)
    _write_if_changed(folder / PUB_FILE, public_pem(key.public_key()))
    return key, created


def load_private(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SigningError(f"{path}: the private key is readable by others (mode {mode:o}); chmod 600 it")
    return _load_private(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _load_private(path: Path, _mtime: int) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: cannot read the farm's private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def farm_public_key(home: Path) -> Ed25519PublicKey:
    path = key_dir(home) / PUB_FILE
    if not path.is_file():
        raise SigningError(f"no farm public key at {path}: run `farm init`")
    return load_public(path.read_bytes(), str(path))


def publish_public_key(key: Ed25519PublicKey, tree: Path) -> None:
    """Put `keys/farm.pub` and `keys/farm.json` into an index tree (unchanged files are not rewritten)."""
    folder = Path(tree) / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    pem = public_pem(key)
    _write_if_changed(folder / PUB_FILE, pem)
    kid = keyid_of(key)
    current = folder / KEYS_JSON
    try:
        known = json.loads(current.read_bytes())
        if any(k.get("keyid") == kid for k in known.get("keys", [])):
            return
    except (FileNotFoundError, ValueError):
        pass
    doc = {"keys": [{"keyid": kid, "algorithm": "ed25519", "url": PUB_FILE, "public_key_pem": pem.decode(),
                     "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}]}
    _write_if_changed(current, json.dumps(doc, indent=1).encode() + b"\n")


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
