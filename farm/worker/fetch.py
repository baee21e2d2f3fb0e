"""Step fetch: bring the sdist from storage and check its digest; it is unpacked (safely) when first needed."""

from __future__ import annotations

from pathlib import Path

from farm.config import Settings
from farm.errors import InfrastructureFault, NotFound
from farm.messages import JobSpec
from farm.storage import Storage
from farm.util.archive import Limits
from farm.util.hashing import sha256_file
from farm.worker.source import SdistSource


def fetch(spec: JobSpec, *, work: Path, storage: Storage, settings: Settings) -> SdistSource:
    """The sdist file inside `work`, its tree to be unpacked into `work/src` on first use."""
    dest = work / spec.sdist.filename
    try:
        storage.get_file(spec.sdist.storage_key, dest)
    except NotFound as exc:
        raise InfrastructureFault("fetch", str(exc)) from exc
    digest = sha256_file(dest)
    if digest != spec.sdist.sha256:
        raise InfrastructureFault("fetch", f"{spec.sdist.filename}: sha256 {digest} != recorded {spec.sdist.sha256}")
    return SdistSource(dest, work / "src", Limits.from_settings(settings))
