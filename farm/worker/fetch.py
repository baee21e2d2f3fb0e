"""Step fetch: bring the sdist from storage and check its digest; it is unpacked (safely) when first needed.

A recipe's `source` replaces it: downloaded from its URL (or read from its path), checked against the
recipe's sha256 and against the job's project and version. A recipe's `patches` are applied to the
unpacked tree here, before any build step sees it (farm.worker.patches).
"""

from __future__ import annotations

import io
import shutil
import urllib.parse
from pathlib import Path
from typing import TextIO

import httpx

from farm.config import Settings
from farm.errors import InfrastructureFault, NotFound, PackageFailure
from farm.messages import JobSpec
from farm.recipes.schema import Options, Source
from farm.storage import Storage
from farm.util.archive import Limits, SdistError
from farm.util.hashing import sha256_file
from farm.worker.source import SdistSource


def fetch(spec: JobSpec, *, work: Path, storage: Storage, settings: Settings, log: TextIO | None = None) -> SdistSource:
    """The sdist file inside `work` (the recipe's `source` if it has one), its tree to be unpacked into
    `work/src` on first use; the recipe's patches applied."""
    options = Options.model_validate(spec.options)
    limits = Limits.from_settings(settings)
    if options.source is not None:
        dest = _override(options.source, work, limits, log)
        source = SdistSource(dest, work / "src", limits, expect=(spec.name, spec.version))
    else:
        dest = work / spec.sdist.filename
        try:
            storage.get_file(spec.sdist.storage_key, dest)
        except NotFound as exc:
            raise InfrastructureFault("fetch", str(exc)) from exc
        digest = sha256_file(dest)
        if digest != spec.sdist.sha256:
            raise InfrastructureFault("fetch", f"{spec.sdist.filename}: sha256 {digest} != recorded {spec.sdist.sha256}")
        source = SdistSource(dest, work / "src", limits)
    if options.patches:
        try:
            source.apply_patches(options.patches, log or io.StringIO())
        except SdistError as exc:
            raise PackageFailure("fetch", str(exc)) from exc
    return source


def _override(src: Source, work: Path, limits: Limits, log: TextIO | None) -> Path:
    """The recipe's sdist in `work/override/`, its digest checked (a mismatch is the recipe's failure)."""
    folder = work / "override"
    folder.mkdir(parents=True, exist_ok=True)
    where = src.url or src.path or ""
    name = Path(urllib.parse.urlparse(where).path if src.url else where).name
    if not name.endswith((".tar.gz", ".zip")):
        raise PackageFailure("fetch", f"the recipe's source {where} is not an sdist (.tar.gz or .zip)")
    dest = folder / name
    if src.path is not None or where.startswith("file:"):
        local = Path(src.path) if src.path is not None else Path(urllib.parse.unquote(urllib.parse.urlparse(where).path))
        try:
            shutil.copyfile(local, dest)
        except OSError as exc:
            raise InfrastructureFault("fetch", f"the recipe's source {local} cannot be read on this worker: {exc}") from exc
    else:
        try:
            with httpx.stream("GET", where, follow_redirects=True, timeout=60) as resp:
                if resp.status_code in (404, 410):
                    raise PackageFailure("fetch", f"the recipe's source {where}: HTTP {resp.status_code}")
                resp.raise_for_status()
                with open(dest, "wb") as f:
                    size = 0
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > limits.max_bytes:
                            raise PackageFailure("fetch", f"the recipe's source {where} is over {limits.max_bytes} bytes")
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise InfrastructureFault("fetch", f"the recipe's source {where}: {type(exc).__name__}: {exc}") from exc
    digest = sha256_file(dest)
    if digest != src.sha256:
        raise PackageFailure("fetch", f"the recipe's source {where} has sha256 {digest}, the recipe says {src.sha256}")
    if log is not None:
        log.write(f"source from the recipe: {where} (sha256 {digest})\n")
    return dest

