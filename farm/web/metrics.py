"""`/metrics` for Prometheus, read from the database (the truth; it holds for every process of a farm).

What each scrape costs:
- `farm_jobs{state,platform}`: jobs that have not ended by a GROUP BY through the state index (a
  small set); ended jobs by the same GROUP BY over the `(platform, state, id)` index, at most once a
  minute (`ENDED_TTL`), or at once when steps, wheels or jobs were added since the last scrape.
- `farm_queue_depth{platform}`, `farm_workers_alive{platform}`: from the jobs that have not ended.
- Histograms and counters (`farm_step_duration_seconds`, `farm_publish_latency_seconds`,
  `farm_submit_to_publish_seconds`, `farm_jobs_submitted_total`, `farm_cache_hits_total`) count what
  happened since this API process first answered `/metrics`: each scrape reads only the rows added
  since the scrape before, by primary-key range (steps from the oldest one still running). Like any
  Prometheus counter they restart at zero with the process: graph them with rate() or increase().
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.config import Settings
from farm.db.models import Artifact, Job, Step
from farm.db.session import session_scope
from farm.db.states import JobState
from farm.web.queries import ACTIVE, ENDED, WORKING, now

router = APIRouter(tags=["metrics"])
ENDED_TTL = 60.0
STALE_STEP_HOURS = 24.0  # a step still "running" after this long no longer holds back the scan
STEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PUBLISH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
E2E_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


@dataclass
class _Hist:
    buckets: tuple[float, ...]
    counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        for i, b in enumerate(self.buckets):
            if value <= b:
                counts[i] += 1
        counts[-1] += 1
        self.sums[labels] += value

    def family(self, name: str, doc: str, labelnames: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labelnames)
        for labels, counts in sorted(self.counts.items()):
            pairs = [(_le(b), c) for b, c in zip(self.buckets, counts)] + [("+Inf", counts[-1])]
            fam.add_metric(list(labels), pairs, self.sums[labels])
        return fam


def _le(b: float) -> str:
    return str(float(b))


class FarmCollector:
    """Collects on scrape; keeps the marks of the incremental scans and the cached ended-job counts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.step_low: int | None = None  # lowest step id not yet counted or known final
        self.step_seen: set[int] = set()  # counted ids >= step_low
        self.artifact_low: int | None = None
        self.job_low: int | None = None
        self.steps = _Hist(STEP_BUCKETS)
        self.publish = _Hist(PUBLISH_BUCKETS)
        self.e2e = _Hist(E2E_BUCKETS)
        self.submitted: dict[str, int] = defaultdict(int)
        self.cache_hits: dict[str, int] = defaultdict(int)
        self.ended: dict[tuple[str, str], int] = {}
        self.ended_at = 0.0
        self.active_seen: dict[tuple[str, str], int] | None = None

    def collect(self) -> Iterator[Metric]:
        with self.lock, session_scope() as session:
            active = dict(((s, p), n) for s, p, n in session.execute(
                select(Job.state, Job.platform, func.count()).where(Job.state.in_(ACTIVE))
                .group_by(Job.state, Job.platform)))
            alive = self._alive(session)
            marks = (self.step_low, self.artifact_low, self.job_low)
            self._scan_steps(session)
            self._scan_artifacts(session)
            self._scan_jobs(session)
            # Ended counts are read again once a minute, and at once when something happened since the
            # last scrape (steps finished, wheels published, jobs planned, the unended jobs changed):
            # a quiet farm costs nothing.
            moved = marks != (self.step_low, self.artifact_low, self.job_low) or active != self.active_seen
            self.active_seen = active
            if moved or time.monotonic() - self.ended_at >= ENDED_TTL or not self.ended_at:
                self.ended = dict(((s, p), n) for s, p, n in session.execute(
                    select(Job.state, Job.platform, func.count()).where(Job.state.in_(ENDED))
                    .group_by(Job.state, Job.platform)))
                self.ended_at = time.monotonic()

        jobs = GaugeMetricFamily("farm_jobs", "Jobs by state and platform (ended states refreshed at most once a "
                                 "minute)", labels=["state", "platform"])
        for (state, platform), n in sorted({**self.ended, **active}.items()):
            jobs.add_metric([state, platform], n)
        yield jobs
        queue = GaugeMetricFamily("farm_queue_depth", "Jobs queued and not yet taken by a worker, per platform",
                                  labels=["platform"])
        for (state, platform), n in sorted(active.items()):
            if state == JobState.QUEUED.value:
                queue.add_metric([platform], n)
        yield queue
        workers = GaugeMetricFamily("farm_workers_alive", "Workers running a job that gave a sign of life within "
                                    "lost_after seconds, per platform", labels=["platform"])
        for platform, n in sorted(alive.items()):
            workers.add_metric([platform], n)
        yield workers
        yield self.steps.family("farm_step_duration_seconds", "Duration of finished job steps (fetching, building, "
                                "repairing, verifying, attesting, uploading)", ["step", "platform", "outcome"])
        yield self.publish.family("farm_publish_latency_seconds", "From the worker's last step to the wheel on the "
                                  "index", ["platform"])
        yield self.e2e.family("farm_submit_to_publish_seconds", "From submission to the wheel on the index",
                              ["platform"])
        yield _counter("farm_jobs_submitted", "Jobs planned (cache hits included)", self.submitted)
        yield _counter("farm_cache_hits", "Jobs answered by an earlier job with the same inputs (cache key)",
                       self.cache_hits)

    def _alive(self, session: Session) -> dict[str, int]:
        cutoff = now().timestamp() - self.settings.lost_after
        seen: dict[str, set[str]] = defaultdict(set)
        for worker, platform, beat, updated in session.execute(
                select(Job.worker, Job.platform, Job.heartbeat_at, Job.updated_at)
                .where(Job.state.in_(WORKING), Job.worker.is_not(None))):
            last = beat or updated
            if last is not None and _ts(last) >= cutoff:
                seen[platform].add(worker)
        return {p: len(w) for p, w in seen.items()}

    def _scan_steps(self, session: Session) -> None:
        if self.step_low is None:
            self.step_low = (session.scalar(select(func.max(Step.id))) or 0) + 1
            return
        rows = session.execute(select(Step.id, Step.name, Step.outcome, Step.seconds, Step.started_at,
                                      Step.finished_at, Job.platform).join(Job, Job.id == Step.job_id)
                               .where(Step.id >= self.step_low).order_by(Step.id))
        stale = now().timestamp() - STALE_STEP_HOURS * 3600
        low = None
        top = self.step_low - 1
        for r in rows:
            top = max(top, r.id)
            if r.finished_at is None and r.outcome == "running":
                if low is None and _ts(r.started_at) >= stale:
                    low = r.id
                continue
            if r.id in self.step_seen:
                continue
            self.step_seen.add(r.id)
            if r.seconds is not None:
                self.steps.observe((r.name, r.platform, r.outcome), r.seconds)
        self.step_low = low if low is not None else top + 1
        self.step_seen = {i for i in self.step_seen if i >= self.step_low}

    def _scan_artifacts(self, session: Session) -> None:
        if self.artifact_low is None:
            self.artifact_low = (session.scalar(select(func.max(Artifact.id))) or 0) + 1
            return
        last_step = (select(func.max(Step.finished_at)).where(Step.job_id == Job.id, Step.attempt == Job.attempt)
                     .scalar_subquery())
        rows = session.execute(select(Artifact.id, Artifact.published_at, Job.platform, Job.created_at,
                                      last_step.label("worker_done")).join(Job, Job.id == Artifact.job_id)
                               .where(Artifact.id >= self.artifact_low, Artifact.published_at.is_not(None))
                               .order_by(Artifact.id))
        for r in rows:
            self.artifact_low = r.id + 1
            if r.worker_done is not None:
                self.publish.observe((r.platform,), max(0.0, (r.published_at - r.worker_done).total_seconds()))
            self.e2e.observe((r.platform,), max(0.0, (r.published_at - r.created_at).total_seconds()))

    def _scan_jobs(self, session: Session) -> None:
        if self.job_low is None:
            self.job_low = (session.scalar(select(func.max(Job.id))) or 0) + 1
            return
        for id_, platform, cached in session.execute(
                select(Job.id, Job.platform, Job.cached_from_id.is_not(None)).where(Job.id >= self.job_low)
                .order_by(Job.id)):
            self.job_low = id_ + 1
            self.submitted[platform] += 1
            if cached:
                self.cache_hits[platform] += 1


def _ts(value: Any) -> float:
    import datetime as dt

    return value.replace(tzinfo=dt.UTC).timestamp()


def _counter(name: str, doc: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=["platform"])
    for platform, n in sorted(values.items()):
        fam.add_metric([platform], n)
    return fam


def registry_for(request: Request) -> CollectorRegistry:
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FarmCollector(request.app.state.settings))  # type: ignore[arg-type]
        request.app.state.metrics_registry = registry
    return registry


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (no token, like /health)")
def metrics(request: Request) -> Response:
    return Response(generate_latest(registry_for(request)), media_type=CONTENT_TYPE_LATEST)


