"""Every message between coordinator and workers, declared once and validated on both ends.

Workers never open the database: a `JobSpec` tells them everything about a job, and they answer
with `JobEvent`s on the coordinator's queue. Artifacts travel through storage, never in messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from farm.db.states import JobState, StepOutcome  # the enums the database's columns hold

COORDINATOR_QUEUE = "coordinator"
BUILD_TASK = "farm.worker.build"
EVENT_TASK = "farm.coordinator.event"
HEARTBEAT_TASK = "farm.coordinator.heartbeat"
REGISTER_TASK = "farm.coordinator.register"


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


class BuildRecord(_Msg):
    """A build whose wheels wait in storage for their dependencies, and what the build step did.

    The worker sends it with `dep_wait` (`JobEvent.build`); the coordinator keeps it in `Job.staged`
    (`stored`, read back by `load`) and sends it back when the job is verified again
    (`JobSpec.build`, resume "verify"), where the attest step records the build in the provenance
    statement as if it had run in that attempt (farm.worker.attest).
    """

    wheels: list[StagedWheel] = Field(default_factory=list)  # the repaired wheels, kept in storage
    tools: dict[str, str] = Field(default_factory=dict)  # tool -> version
    commands: list[str] = Field(default_factory=list)  # every command line the build ran
    image_digest: str | None = None  # the build image (container engines)
    build_requires: list[str] | None = None  # the build requirements as declared (or as the recipe set them)
    build_environment: list[str] | None = None  # what the build environment held: `name==version`
    isolation: dict[str, Any] | None = None  # the sandbox package code ran in, its network and limits
    adjustments: dict[str, Any] = Field(default_factory=dict)  # retries and patches that made the build work
    timings: dict[str, float] = Field(default_factory=dict)  # step -> seconds
    started: float | None = None  # unix time the building attempt started
    rounds: int = 0  # dep_wait rounds so far (counted by the coordinator)

    @classmethod
    def load(cls, stored: Mapping[str, Any] | None) -> BuildRecord:
        """The record kept in `Job.staged` (empty for a job that staged nothing), also in the shape
        stored before this class: `{"wheels": [...], "carry": {tools, commands, ...}, "rounds": n}`."""
        data = dict(stored or {})
        carry = data.pop("carry", None) or {}
        return cls.model_validate({**carry, **data})

    def stored(self) -> dict[str, Any]:
        """The JSON kept in `Job.staged`."""
        return self.model_dump(mode="json")


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
    build: BuildRecord | None = None  # resume "verify": the staged build to verify and attest
    # Staged wheels of the jobs in a dependency cycle with this one: verified together (farm.coordinator.deps).
    co_staged: list[StagedWheel] = Field(default_factory=list)
    # Shown with every upload to the API's storage: writes only this attempt's keys (farm.tokens).
    storage_capability: str = ""
    # An intentional rebuild: the PEP 427 build tag its wheels get, and why (farm.coordinator.submit).
    build_tag: str | None = None
    rebuild_reason: str | None = None


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
    build: BuildRecord | None = None  # dep_wait: the wheels staged and what the build did; failed: its adjustments
    artifacts: list[ArtifactReport] = Field(default_factory=list)
    log_key: str | None = None


class Heartbeat(_Msg):
    """A worker is still running `attempt` of a job: sent every `heartbeat_interval` seconds."""

    job_id: int
    attempt: int
    worker: str
    sent_at: float  # unix time on the worker


class OfferedPython(_Msg):
    """A Python a worker builds for (cp311), and the build image that carries it (None: the host's)."""

    python: str
    image: str | None = None


class WorkerRegistration(_Msg):
    """What a worker serves: sent when `farm worker` starts and again every `interval` seconds
    (farm.worker.heartbeat); the coordinator plans the build matrix from these (farm.coordinator.workers).
    `leaving`: the worker stops; it serves nothing from now on."""

    worker: str  # the Celery node name, distinct per worker
    platform: str  # the queue it consumes
    engine: str
    pythons: list[OfferedPython]
    interval: float  # seconds until the next registration
    sent_at: float  # unix time on the worker
    leaving: bool = False
