"""The signed provenance document the farm serves beside every wheel: made here, and checked here.

Only the coordinator signs (it alone reads the private key, farm.provenance.keys); anyone with the
public key checks (`verify_provenance`, used by `farm verify`).

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

Beside it, `files/<project>/<wheel>.intoto.jsonl` (`intoto_bundle`): the same DSSE envelope alone,
as an in-toto bundle for in-toto tools.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from farm.errors import SignatureInvalid, SigningError
from farm.provenance.keys import keyid_of

PAYLOAD_TYPE = "application/vnd.in-toto+json"
PUBLISHER_KIND = "wheel-farm"
SUFFIX = ".provenance"  # the document's name beside the wheel in an index tree
INTOTO_SUFFIX = ".intoto.jsonl"  # the same signed statement as an in-toto bundle (one DSSE envelope per line)


# DSSE --------------------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


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


def keyid(obj: dict[str, Any]) -> str:
    """The key id a document made by `provenance_object` names."""
    return str(obj["attestation_bundles"][0]["attestations"][0]["verification_material"]["keyid"])


def intoto_bundle(obj: dict[str, Any]) -> bytes:
    """The served `<wheel>.intoto.jsonl` of a document made by `provenance_object`: an in-toto bundle
    (https://github.com/in-toto/attestation/blob/main/spec/v1/bundle.md), JSON Lines with one DSSE
    envelope per line; here exactly one, the document's `dsse_envelope`, on one line ending in a newline."""
    env = obj["attestation_bundles"][0]["attestations"][0]["dsse_envelope"]
    return json.dumps(env, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def document_bytes(obj: dict[str, Any]) -> bytes:
    """The bytes of a served `.provenance` document (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
