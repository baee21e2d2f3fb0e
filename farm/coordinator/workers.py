"""The workers the coordinator knows of, and what each serves: the build matrix comes from them.

Every worker registers when it starts and again every `interval` seconds (farm.worker.heartbeat,
the `WorkerRegistration` message): its platform, its engine and the Pythons it builds for. The
coordinator keeps the newest registration of each worker as a small JSON file below the farm's
storage (`workers/`), written by atomic rename, so the API and a local CLI read the same view.
A worker is live while its next registration is due (three intervals of grace); one that said it
is leaving is not, but its last offer stays on record.

`Workers.offers(platform)` is what the planner asks: the union of the live workers' Pythons;
with none live, the last recorded offer of that platform; with none ever recorded (the first
submit right after `farm up`), what a worker of this host with these settings offers
(`Platform.offered_pythons`). `Workers.unserved(platform, python)` says why a job would wait
(None when some live worker serves it); `waiting_reasons` says it for queued jobs, at read time
(`farm status`, the API's job views, `submit --wait`, the dashboard).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.config import Settings
from farm.messages import WorkerRegistration
from farm.util.python_tags import sort_key as python_sort_key
from farm.worker.platforms import get_platform, host_platform_name

GRACE = 3  # registrations a worker may miss before it counts as gone
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


@dataclass(frozen=True, kw_only=True)
class Registered:
    worker: str
    platform: str
    engine: str
    pythons: dict[str, str | None]  # cp311 -> build image (None: the host's interpreter)
    seen_at: float  # unix time on the coordinator
    interval: float
    leaving: bool

    def live(self, now: float) -> bool:
        return not self.leaving and now - self.seen_at <= GRACE * self.interval


def folder(settings: Settings) -> Path:
    return settings.storage / "workers"


def record(message: WorkerRegistration, settings: Settings, *, now: float | None = None) -> Registered:
    """Keep `message` as the worker's newest registration (the coordinator's clock is the one that counts)."""
    entry = Registered(worker=message.worker, platform=message.platform, engine=message.engine,
                       pythons={p.python: p.image for p in message.pythons}, seen_at=time.time() if now is None else now,
                       interval=message.interval, leaving=message.leaving)
    dest = folder(settings)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{_UNSAFE.sub('_', message.worker)}--{_UNSAFE.sub('_', message.platform)}.json"
    previous = _read(path)
    if message.leaving and previous is not None:  # its offer stays on record, for planning while it is away
        entry = Registered(**{**previous.__dict__, "seen_at": entry.seen_at, "leaving": True})
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".reg-")
    with os.fdopen(fd, "w") as out:
        json.dump(entry.__dict__, out)
    os.replace(tmp, path)
    return entry


def _read(path: Path) -> Registered | None:
    try:
        return Registered(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


class Workers:
    """A snapshot of the registrations, read once (per submission, per status listing)."""

    def __init__(self, settings: Settings, *, now: float | None = None) -> None:
        self.settings = settings
        self.now = time.time() if now is None else now
        found = sorted(folder(settings).glob("*.json")) if folder(settings).is_dir() else []
        self.all = [r for p in found if (r := _read(p)) is not None]

    def live(self, platform: str | None = None) -> list[Registered]:
        return [r for r in self.all if r.live(self.now) and platform in (None, r.platform)]

    def live_platforms(self) -> list[str]:
        return sorted({r.platform for r in self.live()})

    def offers(self, platform: str) -> list[tuple[str, str | None]]:
        """(python, image) pairs for `platform`, oldest Python first (see the module's docstring)."""
        sources = self.live(platform) or sorted((r for r in self.all if r.platform == platform),
                                                key=lambda r: r.seen_at, reverse=True)[:1]
        union: dict[str, str | None] = {}
        for reg in sources:
            for python, image in reg.pythons.items():
                union.setdefault(python, image)
        if not sources:
            union = {o.python: o.image for o in get_platform(platform).offered_pythons(self.settings)}
        return sorted(union.items(), key=lambda item: python_sort_key(item[0]))

    def unserved(self, platform: str, python: str) -> str | None:
        """Why a job for `python` on `platform` would wait with nobody to build it; None if a live worker serves it.

        Before any worker of this farm has registered, the local worker of the embedded farm is
        assumed to serve this host's platform (it registers within seconds of `farm up`)."""
        live = self.live(platform)
        if any(python in r.pythons for r in live):
            return None
        if not self.all and platform == host_platform_name():
            if python in dict(self.offers(platform)):
                return None
            return (f"this host's worker does not build for {python} (it offers "
                    f"{', '.join(p for p, _ in self.offers(platform)) or 'nothing'})")
        if not live:
            gone = sorted((r for r in self.all if r.platform == platform), key=lambda r: r.seen_at)
            since = f" (the last one, {gone[-1].worker}, {'left' if gone[-1].leaving else 'was last seen'} " \
                    f"{_ago(self.now - gone[-1].seen_at)} ago)" if gone else ""
            return (f"no live worker serves {platform} {python}{since}; "
                    f"start one with `farm worker --platform {platform}`")
        offered = sorted({p for r in live for p in r.pythons}, key=python_sort_key)
        return (f"no live worker of {platform} builds for {python} (they offer {', '.join(offered) or 'nothing'}); "
                f"give a worker that Python (setting `pythons`, or an image that carries it)")


def waiting_reasons(jobs: Iterable[Any], settings: Settings | None = None, *,
                    workers: Workers | None = None) -> dict[int, str]:
    """Why each queued job among `jobs` (anything with id, state, platform and python: rows or Job
    objects) waits with nobody to take it, read from the registrations now, not when it was planned:
    job id -> the reason; jobs some live worker serves are left out. Registrations are read only
    when a queued job is among them."""
    queued = [j for j in jobs if str(getattr(j.state, "value", j.state)) == "queued"]
    if not queued:
        return {}
    if workers is None:
        from farm.config import get_settings

        workers = Workers(settings or get_settings())
    reasons: dict[tuple[str, str], str | None] = {}
    out = {}
    for job in queued:
        pair = (job.platform, job.python)
        if pair not in reasons:
            reasons[pair] = workers.unserved(*pair)
        if reasons[pair] is not None:
            out[job.id] = reasons[pair]
    return out


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def python_tag(selector: str) -> str:
    """`3.12`, `312`, `cp312` or `py3.12` -> `cp312` (the farm builds CPython); `3.14t` or `cp314t` ->
    `cp314t`, the free-threaded build."""
    value = selector.strip().lower()
    for prefix in ("cpython", "cp", "python", "py"):
        if value.startswith(prefix):
            value = value[len(prefix):]
            break
    value = value.replace(".", "")
    threaded = value.endswith("t")
    value = value.removesuffix("t")
    if not value.isdigit() or len(value) < 2:
        from farm.errors import ConfigError

        raise ConfigError(f"{selector!r} is no Python version (like 3.12, cp312, or 3.14t for a free-threaded build)")
    return f"cp{value}{'t' if threaded else ''}"


__all__ = ["Registered", "Workers", "python_sort_key", "python_tag", "record", "waiting_reasons"]
