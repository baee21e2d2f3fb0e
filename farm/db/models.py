"""The farm's records. The database is the truth; the broker only transports.

submission 1-n job; source (an sdist, by sha256) 1-n job; job 1-n step; job 1-n artifact;
artifact 1-1 provenance; job 1-n dependency (runtime requirements it waits for).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Enum, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from farm.db.states import DependencyState, JobState, StepOutcome, check_transition


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _str_enum(cls: type[StrEnum]) -> Enum:
    """A column of `cls` stored as its values in a VARCHAR(16), as the schema has it (no CHECK, no
    native enum type): rows read back as members, and a value outside `cls` is refused on write."""
    return Enum(cls, native_enum=False, create_constraint=False, length=16, validate_strings=True,
                values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Submission(Base):
    __tablename__ = "submission"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # file | requirement | dependency
    request: Mapped[str] = mapped_column(Text)  # the path or requirement as given
    parent_job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", use_alter=True))
    jobs: Mapped[list[Job]] = relationship(back_populates="submission", foreign_keys="Job.submission_id")


class Source(Base):
    """An sdist the farm holds, by content."""

    __tablename__ = "source"
    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), index=True)  # normalized
    version: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str] = mapped_column(String(300))
    size: Mapped[int]
    storage_key: Mapped[str] = mapped_column(Text)
    upstream_url: Mapped[str | None] = mapped_column(Text)
    requires_python: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One build target of one sdist: platform x Python, under one recipe and engine."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state", "state"), Index("ix_job_cache_key", "cache_key"),
                      # the dashboard's seek-paged lists and /metrics (migration 0005)
                      Index("ix_job_state_id", "state", "id"), Index("ix_job_platform_state_id", "platform", "state", "id"),
                      Index("ix_job_source_id_id", "source_id", "id"),
                      # the submissions page and the job list by platform (migration 0008)
                      Index("ix_job_submission_id_id", "submission_id", "id"), Index("ix_job_platform_id", "platform", "id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submission.id"))
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"))
    platform: Mapped[str] = mapped_column(String(64))  # queue name, e.g. linux-x86_64
    python: Mapped[str] = mapped_column(String(32))  # e.g. cp311
    build_id: Mapped[str] = mapped_column(String(100))  # cibuildwheel-style, e.g. cp311-manylinux_x86_64
    engine: Mapped[str] = mapped_column(String(32))
    recipe_name: Mapped[str | None] = mapped_column(String(300))
    recipe_digest: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resolved options for this build id
    cache_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(_str_enum(JobState), default=JobState.QUEUED)
    attempt: Mapped[int] = mapped_column(default=1)
    worker: Mapped[str | None] = mapped_column(String(200))
    cached_from_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    error: Mapped[str | None] = mapped_column(Text)
    failure_kind: Mapped[str | None] = mapped_column(String(16))  # package | infrastructure | internal | dependency
    log_key: Mapped[str | None] = mapped_column(Text)
    staged: Mapped[dict[str, Any]] = mapped_column(default=dict)  # wheel staged while in dep_wait
    # An intentional rebuild of a version (`farm submit --rebuild REASON`): its wheels carry this
    # PEP 427 build tag, so they get new file names beside the published ones (which never change).
    build_tag: Mapped[str | None] = mapped_column(String(16))
    rebuild_reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(default=0, server_default="0")  # higher goes first where the broker supports it
    heartbeat_at: Mapped[dt.datetime | None]  # last sign of life from the worker running it
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    submission: Mapped[Submission] = relationship(back_populates="jobs", foreign_keys=[submission_id])
    source: Mapped[Source] = relationship()
    steps: Mapped[list[Step]] = relationship(back_populates="job", order_by="Step.id", cascade="all, delete-orphan")
    artifacts: Mapped[list[Artifact]] = relationship(back_populates="job", foreign_keys="Artifact.job_id")
    dependencies: Mapped[list[Dependency]] = relationship(
        back_populates="job", foreign_keys="Dependency.job_id", cascade="all, delete-orphan")

    def move(self, new: JobState | str) -> None:
        """Change state through the transition table; an illegal move raises StateError."""
        self.state = check_transition(self.state, new)


class Step(Base):
    """One named step of one attempt of a job, with its timing, outcome and log."""

    __tablename__ = "step"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    attempt: Mapped[int] = mapped_column(default=1)
    name: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    seconds: Mapped[float | None]
    outcome: Mapped[StepOutcome] = mapped_column(_str_enum(StepOutcome), default=StepOutcome.RUNNING)
    log: Mapped[str] = mapped_column(Text, default="")
    job: Mapped[Job] = relationship(back_populates="steps")


LIVE = text("removed_at IS NULL")


class Artifact(Base):
    """A wheel the farm built, verified and published.

    A published file name is immutable: no two live artifacts share `filename_key` (the normalized
    file name, `farm.index.simple.file_key`), so no other bytes can take a published name, nor a
    name that normalizes to it (`Foo_Bar-1.0-...` / `foo_bar-1.0-...`). Once `farm gc` removed an
    artifact's files (`removed_at`), its name may be built again. NULL only for rows that migration
    0004 found sharing a name with a newer live artifact (published before names were immutable).
    """

    __tablename__ = "artifact"
    __table_args__ = (Index("uq_artifact_live_filename_key", "filename_key", unique=True,
                            sqlite_where=LIVE, postgresql_where=LIVE),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), index=True)  # None: uploaded, not built here
    uploaded_by: Mapped[str | None] = mapped_column(String(64))  # the token that uploaded it (farm/api/routes_upload.py)
    filename: Mapped[str] = mapped_column(String(300))
    filename_key: Mapped[str | None] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int]
    name: Mapped[str] = mapped_column(String(200), index=True)  # normalized project name
    version: Mapped[str] = mapped_column(String(100))
    tags: Mapped[list[Any]] = mapped_column(default=list)
    requires_python: Mapped[str | None] = mapped_column(String(200))
    requires_dist: Mapped[list[Any]] = mapped_column(default=list)
    storage_key: Mapped[str] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(default=False)
    published_at: Mapped[dt.datetime | None]
    yanked: Mapped[str | None] = mapped_column(Text)  # PEP 592: None = not yanked, else the reason ("" allowed)
    metadata_sha256: Mapped[str | None] = mapped_column(String(64))  # of its METADATA file (PEP 658), for page rewrites
    removed_at: Mapped[dt.datetime | None]  # `farm gc` removed its files; the record stays
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    job: Mapped[Job | None] = relationship(back_populates="artifacts", foreign_keys=[job_id])
    provenance: Mapped[Provenance | None] = relationship(back_populates="artifact", uselist=False)
    channels: Mapped[list[ChannelEntry]] = relationship(back_populates="artifact", cascade="all, delete-orphan")
    uploads: Mapped[list[Upload]] = relationship(back_populates="artifact", cascade="all, delete-orphan")


class Upload(Base):
    """An artifact uploaded to another index (`farm publish-to`, or on promotion)."""

    __tablename__ = "upload"
    __table_args__ = (UniqueConstraint("artifact_id", "target"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), index=True)
    target: Mapped[str] = mapped_column(String(100))  # the name in `upload_targets`
    url: Mapped[str] = mapped_column(Text)  # where it went
    uploaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    artifact: Mapped[Artifact] = relationship(back_populates="uploads")


class ChannelEntry(Base):
    """An artifact visible in a channel (staging, stable, ...)."""

    __tablename__ = "channel_entry"
    __table_args__ = (UniqueConstraint("artifact_id", "channel"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64), index=True)
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    added_by: Mapped[str | None] = mapped_column(String(200))
    artifact: Mapped[Artifact] = relationship(back_populates="channels")


class Provenance(Base):
    """The in-toto Statement (SLSA provenance v1 predicate) recorded for one artifact."""

    __tablename__ = "provenance"
    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), unique=True)
    statement: Mapped[dict[str, Any]]
    digest: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(Text)
    envelope: Mapped[dict[str, Any] | None]  # the signed PEP 740-style provenance object (farm/provenance/sign.py)
    keyid: Mapped[str | None] = mapped_column(String(100))  # the farm key that signed it
    artifact: Mapped[Artifact] = relationship(back_populates="provenance")


class ApiToken(Base):
    """An API token (farm/tokens.py): its sha256, never the secret; revoked and expired ones are kept."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(64))  # None: every channel
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    origin: Mapped[str] = mapped_column(String(16), default="cli")  # cli | farm.toml (imported at start)


class Dependency(Base):
    """A runtime requirement a job's wheel needs before it can be verified."""

    __tablename__ = "dependency"
    __table_args__ = (UniqueConstraint("job_id", "requirement"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id"), index=True)
    requirement: Mapped[str] = mapped_column(Text)
    dep_job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"))
    state: Mapped[DependencyState] = mapped_column(_str_enum(DependencyState), default=DependencyState.WAITING)
    reason: Mapped[str | None] = mapped_column(Text)
    job: Mapped[Job] = relationship(back_populates="dependencies", foreign_keys=[job_id])
