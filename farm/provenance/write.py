"""Publishing a wheel's provenance (coordinator only: it signs with the farm's key).

For a wheel being published into the first channel's tree, beside the wheel and before the page
that lists it appears:

    files/<project>/<wheel>.provenance.json   the worker's statement, unsigned: its canonical JSON
    files/<project>/<wheel>.provenance        the signed document (farm.provenance.sign)
    files/<project>/<wheel>.intoto.jsonl      its DSSE envelope alone, as an in-toto bundle

and the `provenance` row: the statement, the sha256 of its canonical JSON, where the worker stored
it, and (once the page is written) the signed document and the key id. Index trees that copy the
wheel later (channels, virtual indexes) copy these files, or write the document again from the row.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from farm.config import Settings
from farm.db.models import Artifact, Provenance
from farm.index import channels, simple
from farm.provenance import keys, sign, statement
from farm.util.hashing import sha256_bytes


def row(art: Artifact, stmt: dict[str, Any], storage_key: str) -> Provenance:
    """The provenance row of a newly recorded artifact (not signed yet)."""
    return Provenance(artifact=art, statement=stmt, digest=sha256_bytes(statement.payload(stmt)),
                      storage_key=storage_key)


def signed(settings: Settings, payload: bytes) -> tuple[dict[str, Any], str]:
    """The signed document for a statement's canonical JSON, and the key id. Makes the farm's key
    when there is none yet (then publishes its public half into every tree)."""
    key, created = keys.ensure_key(settings.home)
    if created:
        channels.ensure_trees(settings)  # publishes the new public key into every tree
    obj = sign.provenance_object(key, payload)
    return obj, sign.keyid(obj)


def beside(settings: Settings, wheel_target: Path, stmt: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The unsigned statement and then its signed document beside `wheel_target` (the wheel's place
    in a tree, before the wheel is there); the document and the key id."""
    payload = statement.payload(stmt)
    folder = wheel_target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{wheel_target.name}{statement.SUFFIX}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(payload)
    tmp.replace(folder / f"{wheel_target.name}{statement.SUFFIX}")
    obj, kid = signed(settings, payload)
    document(wheel_target, obj)
    return obj, kid


def document(wheel_target: Path, obj: dict[str, Any]) -> None:
    """`<wheel>.intoto.jsonl` and `<wheel>.provenance` beside the (future) wheel, each written atomically."""
    simple._atomic_write(wheel_target.with_name(wheel_target.name + sign.INTOTO_SUFFIX), sign.intoto_bundle(obj))
    simple._atomic_write(wheel_target.with_name(wheel_target.name + sign.SUFFIX), sign.document_bytes(obj))
