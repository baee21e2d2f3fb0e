"""Every message between coordinator and workers, declared once and validated on both ends.

Workers never open the database: a `JobSpec` tells them everything about a job, and they answer
with `JobEvent`s on the coordinator's queue. Artifacts travel through storage, never in messages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm.db.states import JobState, StepOutcome  # the enums the database's columns hold

COORDINATOR_QUEUE = "coordinator"
BUILD_TASK = "farm.worker.build"
EVENT_TASK = "farm.coordinator.event"
HEARTBEAT_TASK = "farm.coordinator.heartbeat"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SdistRef(_Msg):
    filename: str
    sha256: str
    size: int
    storage_key: str


class StagedWheel(_Msg):
    """A repaired wheel kept in storage while its job waits for dependencies."""

    filename: str
    sha256: str
    storage_key: str


class JobSpec(_Msg):
    job_id: int
    attempt: int
    name: str
    version: str
    sdist: SdistRef
    platform: str
    python: str
    build_id: str
    engine: str
    recipe_name: str | None
    recipe_digest: str
    options: dict[str, Any]  # farm.recipes.schema.Options, resolved for this build id
    upstream_index: str
    resume: Literal["build", "verify"] = "build"
    priority: int = 0  # the job's priority, higher first (farm.coordinator.dispatch maps it to the broker's)
    staged: list[StagedWheel] = Field(default_factory=list)
    # Staged wheels of the jobs in a dependency cycle with this one: verified together (farm.coordinator.deps).
    co_staged: list[StagedWheel] = Field(default_factory=list)
    # Data from the build needed again when only verification is re-run.
    carry: dict[str, Any] = Field(default_factory=dict)
    # Shown with every upload to the API's storage: writes only this attempt's keys (farm.tokens).
    storage_capability: str = ""


class StepReport(_Msg):
    name: str
    started_at: float  # unix time
    finished_at: float | None = None
    outcome: StepOutcome = StepOutcome.RUNNING
    log: str = ""


class ArtifactReport(_Msg):
    filename: str
    sha256: str
    size: int
    storage_key: str
    tags: list[str]
    requires_python: str | None
    requires_dist: list[str]
    provenance_key: str
    provenance: dict[str, Any]


class JobEvent(_Msg):
    """What a worker tells the coordinator about a job. `state` is the job's new state."""

    job_id: int
    attempt: int
    worker: str
    state: JobState
    step: StepReport | None = None
    error: str | None = None
    failure_kind: Literal["package", "infrastructure", "internal", "dependency"] | None = None
    missing: list[str] = Field(default_factory=list)  # requirements the farm's index lacks (dep_wait)
    staged: list[StagedWheel] = Field(default_factory=list)
    carry: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[ArtifactReport] = Field(default_factory=list)
    log_key: str | None = None


class Heartbeat(_Msg):
    """A worker is still running `attempt` of a job: sent every `heartbeat_interval` seconds."""

    job_id: int
    attempt: int
    worker: str
    sent_at: float  # unix time on the worker
