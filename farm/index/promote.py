"""Yanking (PEP 592) and promotion between channels, with the promotion gate.

Both change the database first; the caller commits and then rewrites the project's pages with
`channels.regenerate` (only that project), so pages never show what was not committed.

Promotion of NAME==VERSION into a channel (above the first) adds every live, unyanked wheel of
that version that sits in a lower channel. It is refused, with every reason, when

- the version was not verified on each platform `channel_requirements[channel]` lists (an uploaded
  wheel, which has no job, was verified on none), or
- a wheel's Requires-Dist (markers evaluated for the wheel's own Python and platform, extras
  ignored) cannot be satisfied from the target channel: a wheel may not rise above the level of
  its dependencies. The refusal says where a matching dependency waits ("staging has 1.17.0"), or
- the file that would be copied into the channel (the stored wheel, else a tree's copy) does not
  have the sha256 the farm recorded when it published it (changed in storage or in a tree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from farm.config import Settings
from farm.db.models import Artifact, ChannelEntry, Job
from farm.errors import FarmError, NotFound, PromotionRefused
from farm.index.channels import DigestMismatch, add_entries, checked_source, layout
from farm.util.archive import is_project_name
from farm.worker.platforms import marker_environment as platform_markers


def parse_pin(text: str) -> tuple[str, str]:
    """NAME==VERSION -> (normalized name, version as written)."""
    name, sep, version = text.partition("==")
    if not sep or not name.strip() or not version.strip() or any(c in version for c in "<>=!~*,; "):
        raise FarmError(f"{text!r}: expected NAME==VERSION")
    if not is_project_name(name.strip()):  # ASCII only: "ſix" or a Kelvin-sign "K" name no project
        raise FarmError(f"{text!r}: {name.strip()!r} is not a valid project name (PEP 508, ASCII)")
    return canonicalize_name(name.strip()), version.strip()


def live_artifacts(session: Session, name: str, version: str) -> list[Artifact]:
    arts = list(session.scalars(
        select(Artifact).where(Artifact.name == name, Artifact.removed_at.is_(None))
        .options(selectinload(Artifact.channels), selectinload(Artifact.job))))
    try:
        wanted: Any = Version(version)
        return [a for a in arts if _same_version(a.version, wanted)]
    except InvalidVersion:
        return [a for a in arts if a.version == version]


def _same_version(v: str, wanted: Version) -> bool:
    try:
        return Version(v) == wanted
    except InvalidVersion:
        return False


# Yank ----------------------------------------------------------------------------------------------


def yank(session: Session, pin: str, *, reason: str | None, undo: bool = False) -> tuple[str, list[Artifact]]:
    """Mark every wheel of NAME==VERSION yanked (with `reason`, may be empty) or, with `undo`, not."""
    name, version = parse_pin(pin)
    arts = live_artifacts(session, name, version)
    if not arts:
        raise NotFound(f"the farm has no published wheel of {name}=={version}")
    for a in arts:
        a.yanked = None if undo else (reason or "")
    session.flush()
    return name, arts


def yank_and_rewrite(settings: Settings, pin: str, *, reason: str | None, undo: bool = False) -> list[str]:
    """`farm yank` (the CLI and the API): mark, rewrite the project's pages, say what changed."""
    from farm.db.session import session_scope
    from farm.index import channels

    with session_scope() as session:
        name, arts = yank(session, pin, reason=reason, undo=undo)
        files = [a.filename for a in arts]
    with session_scope() as session:
        channels.regenerate(session, settings, name)
    verb = "unyanked" if undo else "yanked" + (f" ({reason})" if reason else "")
    return [f"{verb}: {f}" for f in files]


# Promote -------------------------------------------------------------------------------------------


@dataclass
class Promotion:
    name: str
    version: str
    channel: str
    added: list[Artifact] = field(default_factory=list)
    already: list[Artifact] = field(default_factory=list)
    skipped_yanked: list[Artifact] = field(default_factory=list)


def promote(session: Session, settings: Settings, pin: str, to: str, *, by: str = "farm promote") -> Promotion:
    lay = layout(settings)
    name, version = parse_pin(pin)
    if to not in lay.channels:
        raise FarmError(f"{to!r} is not a channel (channels: {', '.join(lay.channels)})")
    level = lay.channels.index(to)
    if level == 0:
        raise FarmError(f"{to!r} is the first channel: builds are published there, nothing is promoted into it")
    below = set(lay.channels[:level])
    arts = live_artifacts(session, name, version)
    result = Promotion(name=name, version=version, channel=to)
    result.already = [a for a in arts if any(e.channel == to for e in a.channels)]
    candidates = [a for a in arts if a not in result.already and any(e.channel in below for e in a.channels)]
    result.skipped_yanked = [a for a in candidates if a.yanked is not None]
    candidates = [a for a in candidates if a.yanked is None]
    if not candidates:
        if result.already:
            return result
        if not arts:
            raise NotFound(f"the farm has no published wheel of {name}=={version}")
        raise PromotionRefused(f"{name} {version}", to, [
            "every wheel of it is yanked" if result.skipped_yanked else f"none of its wheels is in {', '.join(sorted(below))}"])
    reasons = gate(session, settings, to, candidates + result.already)
    for a in candidates:  # what regenerate will copy into `to`'s trees must be the published bytes
        try:
            if checked_source(lay, a, f"promote it to {to}") is None:
                reasons.append(f"{a.filename}: no copy of the file is left (removed by gc?)")
        except DigestMismatch as exc:
            reasons.append(str(exc))
    if reasons:
        raise PromotionRefused(f"{name} {version}", to, reasons)
    result.added = add_entries(session, candidates, to, by)
    return result


def promote_and_publish(settings: Settings, pin: str, to: str, *, by: str, upload: bool = True) -> list[str]:
    """`farm promote` (the CLI and the API): through the gate into `to`, the pages of every tree that
    contains `to` rewritten, then (unless not `upload`) uploaded to the targets bound to `to`."""
    from farm.db.session import session_scope
    from farm.index import channels, targets

    with session_scope() as session:
        result = promote(session, settings, pin, to, by=by)
        added_ids = [a.id for a in result.added]
        lines = [f"already in {result.channel}: {a.filename}" for a in result.already]
        lines += [f"yanked, not promoted: {a.filename}" for a in result.skipped_yanked]
        added = [a.filename for a in result.added]
    if not added_ids:
        return lines
    with session_scope() as session:
        lay = channels.layout(settings)
        channels.regenerate(session, settings, result.name, lay.containing(result.channel))
    lines += [f"promoted to {result.channel}: {f}" for f in added]
    if upload:
        with session_scope() as session:
            arts = [a for a in (session.get(Artifact, i) for i in added_ids) if a is not None]
            for up in targets.on_promote(session, settings, result.channel, arts):
                lines.append(f"{up.status} to {up.target}: {up.filename} ({up.seconds:.2f} s)")
    return lines


def gate(session: Session, settings: Settings, to: str, arts: list[Artifact]) -> list[str]:
    """Every reason `arts` (the wheels of one version) may not be in channel `to`; empty: they may."""
    reasons: list[str] = []
    required = settings.channel_requirements.get(to, [])
    # An uploaded wheel (no job) was neither built nor verified here: it counts for no platform.
    verified = sorted({a.job.platform for a in arts if a.verified and a.job is not None})
    missing = [p for p in required if p not in verified]
    if missing:
        uploaded = sorted({a.uploaded_by or "?" for a in arts if a.job is None})
        also = f"; uploaded by {', '.join(uploaded)}, not built or verified by the farm" if uploaded else ""
        reasons.append(f"not verified on {', '.join(missing)} (required for {to}; verified on: "
                       f"{', '.join(verified) or 'nothing'}{also})")
    lay = layout(settings)
    lower = [c for c in lay.channels if c != to]
    seen: set[str] = set()
    for a in arts:
        env = marker_environment(a.job)
        for text in a.requires_dist or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                reasons.append(f"{a.filename}: unreadable Requires-Dist {text!r}")
                continue
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep == a.name or f"{dep}{req.specifier}" in seen:
                continue
            seen.add(f"{dep}{req.specifier}")
            if _satisfied(session, to, dep, req):
                continue
            where = [f"{c} has {v}" for c in lower if (v := _best(session, c, dep, req))]
            hint = f" ({'; '.join(where)}: promote it first)" if where else ""
            reasons.append(f"requires {req.name}{req.specifier or ''}, which {to} does not have{hint}")
    return reasons


def _candidates(session: Session, channel: str, dep: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).join(ChannelEntry).where(
        ChannelEntry.channel == channel, Artifact.name == dep, Artifact.removed_at.is_(None),
        Artifact.yanked.is_(None))))


def _matches(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _satisfied(session: Session, channel: str, dep: str, req: Requirement) -> bool:
    return any(_matches(req, a.version) for a in _candidates(session, channel, dep))


def _best(session: Session, channel: str, dep: str, req: Requirement) -> str | None:
    versions = sorted({Version(a.version) for a in _candidates(session, channel, dep) if _matches(req, a.version)})
    return str(versions[-1]) if versions else None


def marker_environment(job: Job | None) -> dict[str, str]:
    """PEP 508 marker values for the Python and platform a wheel was built and verified for."""
    if job is None:
        return dict(default_environment())
    return platform_markers(job.platform or "", job.python or "")
