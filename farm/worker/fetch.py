"""Step fetch: bring the sdist from storage, check its digest, unpack it safely."""

from __future__ import annotations

from pathlib import Path

from farm.config import Settings
from farm.errors import InfrastructureFault, NotFound
from farm.messages import JobSpec
from farm.storage import Storage
from farm.util.archive import Limits, extract_sdist
from farm.util.hashing import sha256_file


def fetch(spec: JobSpec, *, work: Path, storage: Storage, settings: Settings) -> tuple[Path, Path]:
    """Return (sdist file, unpacked source tree), both inside `work`."""
    dest = work / spec.sdist.filename
    try:
        storage.get_file(spec.sdist.storage_key, dest)
    except NotFound as exc:
        raise InfrastructureFault("fetch", str(exc)) from exc
    digest = sha256_file(dest)
    if digest != spec.sdist.sha256:
        raise InfrastructureFault("fetch", f"{spec.sdist.filename}: sha256 {digest} != recorded {spec.sdist.sha256}")
    source = extract_sdist(dest, work / "src", Limits.from_settings(settings))
    return dest, source
