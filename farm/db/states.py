"""Job states and the only moves between them; the states of a job's dependencies and steps.

A worker walks a job through fetching -> building -> repairing -> verifying -> attesting ->
uploading; the coordinator records and publishes. `dep_wait` holds a built wheel whose runtime
dependencies the farm's index does not have yet. Any other move raises `StateError`.

The columns holding these (`Job.state`, `Dependency.state`, `Step.outcome`) are typed with the
enums below and store their values as plain strings (farm.db.models).
"""

from __future__ import annotations

from enum import StrEnum

from farm.errors import StateError


class JobState(StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    BUILDING = "building"
    REPAIRING = "repairing"
    DEP_WAIT = "dep_wait"
    VERIFYING = "verifying"
    ATTESTING = "attesting"
    UPLOADING = "uploading"
    PUBLISHING = "publishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DependencyState(StrEnum):
    """Where a runtime requirement of a waiting job stands (farm.coordinator.deps)."""

    WAITING = "waiting"  # its providing job has not published yet
    MET = "met"  # published on the farm's index
    UNAVAILABLE = "unavailable"  # nothing provides it: no upstream sdist, or the provider failed or was cancelled


class StepOutcome(StrEnum):
    """How one step of one attempt ended; `lost` when the reconciler gave the attempt up."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    LOST = "lost"


S = JobState
_RUNNING = {S.FETCHING, S.BUILDING, S.REPAIRING, S.VERIFYING, S.ATTESTING, S.UPLOADING}

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.FETCHING, S.SUCCEEDED, S.FAILED, S.CANCELLED}),
    # fetching -> verifying: a job released from dep_wait re-fetches its sdist, then only verifies.
    S.FETCHING: frozenset({S.BUILDING, S.VERIFYING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.BUILDING: frozenset({S.REPAIRING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.REPAIRING: frozenset({S.VERIFYING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.DEP_WAIT: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.VERIFYING: frozenset({S.ATTESTING, S.DEP_WAIT, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.ATTESTING: frozenset({S.UPLOADING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.UPLOADING: frozenset({S.PUBLISHING, S.FAILED, S.QUEUED, S.CANCELLED}),
    S.PUBLISHING: frozenset({S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
RUNNING = frozenset(_RUNNING)
# The steps a worker reports, in order; each is also the state the job is in while it runs.
WORKER_STEPS = (S.FETCHING, S.BUILDING, S.REPAIRING, S.VERIFYING, S.ATTESTING, S.UPLOADING)


def check_transition(current: JobState | str, new: JobState | str) -> JobState:
    cur, nxt = JobState(current), JobState(new)
    if nxt not in TRANSITIONS[cur]:
        raise StateError(f"illegal job state transition {cur} -> {nxt}")
    return nxt


_FORWARD = frozenset({*WORKER_STEPS, S.PUBLISHING})


def forward_path(current: JobState | str, new: JobState | str, *, max_moves: int = 2) -> list[JobState]:
    """The moves that take a job from `current` to `new`.

    The direct move when it is legal; else the shortest way forward through the worker's steps, of
    at most `max_moves` moves, for an event that overtook the one before it (several coordinator
    processes consume events at once: `building` may be recorded before `fetching`). A move no
    such path explains comes back as is, so `check_transition` rejects it.
    """
    cur, nxt = JobState(current), JobState(new)
    if nxt in TRANSITIONS[cur] or nxt not in _FORWARD:
        return [nxt]
    paths: dict[JobState, list[JobState]] = {cur: []}
    frontier = [cur]
    for _ in range(max_moves):
        following = []
        for state in frontier:
            for step in sorted(TRANSITIONS[state] & _FORWARD):
                if step not in paths:
                    paths[step] = [*paths[state], step]
                    following.append(step)
        if nxt in paths:
            return paths[nxt]
        frontier = following
    return [nxt]
