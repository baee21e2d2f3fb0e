"""A job's log as Server-Sent Events, following it while it grows.

The worker appends to `jobs/<id>/attempt-<n>.log` in the farm's storage as the build runs (a remote
worker's upload replaces it). The stream sends each attempt's log in turn, one event per batch of
new complete lines, with the event id `ATTEMPT:OFFSET` so a reconnecting browser (`Last-Event-ID`)
resumes where it stopped. The file is polled every `POLL` s (a stat while nothing changes) and the
job's state read once a second; when the job has ended and its last log is read, an `end` event
carries the final state and the stream closes. A job that reused another's result (the same inputs)
streams that job's log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from farm.db.models import Job
from farm.db.session import session_scope
from farm.db.states import TERMINAL
from farm.storage import log_key

POLL = 0.1
STATE_EVERY = 1.0
KEEPALIVE = 15.0
CHUNK = 256 * 1024
_ENDED = {s.value for s in TERMINAL}


@dataclass(frozen=True)
class _Now:
    job_id: int  # the job whose log this is (the origin for a reused result)
    attempt: int
    state: str
    note: str | None


def _read_state(job_id: int) -> _Now | None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        if job.cached_from_id is not None and not job.steps:
            origin = session.get(Job, job.cached_from_id)
            if origin is not None:
                state = job.state if job.state in _ENDED and origin.state in _ENDED else origin.state
                return _Now(origin.id, origin.attempt, state,
                            f"job {job_id} reuses the result of job {origin.id} (same inputs)")
        return _Now(job.id, job.attempt, job.state, None)


def parse_resume(value: str | None) -> tuple[int, int]:
    """(attempt, byte offset) from an event id `ATTEMPT:OFFSET`; (1, 0) when absent or malformed."""
    try:
        a, o = (value or "").split(":")
        attempt, offset = int(a), int(o)
        if attempt >= 1 and offset >= 0:
            return attempt, offset
    except ValueError:
        pass
    return 1, 0


def _event(data: str, *, event: str | None = None, id_: str | None = None) -> bytes:
    lines = [f"event: {event}"] if event else []
    if id_:
        lines.append(f"id: {id_}")
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


async def follow(request: Request, storage_root: Path, job_id: int, resume: str | None) -> AsyncIterator[bytes]:
    attempt, offset = parse_resume(resume)
    now = await run_in_threadpool(_read_state, job_id)
    if now is None:
        yield _event(f"no job {job_id}", event="end")
        return
    if now.note and (attempt, offset) == (1, 0):
        yield _event(now.note, event="note")
    yield b"retry: 2000\n\n"
    checked = sent = time.monotonic()
    pending = b""
    while True:
        if await request.is_disconnected():
            return
        path = storage_root / log_key(now.job_id, attempt)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:  # the file was replaced by a shorter one (a re-uploaded log): start it again
            offset, pending = 0, b""
            yield _event(f"{attempt}", event="reset", id_=f"{attempt}:0")
        if size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                block = f.read(min(CHUNK, size - offset))
            offset += len(block)
            data = pending + block
            cut = data.rfind(b"\n")
            lines, pending = (data[:cut], data[cut + 1:]) if cut >= 0 else (b"", data)
            if cut >= 0:
                yield _event(lines.decode("utf-8", "replace"), id_=f"{attempt}:{offset - len(pending)}")
                sent = time.monotonic()
            continue  # read on while the file has more
        t = time.monotonic()
        if t - checked >= STATE_EVERY:
            checked = t
            fresh = await run_in_threadpool(_read_state, job_id)
            now = fresh or now
            if attempt < now.attempt:  # this attempt is over: the next one's log
                if pending:
                    yield _event(pending.decode("utf-8", "replace"), id_=f"{attempt}:{offset}")
                attempt, offset, pending = attempt + 1, 0, b""
                yield _event(f"attempt {attempt}", event="attempt", id_=f"{attempt}:0")
                continue
            if now.state in _ENDED:
                if pending:
                    yield _event(pending.decode("utf-8", "replace"), id_=f"{attempt}:{offset}")
                yield _event(now.state, event="end")
                return
        if t - sent >= KEEPALIVE:
            sent = t
            yield b": keep-alive\n\n"
        await asyncio.sleep(POLL)
