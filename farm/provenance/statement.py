"""The provenance statement: an in-toto Statement v1 with an SLSA provenance v1 predicate.

It names the wheel by digest (subject), what it was built from (sdist and recipe digests), how
(engine, image, interpreter and tool versions, every command line, step timings) and whether it
passed verification (the test command and its result).

The worker writes it (farm.worker.attest) and stores its canonical JSON (`payload`) beside the
wheel, under `statement_key`. Those bytes are what the coordinator signs (farm.provenance.sign), what
the index serves unsigned as `<wheel>.provenance.json` and what `Provenance.digest` is the sha256 of.
Nothing here holds or reads a key: workers import this module.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from farm.messages import JobSpec
from farm.util.hashing import canonical_json, sha256_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:wheel-farm:buildtype:wheel:v1"
SUFFIX = ".provenance.json"  # the statement's name beside the wheel, in storage and in the index


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def statement(*, spec: JobSpec, wheel: Path, wheel_sha256: str | None = None, tools: dict[str, str],
              commands: list[str], timings: dict[str, float], started: float, finished: float,
              verification: dict[str, Any], image_digest: str | None, build_requires: list[str] | None,
              isolation: dict[str, Any] | None = None, worker: str | None = None,
              build_environment: list[str] | None = None,
              adjustments: dict[str, Any] | None = None) -> dict[str, Any]:
    dependencies: list[dict[str, Any]] = [
        {"name": spec.sdist.filename, "uri": f"farm-storage:{spec.sdist.storage_key}",
         "digest": {"sha256": spec.sdist.sha256}},
        {"name": f"recipe:{spec.recipe_name or '(defaults)'}", "digest": {"sha256": spec.recipe_digest}},
    ]
    if (override := spec.options.get("source")) is not None:  # a recipe's sdist, built instead of the submitted one
        dependencies.append({"name": "recipe-source", "uri": override.get("url") or f"file:{override.get('path')}",
                             "digest": {"sha256": override["sha256"]}})
    for i, patch in enumerate(spec.options.get("patches") or []):
        dependencies.append({"name": f"patch:{patch.get('path') or f'patches[{i}]'}", "digest": {"sha256": patch["sha256"]}})
    if image_digest:
        dependencies.append({"name": "build-image", "digest": _digest(image_digest)})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": wheel.name, "digest": {"sha256": wheel_sha256 or sha256_file(wheel)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {"name": spec.name, "version": spec.version, "filename": spec.sdist.filename,
                               "digest": {"sha256": spec.sdist.sha256}},
                    "recipe": {"name": spec.recipe_name, "digest": {"sha256": spec.recipe_digest}},
                    "target": {"buildId": spec.build_id, "platform": spec.platform, "python": spec.python,
                               "engine": spec.engine},
                },
                "internalParameters": {"options": spec.options, "buildRequires": build_requires,
                                       # what the build environment held (name==version): the versions
                                       # of the build requirements, as resolved
                                       **({"buildEnvironment": build_environment} if build_environment is not None else {}),
                                       "upstreamIndex": spec.upstream_index,
                                       # the sandbox package code ran in, and whether a recipe granted it network
                                       "isolation": isolation or {},
                                       **({"rebuild": {"buildTag": spec.build_tag, "reason": spec.rebuild_reason}}
                                          if spec.build_tag else {}),
                                       # what the farm changed to make it build (build requirements as of
                                       # the release, patches applied); absent when nothing was
                                       **({"adjustments": adjustments} if adjustments else {})},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": f"urn:wheel-farm:worker:{worker or socket.gethostname()}", "version": tools},
                "metadata": {"invocationId": f"job-{spec.job_id}-attempt-{spec.attempt}",
                             "startedOn": _iso(started), "finishedOn": _iso(finished)},
                "byproducts": [
                    {"name": "commands", "annotations": {"commands": commands}},
                    {"name": "timings", "annotations": {k: round(v, 3) for k, v in timings.items()}},
                    {"name": "verification", "annotations": verification},
                ],
            },
        },
    }


def _digest(image_digest: str) -> dict[str, str]:
    algo, _, value = image_digest.rpartition("@")[2].partition(":")
    return {algo: value} if value else {"sha256": image_digest}


# Its bytes, its place, its parts -----------------------------------------------------------------


def payload(stmt: dict[str, Any]) -> bytes:
    """The statement's canonical JSON (sorted keys, no spaces): the bytes signed, stored and served."""
    return canonical_json(stmt)


def storage_key(wheel_key: str) -> str:
    """Where the worker stores a wheel's statement: beside the wheel in the attempt's folder."""
    return wheel_key + SUFFIX


def subject(stmt: dict[str, Any]) -> tuple[str, str]:
    """The wheel the statement names: (file name, sha256). KeyError, IndexError or TypeError when it
    names none."""
    first = stmt["subject"][0]
    return first["name"], first["digest"]["sha256"]


def verification(stmt: dict[str, Any] | None) -> dict[str, Any]:
    """The verification result the statement records (the `verification` byproduct's annotations).
    KeyError, TypeError or StopIteration when it records none."""
    byproducts = stmt["predicate"]["runDetails"]["byproducts"]  # type: ignore[index]
    return next(b["annotations"] for b in byproducts if b.get("name") == "verification")


@dataclass(frozen=True)
class BuildInputs:
    """What a build was made with, read back from its statement (`farm rebuild --affected-by`)."""

    build_environment: dict[str, str]  # normalized project name -> version, what the build environment held
    recipe_name: str | None
    recipe_digest: str | None
    image_digest: str | None  # "sha256:..." of the build image (container engines)
    image: str | None  # the build image's reference as configured


def inputs(stmt: dict[str, Any] | None) -> BuildInputs:
    """The inputs a statement records. Statements written before `buildEnvironment` was recorded give
    what they have: the build requirements resolved as of a release, the wheels of a container
    build's wheelhouse, or the exact pins among the declared build requirements."""
    predicate = (stmt or {}).get("predicate") or {}
    definition = predicate.get("buildDefinition") or {}
    internal = definition.get("internalParameters") or {}
    pins: list[str] = internal.get("buildEnvironment") or []
    if not pins:
        pins = ((internal.get("adjustments") or {}).get("buildRequiresAsOf") or {}).get("resolved") or []
    env: dict[str, str] = {}
    for text in pins:
        name, sep, version = str(text).partition("==")
        if sep and name.strip() and version.strip():
            env[canonicalize_name(name.strip())] = version.strip()
    if not env:
        for filename in (internal.get("isolation") or {}).get("buildWheels") or []:
            try:
                name, version, _, _ = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                continue
            env[name] = str(version)
    if not env:
        for text in internal.get("buildRequires") or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            pinned = [s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version]
            if pinned:
                env[canonicalize_name(req.name)] = pinned[0]
    recipe = (definition.get("externalParameters") or {}).get("recipe") or {}
    image_digest = None
    for dep in definition.get("resolvedDependencies") or []:
        if dep.get("name") == "build-image" and dep.get("digest"):
            algo, value = next(iter(dep["digest"].items()))
            image_digest = f"{algo}:{value}"
    tools = (predicate.get("runDetails") or {}).get("builder", {}).get("version") or {}
    return BuildInputs(build_environment=env, recipe_name=recipe.get("name"),
                       recipe_digest=(recipe.get("digest") or {}).get("sha256"), image_digest=image_digest,
                       image=tools.get("image") if isinstance(tools, dict) else None)
