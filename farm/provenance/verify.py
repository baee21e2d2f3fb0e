"""`farm verify`: check a wheel against its signed provenance (farm.provenance.sign).

Four checks, each with a reason a person can act on:

signature     the `.provenance` document's DSSE signature verifies with the farm's public key (or
              the key given with --key); the PEP 740 and DSSE forms in it agree
subject       the signed statement names this wheel: file name, and sha256 of the file's bytes
sdist         the sdist the statement names is one the farm recorded (Source, by sha256, with the same
              name and version), and when it came from an upstream index, that index still lists the
              file with the same sha256 (skipped with --offline)
verification  the statement records that the wheel passed the farm's verification (install + tests)

When the signature fails nothing in the statement is trusted, so the other checks are not run.

`farm verify NAME==VERSION` checks every served copy: each index tree (channel or virtual index)
that lists the file or that the database says lists it, each copy with its own tree's `.provenance`
document, and adds a fifth check:

record        the file's sha256 and the sha256 its tree's page lists are the ones the farm recorded
              when it published the wheel, and the page lists the file wherever the database puts it
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, Provenance, Source
from farm.errors import FarmError, NotFound, SigningError, UpstreamError
from farm.provenance import keys as farm_keys
from farm.provenance import sign, statement
from farm.util.hashing import sha256_file


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped
    detail: str


@dataclass
class Report:
    wheel: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"wheel": self.wheel, "ok": self.ok, "checks": [c.__dict__ for c in self.checks]}


def load_keys(settings: Settings, key: Path | None) -> dict[str, Ed25519PublicKey]:
    if key is not None:
        pub = farm_keys.load_public(Path(key).read_bytes(), str(key))
    else:
        try:
            pub = farm_keys.farm_public_key(settings.home)
        except SigningError:
            published = settings.index / "keys" / farm_keys.PUB_FILE
            if not published.is_file():
                raise
            pub = farm_keys.load_public(published.read_bytes(), str(published))
    return {farm_keys.keyid_of(pub): pub}


def find_provenance(settings: Settings, session: Session | None, wheel: Path) -> tuple[dict[str, Any], str]:
    """The provenance document for `wheel` and where it came from: beside it, in the index, in the DB."""
    candidates = [wheel.with_name(wheel.name + sign.SUFFIX)]
    try:
        project = canonicalize_name(parse_wheel_filename(wheel.name)[0])
    except InvalidWheelFilename:
        project = None
    if project is not None:
        candidates.append(settings.index / "files" / project / f"{wheel.name}{sign.SUFFIX}")
        candidates += sorted(settings.index.glob(f"*/files/{project}/{wheel.name}{sign.SUFFIX}"))
    for path in candidates:
        if path.is_file():
            return _read_json(path), str(path)
    if session is not None:
        envelope = session.scalar(select(Provenance.envelope).join(Artifact)
                                  .where(Artifact.filename == wheel.name, Provenance.envelope.is_not(None))
                                  .order_by(Artifact.id.desc()).limit(1))
        if envelope is not None:
            return envelope, "the farm's database"
    raise NotFound(f"no provenance for {wheel.name} (looked beside it, in {settings.index}, in the database)")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise SigningError(f"{path}: not JSON: {exc}") from exc


def verify_wheel(wheel: Path, *, settings: Settings, session: Session | None, keys: dict[str, Ed25519PublicKey],
                 provenance: Path | None = None, offline: bool = False) -> Report:
    wheel = Path(wheel)
    report = Report(wheel=wheel.name)
    if not wheel.is_file():
        report.checks.append(Check("wheel", False, f"{wheel}: no such file"))
        return report
    try:
        doc, origin = (_read_json(provenance), str(provenance)) if provenance else find_provenance(settings, session, wheel)
        verified = sign.verify_provenance(doc, keys)
    except FarmError as exc:
        report.checks.append(Check("signature", False, str(exc)))
        return report
    report.checks.append(Check("signature", True, f"signed by the farm key {verified.keyid[:16]} (ed25519, DSSE); "
                                                  f"provenance from {origin}"))
    stmt = verified.statement
    report.checks.append(_check_subject(wheel, stmt))
    report.checks.append(_check_sdist(stmt, settings=settings, session=session, offline=offline))
    report.checks.append(_check_verification(stmt))
    return report


def _check_subject(wheel: Path, stmt: dict[str, Any]) -> Check:
    try:
        name, digest = statement.subject(stmt)
    except (KeyError, IndexError, TypeError):
        return Check("subject", False, "the signed statement has no subject with a sha256 digest")
    actual = sha256_file(wheel)
    if actual != digest:
        return Check("subject", False, f"the wheel's sha256 {actual} is not the signed subject digest {digest}: "
                                       "the wheel was changed after it was signed (or is another build)")
    if name != wheel.name:
        return Check("subject", False, f"the signed subject is {name!r}, not {wheel.name!r}")
    return Check("subject", True, f"sha256 {actual} matches the signed subject")


def _check_sdist(stmt: dict[str, Any], *, settings: Settings, session: Session | None, offline: bool) -> Check:
    try:
        build = stmt["predicate"]["buildDefinition"]
        src = build["externalParameters"]["source"]
        name, version, filename, digest = src["name"], src["version"], src["filename"], src["digest"]["sha256"]
    except (KeyError, TypeError):
        return Check("sdist", False, "the signed statement does not name its sdist (name, version, digest)")
    if session is None:
        return Check("sdist", None, f"not checked: no database to compare {filename} (sha256 {digest[:16]}) with")
    source = session.scalar(select(Source).where(Source.sha256 == digest))
    if source is None:
        return Check("sdist", False, f"the farm has no record of an sdist with sha256 {digest} ({filename})")
    if source.name != canonicalize_name(name) or source.version != version:
        return Check("sdist", False, f"the statement names {name} {version}, the farm's record of sha256 {digest[:16]} "
                                     f"is {source.name} {source.version}")
    if not source.upstream_url:
        return Check("sdist", True, f"{filename} sha256 {digest[:16]} is the farm's record #{source.id} "
                                    "(submitted as a file, no upstream record)")
    if offline:
        return Check("sdist", True, f"{filename} sha256 {digest[:16]} is the farm's record #{source.id}; "
                                    "upstream not asked (--offline)")
    upstream = (build.get("internalParameters") or {}).get("upstreamIndex") or settings.upstream_index
    try:
        listed = _upstream_digest(upstream, source.name, source.filename)
    except UpstreamError as exc:
        return Check("sdist", False, f"cannot check {source.filename} upstream: {exc}")
    if listed != digest:
        return Check("sdist", False, f"{upstream} lists {source.filename} with sha256 {listed}, the signed statement "
                                     f"has {digest}")
    return Check("sdist", True, f"{filename} sha256 {digest[:16]} matches the farm's record #{source.id} and {upstream}")


def _upstream_digest(index_url: str, name: str, filename: str) -> str:
    from farm.index.upstream import Upstream

    with Upstream(index_url) as up:
        for f in up.project_files(name):
            if f.filename == filename:
                if not f.sha256:
                    raise UpstreamError(f"{index_url} lists {filename} without a sha256")
                return f.sha256.lower()
    raise UpstreamError(f"{index_url} no longer lists {filename}")


def _check_verification(stmt: dict[str, Any]) -> Check:
    try:
        record = statement.verification(stmt)
    except (KeyError, TypeError, StopIteration):
        return Check("verification", False, "the signed statement records no verification result")
    if record.get("passed") is not True:
        return Check("verification", False, "the recorded verification did not pass: "
                                            f"{str(record.get('detail') or record)[-300:]}")
    platform = (stmt["predicate"]["buildDefinition"].get("externalParameters", {}).get("target") or {}).get("platform")
    what = ", ".join(f"{k} {v}" for k, v in record.items() if k in ("imports", "testCommand") and v)
    return Check("verification", True, f"passed on {platform or '?'}" + (f" ({what})" if what else ""))


@dataclass
class ServedCopy:
    """One copy of a published wheel: in an index tree (listed there, or expected there by the
    database), or, for a wheel in no tree, the stored copy (`tree` None)."""

    artifact: Artifact
    tree: str | None
    path: Path
    listed_sha256: str | None = None  # what the tree's page lists for the file; None: not listed
    expected: bool = True  # the database puts the file in this tree


def served_copies(settings: Settings, session: Session, name: str, version: str) -> list[ServedCopy]:
    """Every served copy of every live wheel of NAME==VERSION (versions compared as PEP 440)."""
    from farm.index import channels, simple
    from farm.index.promote import live_artifacts
    from farm.storage import get_storage

    project = canonicalize_name(name)
    arts = sorted(live_artifacts(session, project, version), key=lambda a: a.filename)
    if not arts:
        raise NotFound(f"the farm has no published wheel of {name}=={version}")
    lay = channels.layout(settings)
    by_channel, _known = channels._rows(session, project)
    copies: list[ServedCopy] = []
    for art in arts:
        found = []
        for t in lay.trees():
            row = channels.tree_rows(lay, t, by_channel).get(art.filename)
            expected = row is not None and row.artifact.id == art.id
            listed = next((f.sha256 for f in simple.read_project(lay.tree(t), project) if f.filename == art.filename),
                          None)
            if expected or listed is not None:
                found.append(ServedCopy(art, t, lay.tree(t) / "files" / project / art.filename, listed, expected))
        if not found:  # in no tree (left every channel, not removed yet): the stored copy
            stored = get_storage().local_path(art.storage_key)
            found.append(ServedCopy(art, None, stored if stored is not None else Path(art.filename)))
        copies += found
    return copies


def check_record(copy: ServedCopy) -> Check:
    """The copy's bytes and its page entry against the farm's record of the artifact."""
    art, where = copy.artifact, f"in {copy.tree}" if copy.tree else "in storage"
    problems = []
    if copy.tree is not None and copy.listed_sha256 is None:
        problems.append(f"the database puts it in {copy.tree}, but {copy.tree}'s page does not list it")
    elif copy.listed_sha256 is not None and copy.listed_sha256 != art.sha256:
        problems.append(f"{copy.tree}'s page lists sha256 {copy.listed_sha256}, the farm recorded {art.sha256}")
    if copy.tree is not None and not copy.expected:
        problems.append(f"{copy.tree}'s page lists it, but the database does not put it in {copy.tree}")
    if not copy.path.is_file():
        problems.append(f"the file {copy.path} is missing")
    else:
        actual = sha256_file(copy.path)
        if actual != art.sha256:
            problems.append(f"the served file {copy.path} has sha256 {actual}, but the farm recorded {art.sha256} "
                            "when it published it: the file was changed after publishing")
    if problems:
        return Check("record", False, "; ".join(problems))
    return Check("record", True, f"sha256 {art.sha256[:16]} {where} is the farm's record (artifact #{art.id})")


def verify_copy(copy: ServedCopy, *, settings: Settings, session: Session, keys: dict[str, Ed25519PublicKey],
                provenance: Path | None = None, offline: bool = False) -> Report:
    """`verify_wheel` on one served copy (with its own tree's provenance document unless `provenance`
    names one), plus `check_record`."""
    report = verify_wheel(copy.path, settings=settings, session=session, keys=keys, provenance=provenance,
                          offline=offline)
    report.wheel = f"{copy.artifact.filename} ({copy.tree or 'stored copy'}: {copy.path})"
    report.checks.append(check_record(copy))
    return report
