"""`/metrics` in-process on a real PostgreSQL database, parsed with prometheus_client's own parser.

Jobs by state and platform, queue depth and workers alive are read from the rows as they are; the
histograms and counters count what happened after the first scrape, once each: steps that finish
(one still running at a scrape is counted when it finishes, and never twice), wheels published
(latency from the worker's last step, and from submission), jobs planned and cache hits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from farm.db.models import Artifact, Job, Step, utcnow
from farm.db.session import session_scope
from tests.helpers.api import add_job, pg_app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with pg_app(tmp_path / "home") as c:
        yield c


def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def add_step(session, job: Job, name: str, seconds: float | None, *, ended_ago: float = 0) -> Step:  # type: ignore[no-untyped-def]
    end = utcnow() - dt.timedelta(seconds=ended_ago)
    step = Step(job_id=job.id, attempt=1, name=name, started_at=end - dt.timedelta(seconds=seconds or 1),
                finished_at=None if seconds is None else end, seconds=seconds,
                outcome="running" if seconds is None else "ok")
    session.add(step)
    session.flush()
    return step


def test_gauges_from_the_rows(client: TestClient) -> None:
    with session_scope() as s:
        for _ in range(3):
            add_job(s, state="queued")
        add_job(s, state="queued", platform="linux-aarch64")
        add_job(s, state="building", worker="w1", heartbeat_age=2)
        add_job(s, state="verifying", worker="w2", heartbeat_age=2)
        add_job(s, state="building", worker="w3", heartbeat_age=3600)  # silent for an hour: not alive
        add_job(s, state="building", platform="linux-aarch64", worker="w4", heartbeat_age=1)
        for _ in range(2):
            add_job(s, state="succeeded")
        add_job(s, state="failed", platform="linux-aarch64")
    m = scrape(client)
    jobs = m["farm_jobs"]
    assert jobs[(("platform", "linux-x86_64"), ("state", "queued"))] == 3
    assert jobs[(("platform", "linux-x86_64"), ("state", "building"))] == 2
    assert jobs[(("platform", "linux-x86_64"), ("state", "succeeded"))] == 2
    assert jobs[(("platform", "linux-aarch64"), ("state", "failed"))] == 1
    assert sum(jobs.values()) == 11
    assert m["farm_queue_depth"] == {(("platform", "linux-x86_64"),): 3, (("platform", "linux-aarch64"),): 1}
    assert m["farm_workers_alive"] == {(("platform", "linux-x86_64"),): 2, (("platform", "linux-aarch64"),): 1}


def test_histograms_and_counters_count_each_event_once(client: TestClient) -> None:
    with session_scope() as s:
        old = add_job(s, state="building", worker="w1", heartbeat_age=1)
        add_step(s, old, "fetching", 9.0)  # before the first scrape: not counted
    first = scrape(client)
    assert "farm_step_duration_seconds_count" not in first
    assert "farm_cache_hits_total" not in first

    with session_scope() as s:
        job = add_job(s, state="succeeded", worker="w1", created_ago=100)
        add_step(s, job, "building", 3.0, ended_ago=4)
        add_step(s, job, "uploading", 0.2, ended_ago=1.5)
        running = add_step(s, old, "building", None)
        add_job(s, state="succeeded", cached_from=job.id)
        s.add(Artifact(job_id=job.id, filename=f"{job.source.name}-1.0-cp311-cp311-linux_x86_64.whl",
                       sha256="f" * 64, size=1, name=job.source.name, version="1.0", storage_key="k",
                       verified=True, published_at=utcnow()))
        running_id = running.id
    m = scrape(client)
    b = (("outcome", "ok"), ("platform", "linux-x86_64"), ("step", "building"))
    assert m["farm_step_duration_seconds_count"][b] == 1
    assert m["farm_step_duration_seconds_sum"][b] == pytest.approx(3.0)
    assert m["farm_step_duration_seconds_bucket"][(("le", "2.5"), *b)] == 0
    assert m["farm_step_duration_seconds_bucket"][(("le", "5.0"), *b)] == 1
    assert sum(m["farm_step_duration_seconds_count"].values()) == 2  # building and uploading; fetching was before
    p = (("platform", "linux-x86_64"),)
    assert m["farm_publish_latency_seconds_count"][p] == 1
    assert 1.0 <= m["farm_publish_latency_seconds_sum"][p] <= 5.0  # the uploading step ended 1.5 s before
    assert 99 <= m["farm_submit_to_publish_seconds_sum"][p] <= 110
    assert m["farm_jobs_submitted_total"][p] == 2
    assert m["farm_cache_hits_total"][p] == 1

    with session_scope() as s:  # the step that was running finishes
        step = s.get(Step, running_id)
        step.finished_at, step.seconds, step.outcome = utcnow(), 40.0, "failed"
    m2 = scrape(client)
    f = (("outcome", "failed"), ("platform", "linux-x86_64"), ("step", "building"))
    assert m2["farm_step_duration_seconds_count"][f] == 1
    assert m2["farm_step_duration_seconds_count"][b] == 1  # not counted again
    assert m2["farm_publish_latency_seconds_count"][p] == 1
    assert m2["farm_jobs_submitted_total"][p] == 2
    assert scrape(client)["farm_step_duration_seconds_count"] == m2["farm_step_duration_seconds_count"]
