"""Digests, the way the farm and the standards spell them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(data: Any) -> bytes:
    """A stable byte form of JSON data, used for digests of recipes and cache keys."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def digest_json(data: Any) -> str:
    return sha256_bytes(canonical_json(data))
