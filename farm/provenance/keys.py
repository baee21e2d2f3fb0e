"""The farm's signing key pair on disk, and its public half published with every index tree.

Ed25519 (the `cryptography` library), made by `farm init` (or by the coordinator's first publish
when `farm init` was not run)::

    $FARM_HOME/keys/farm.key     private key, PKCS#8 PEM, mode 0600 (folder 0700); only the coordinator reads it
    $FARM_HOME/keys/farm.pub     public key, SubjectPublicKeyInfo PEM
    <index tree>/keys/farm.pub   the same public key, published with every index tree
    <index tree>/keys/farm.json  {"keys": [{"keyid", "algorithm": "ed25519", "url": "farm.pub", "public_key_pem", "created"}]}

The key id is the hex sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from farm.errors import SigningError

KEY_FILE = "farm.key"
PUB_FILE = "farm.pub"
KEYS_JSON = "farm.json"


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
