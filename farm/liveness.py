"""Stop markers: how the coordinator tells workers that an attempt of a job no longer counts.

Workers never open the database and the farm runs Celery without remote control (no revoke), so
the coordinator leaves a small marker in storage, which every worker shares:
`jobs/<id>/stop.json` = {"below": N, "reason": ...} voids every attempt lower than N (the
reconciler sent attempt N because an older one was lost), and {"below": null, ...} voids them all
(the job was cancelled).

A worker reads the marker before it starts a job (so a message that comes back late, e.g. after
Redis's visibility timeout, costs nothing) and with every heartbeat; a job whose attempt was voided
stops at the next step boundary. Nothing depends on the marker for correctness: events of a voided
attempt are dropped by the coordinator anyway (stale attempt, or a terminal state). It only saves
the work.
"""

from __future__ import annotations

import json
import logging

from farm.errors import JobStopped, NotFound  # noqa: F401 - JobStopped lives in farm.errors, imported from here too
from farm.storage import Storage

log = logging.getLogger(__name__)


def stop_key(job_id: int) -> str:
    return f"jobs/{job_id}/stop.json"


def request_stop(storage: Storage, job_id: int, *, below: int | None, reason: str) -> None:
    """Void attempts lower than `below` of `job_id` (every attempt when `below` is None)."""
    storage.put_bytes(stop_key(job_id), json.dumps({"below": below, "reason": reason}).encode())


def stop_reason(storage: Storage, job_id: int, attempt: int) -> str | None:
    """Why `attempt` of `job_id` should not run, or None. An unreadable marker is no reason to stop."""
    try:
        data = json.loads(storage.read_bytes(stop_key(job_id)))
    except NotFound:
        return None
    except Exception as exc:  # noqa: BLE001 - storage unreachable, a torn file: keep working, the events decide
        log.warning("job %s: stop marker unreadable: %s", job_id, exc)
        return None
    below = data.get("below")
    if below is None or attempt < int(below):
        return str(data.get("reason") or "stopped by the coordinator")
    return None
