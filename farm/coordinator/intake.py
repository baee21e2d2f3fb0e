"""The intake policy: which upstream releases the farm takes in, checked before anything is built.

An organisation's index takes in what it decided to trust, and not a release in its first days,
when a hijacked account's upload is most likely still up (fromager's `--min-release-age`):

- `intake_deny`: requirements (`name` or `name<2`) whose releases are refused; checked first.
- `intake_allow`: when not empty, only releases matching one of its requirements are taken in.
- `min_release_age_days`: an upstream release younger than this is refused, and so is one whose
  upload time the index does not give (fail-closed). `min_release_age_exempt_pins` exempts the
  versions a person pinned exactly at submit (`NAME==VERSION`), not the dependencies they pull in.

Names compare normalized, versions by PEP 440. Each refusal names the rule and the release.
An sdist uploaded by a person is not an upstream release: the lists apply to it, the cool-down not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from farm.config import Settings
from farm.errors import ConfigError


@dataclass(frozen=True)
class Release:
    """What the policy looks at: a project's version, where it came from, and when it was uploaded."""

    name: str
    version: str
    upload_time: dt.datetime | None = None
    upstream: bool = True  # False: an sdist file a person submitted
    pinned: bool = False  # asked for exactly, by a person, at submit (NAME==VERSION)


@dataclass(frozen=True)
class IntakePolicy:
    allow: tuple[Requirement, ...] = ()
    deny: tuple[Requirement, ...] = ()
    min_release_age: dt.timedelta = dt.timedelta(0)
    exempt_pins: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakePolicy:
        return cls(allow=_requirements(settings.intake_allow, "intake_allow"),
                   deny=_requirements(settings.intake_deny, "intake_deny"),
                   min_release_age=dt.timedelta(days=settings.min_release_age_days),
                   exempt_pins=settings.min_release_age_exempt_pins)

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny or self.min_release_age)

    def refusal(self, release: Release, *, now: dt.datetime | None = None) -> str | None:
        """Why `release` may not be taken in, or None."""
        name = canonicalize_name(release.name)
        what = f"{name} {release.version}"
        try:
            version = Version(release.version)
        except InvalidVersion:
            return f"{what}: not a PEP 440 version, so the intake policy cannot be applied"
        for rule in self.deny:
            if canonicalize_name(rule.name) == name and rule.specifier.contains(version, prereleases=True):
                return f"{what} is refused by the intake policy (intake_deny: {str(rule)!r})"
        if self.allow and not any(canonicalize_name(r.name) == name and r.specifier.contains(version, prereleases=True)
                                  for r in self.allow):
            rules = [str(r) for r in self.allow if canonicalize_name(r.name) == name]
            why = f"the allowed versions are {', '.join(repr(r) for r in rules)}" if rules else "the project is not on it"
            return f"{what} is not on the intake allow-list ({why})"
        if not self.min_release_age or not release.upstream or (release.pinned and self.exempt_pins):
            return None
        age_days = f"{self.min_release_age.total_seconds() / 86400:g} days"
        if release.upload_time is None:
            return (f"{what}: the upstream index gives no upload time, and the intake policy takes in only releases "
                    f"older than {age_days} (min_release_age_days; fail-closed)")
        uploaded = release.upload_time if release.upload_time.tzinfo else release.upload_time.replace(tzinfo=dt.UTC)
        now = now or dt.datetime.now(dt.UTC)
        if now - uploaded < self.min_release_age:
            return (f"{what} was uploaded {uploaded:%Y-%m-%d %H:%M} UTC, less than {age_days} ago "
                    f"(min_release_age_days); it can be taken in from {uploaded + self.min_release_age:%Y-%m-%d %H:%M} UTC")
        return None

    def accepts(self, file: Any, *, pinned: bool = False) -> bool:
        """Whether an upstream file (`farm.index.upstream.UpstreamFile`) may be taken in."""
        return self.refusal(Release(file.project, file.version, upload_time=file.upload_time, pinned=pinned)) is None

    def admissible(self, versions: Iterable[Release], *, now: dt.datetime | None = None) -> list[Release]:
        """The releases the policy takes in (to pick the newest acceptable one for a range)."""
        return [r for r in versions if self.refusal(r, now=now) is None]


def _requirements(entries: Iterable[str], setting: str) -> tuple[Requirement, ...]:
    out, problems = [], []
    for entry in entries:
        try:
            req = Requirement(entry)
        except InvalidRequirement as exc:
            problems.append(f"{entry!r}: {exc}")
            continue
        if req.url or req.marker or req.extras:
            problems.append(f"{entry!r}: only a name and a version specifier are allowed")
            continue
        out.append(req)
    if problems:
        raise ConfigError(f"{setting}: " + "; ".join(problems))
    return tuple(out)
