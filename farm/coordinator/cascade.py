"""Cascades: plan rebuilds of every published wheel built with a given input, in dependency order.

Each build records its inputs in its provenance statement (farm.provenance.statement.inputs): what
its build environment held (`name==version`), the recipe digest and the build image's digest; its
wheel's Requires-Dist is on the artifact row. `farm rebuild --affected-by SELECTOR` reads them:

- `NAME` or `NAME<SPEC>` (e.g. `cython==3.0.0`): built with that build requirement (a version the
  specifier admits), or depending on that project at runtime (a requirement that admits it);
- `recipe:NAME`: NAME's wheels built with a recipe digest other than the one its recipe has now;
- `image:REF`: built in that build image (its digest `sha256:...`, a prefix of 12 or more hex
  digits, or the image reference as configured).

A published target is one sdist's build id; its newest published build is the one judged. A target
with a build under way (queued or running, newer than what is published) is left out. What depends
at runtime on a project being rebuilt is rebuilt too, after it (`dependents=False`: only the
targets the selector names). The plan is in rounds: a round holds projects whose runtime
dependencies in the plan are all in earlier rounds (the members of a dependency cycle share one).
Each target is rebuilt through `farm submit --rebuild REASON` (farm.coordinator.submit): the next
PEP 427 build tag, beside the published files, which never change; the reason says what changed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from farm.config import Settings
from farm.db.models import Artifact, Job, Source
from farm.db.states import TERMINAL
from farm.errors import NotFound, UsageError
from farm.provenance.statement import BuildInputs, inputs

KINDS = ("recipe", "image")  # the prefixes a selector may have; no prefix: a project name
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_HEX = re.compile(r"^[0-9a-f]{12,}$")


@dataclass(frozen=True)
class Selector:
    kind: Literal["project", "recipe", "image"]
    value: str  # a normalized project name, or the image reference as given
    specifier: SpecifierSet | None = None  # project: the versions meant (None: any)
    text: str = ""

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> Selector:
    """`NAME`, `NAME==VERSION` (any specifier), `recipe:NAME` or `image:REF`; `UsageError` otherwise."""
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        rest = rest.strip()
        if not rest:
            raise UsageError(f"--affected-by {text!r}: {kind}: needs a value ({kind}:NAME)" if kind == "recipe"
                             else f"--affected-by {text!r}: image: needs an image digest or reference")
        if kind == "recipe":
            if not _NAME.fullmatch(rest):
                raise UsageError(f"--affected-by {text!r}: {rest!r} is not a project name")
            return Selector("recipe", canonicalize_name(rest), text=text)
        return Selector("image", rest, text=text)
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", kind) and "://" not in text and "@" not in text:
        raise UsageError(f"--affected-by {text!r}: unknown kind {kind!r}; give NAME, NAME==VERSION, "
                         f"recipe:NAME or image:REF")
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise UsageError(f"--affected-by {text!r}: give NAME, NAME==VERSION, recipe:NAME or image:REF ({exc})") from None
    if req.url or req.marker or req.extras:
        raise UsageError(f"--affected-by {text!r}: a project name with an optional version specifier only "
                         "(no extras, markers or URL)")
    return Selector("project", canonicalize_name(req.name), req.specifier or None, text=text)


@dataclass
class Published:
    """A published target (one sdist's build id) and its newest published build."""

    job_id: int
    source_id: int
    name: str
    version: str
    platform: str
    python: str
    build_id: str
    build_tag: str | None
    recipe_digest: str
    sdist_key: str
    wheels: list[str]
    requires: dict[str, list[Requirement]]  # runtime dependency (normalized name) -> its requirements
    inputs: BuildInputs

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} {self.build_id}"


@dataclass
class Planned:
    target: Published
    reason: str
    build_tag: str  # the tag its rebuild gets
    round: int = 0


@dataclass
class Plan:
    selector: Selector
    rounds: list[list[Planned]]
    under_way: list[str] = field(default_factory=list)  # targets left out: a build is under way
    note: str = ""  # why nothing is planned, when nothing is

    @property
    def items(self) -> list[Planned]:
        return [p for r in self.rounds for p in r]


def _requires(requires_dist: list[str], markers: dict[str, str] | None) -> dict[str, list[Requirement]]:
    """Runtime dependencies by normalized name; those only an extra asks for are left out, and markers
    are evaluated for the environment the wheel was verified in (when the statement records it)."""
    out: dict[str, list[Requirement]] = defaultdict(list)
    for text in requires_dist or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None:
            try:
                if markers is not None:
                    if not req.marker.evaluate({**markers, "extra": ""}):
                        continue
                elif "extra" in str(req.marker) and not req.marker.evaluate({"extra": ""}):
                    continue
            except Exception:  # an undefined marker variable: counted, as a superset only orders more
                pass
        out[canonicalize_name(req.name)].append(req)
    return dict(out)


def _markers(stmt: dict | None) -> dict[str, str] | None:
    try:
        for b in stmt["predicate"]["runDetails"]["byproducts"]:  # type: ignore[index]
            if b.get("name") == "verification":
                env = b["annotations"].get("markerEnvironment")
                return dict(env) if env else None
    except (KeyError, TypeError):
        return None
    return None


def published(session: Session) -> list[Published]:
    """Every published target's newest published build (not yanked, files not removed by gc)."""
    rows = session.execute(
        select(Artifact, Job, Source).join(Job, Artifact.job_id == Job.id).join(Source, Job.source_id == Source.id)
        .where(Artifact.removed_at.is_(None), Artifact.published_at.is_not(None), Artifact.yanked.is_(None))
        .options(selectinload(Artifact.provenance)).order_by(Job.id)).all()
    newest: dict[tuple[int, str], Published] = {}
    for art, job, source in rows:
        key = (job.source_id, job.build_id)
        current = newest.get(key)
        if current is not None and current.job_id == job.id:
            current.wheels.append(art.filename)
            continue
        if current is not None and current.job_id > job.id:
            continue
        stmt = art.provenance.statement if art.provenance is not None else None
        newest[key] = Published(
            job_id=job.id, source_id=job.source_id, name=source.name, version=source.version, platform=job.platform,
            python=job.python, build_id=job.build_id, build_tag=job.build_tag, recipe_digest=job.recipe_digest,
            sdist_key=source.storage_key, wheels=[art.filename],
            requires=_requires(list(art.requires_dist or []), _markers(stmt)), inputs=inputs(stmt))
    return sorted(newest.values(), key=lambda p: (p.name, p.version, p.build_id))


def current_recipe_digest(name: str, version: str, settings: Settings) -> str:
    """The recipe digest a build of `name` `version` gets now (farm.coordinator.plan)."""
    from farm.coordinator.plan import DEFAULTS_DIGEST
    from farm.recipes import find_recipe

    recipe = find_recipe(name, version, settings.all_recipe_dirs)
    return recipe.digest if recipe else DEFAULTS_DIGEST


def _short(digest: str | None) -> str:
    return (digest or "?").rpartition(":")[2][:12]


def _direct(selector: Selector, targets: list[Published], settings: Settings) -> tuple[dict[int, str], str]:
    """The targets the selector names (job id -> what changed), and why none, when none."""
    found: dict[int, str] = {}
    if selector.kind == "recipe":
        own = [t for t in targets if t.name == selector.value]
        if not own:
            raise NotFound(f"--affected-by {selector}: no published wheel of {selector.value} on this farm")
        digests: dict[str, str] = {}
        for t in own:
            now = digests.setdefault(t.version, current_recipe_digest(t.name, t.version, settings))
            if t.recipe_digest != now:
                found[t.job_id] = (f"recipe {selector.value} changed (built with recipe digest "
                                   f"{_short(t.recipe_digest)}, now {_short(now)})")
        return found, "" if found else f"every published wheel of {selector.value} was built with its current recipe"
    if selector.kind == "image":
        ref = selector.value
        bare = ref.rpartition("@")[2].rpartition(":")[2].lower() if ("@" in ref or ref.startswith("sha256:")) else ref.lower()
        for t in targets:
            digest = (t.inputs.image_digest or "").lower()
            if digest and (digest == ref.lower() or digest.rpartition(":")[2] == bare
                           or (_HEX.fullmatch(bare) and digest.rpartition(":")[2].startswith(bare))):
                found[t.job_id] = f"built in image {f'{t.inputs.image}@' if t.inputs.image else ''}{digest}"
            elif t.inputs.image is not None and t.inputs.image == ref:
                found[t.job_id] = f"built in image {ref} ({digest or 'digest not recorded'})"
        if not found:
            known = sorted({f"{t.inputs.image or '?'}@{t.inputs.image_digest}" for t in targets if t.inputs.image_digest})
            raise NotFound(f"--affected-by {selector}: no published wheel was built in that image"
                           + (f"; the images recorded: {', '.join(known)}" if known else
                              "; no published wheel records a build image (the native engine builds on the host)"))
        return found, ""
    name, spec = selector.value, selector.specifier
    seen_versions: set[str] = set()
    known = False
    for t in targets:
        version = t.inputs.build_environment.get(name)
        if version is not None:
            known = True
            seen_versions.add(version)
            if spec is None or spec.contains(version, prereleases=True):
                found[t.job_id] = f"built with {name}=={version} (a build requirement)"
                continue
        reqs = t.requires.get(name)
        if reqs:
            known = True
            pins = [s.version for s in spec or [] if s.operator in ("==", "===")]
            if not pins or any(r.specifier.contains(v, prereleases=True) for r in reqs for v in pins):
                found[t.job_id] = f"depends at runtime on {', '.join(sorted(str(r) for r in reqs))}"
        if t.name == name:
            known = True
    if not known:
        raise NotFound(f"--affected-by {selector}: no published wheel was built with {name} or depends on it "
                       "(no build environment, Requires-Dist or published project names it)")
    why = "" if found else (f"no published wheel was built with {selector} (built with {name} "
                            f"{', '.join(sorted(seen_versions))})" if seen_versions else
                            f"nothing published depends on {selector}")
    return found, why


def _rounds(names: set[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Rounds of `names`: each after the projects it depends on (`edges[a]`: what a depends on);
    the members of a cycle share a round (strongly connected components, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comp: dict[str, int] = {}
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in names:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp[w] = len(comps)
                members.add(w)
                if w == v:
                    break
            comps.append(members)

    for v in sorted(names):
        if v not in index:
            visit(v)
    depth: dict[int, int] = {}
    for c, members in enumerate(comps):  # Tarjan emits a component after those it depends on
        deps = {comp[w] for v in members for w in edges.get(v, ()) if w in names} - {c}
        depth[c] = 1 + max((depth[d] for d in deps), default=-1)
    out: list[set[str]] = [set() for _ in range(max(depth.values(), default=-1) + 1)]
    for c, members in enumerate(comps):
        out[depth[c]] |= members
    return out


def plan_rebuilds(session: Session, settings: Settings, selector: Selector | str, *, dependents: bool = True) -> Plan:
    """The rebuilds `selector` calls for, in rounds (nothing is recorded)."""
    from farm.coordinator.submit import _next_build_tag

    selector = parse_selector(selector) if isinstance(selector, str) else selector
    targets = published(session)
    direct, why = _direct(selector, targets, settings)
    by_job = {t.job_id: t for t in targets}
    reasons = dict(direct)
    if dependents:
        rebuilt = {by_job[j].name for j in reasons}
        grew = True
        while grew:
            grew = False
            for t in targets:
                if t.job_id in reasons:
                    continue
                hit = sorted(set(t.requires) & rebuilt - {t.name})
                if hit:
                    reasons[t.job_id] = f"depends at runtime on {', '.join(hit)}, rebuilt before it"
                    rebuilt.add(t.name)
                    grew = True
    # a target with a build under way (queued or running, newer than the one published) is left out
    under_way: list[str] = []
    if reasons:
        live = session.execute(select(Job.id, Job.source_id, Job.build_id).where(Job.state.notin_(list(TERMINAL)))).all()
        busy = {(s, b): i for i, s, b in live}
        for job_id in list(reasons):
            t = by_job[job_id]
            other = busy.get((t.source_id, t.build_id))
            if other is not None and other > t.job_id:
                under_way.append(f"{t.label}: job {other} is under way")
                del reasons[job_id]
    chosen = [by_job[j] for j in reasons]
    names = {t.name for t in chosen}
    edges = {n: set() for n in names}
    for t in chosen:
        edges[t.name] |= set(t.requires) - {t.name}
    order = {n: i for i, r in enumerate(_rounds(names, edges)) for n in r}
    rounds: list[list[Planned]] = [[] for _ in range(max(order.values(), default=-1) + 1)]
    sources = {s.id: s for s in session.scalars(select(Source).where(Source.id.in_({t.source_id for t in chosen})))}
    for t in sorted(chosen, key=lambda t: (order[t.name], t.name, t.version, t.build_id)):
        tag = _next_build_tag(session, sources[t.source_id], t.build_id)
        rounds[order[t.name]].append(Planned(target=t, reason=f"{reasons[t.job_id]} (farm rebuild --affected-by "
                                                               f"{selector})", build_tag=tag, round=order[t.name] + 1))
    note = "" if chosen else (why or ("every target it names has a build under way" if under_way else "nothing to rebuild"))
    return Plan(selector=selector, rounds=rounds, under_way=under_way, note=note)


@dataclass(frozen=True)
class Stale:
    """A project whose published wheels were built with another recipe digest than its recipe has now."""

    name: str
    wheels: list[str]

    @property
    def command(self) -> str:
        return f"farm rebuild --affected-by recipe:{self.name}"


def stale_recipes(session: Session, settings: Settings) -> list[Stale]:
    """The projects a recipe change left published wheels of, built with the older recipe."""
    digests: dict[tuple[str, str], str] = {}
    out: dict[str, list[str]] = defaultdict(list)
    for t in published(session):
        key = (t.name, t.version)
        if key not in digests:
            digests[key] = current_recipe_digest(t.name, t.version, settings)
        if t.recipe_digest != digests[key]:
            out[t.name] += t.wheels
    return [Stale(name, sorted(wheels)) for name, wheels in sorted(out.items())]


def requests(plan_round: list[Planned], storage_path) -> list[tuple[str, str, list[str], str]]:  # type: ignore[no-untyped-def]
    """One round's submissions: (sdist path, platform, pythons, reason), one per sdist, platform and
    reason; `storage_path(key)` gives the stored sdist's path."""
    grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for p in plan_round:
        grouped[(str(storage_path(p.target.sdist_key)), p.target.platform, p.reason)].append(p.target.python)
    return [(path, platform, sorted(set(pythons)), reason) for (path, platform, reason), pythons in grouped.items()]
