"""A job released from dep_wait is sent to verify only once the farm's pages list what it waited for.

Its verification resolves its requirements against the farm's index; the provider's pages are written
after the provider's commit, by whatever process published it. On an embedded farm (SQLite, local
storage, a real wheel published through the coordinator's publish):

Bad cases covered: the provider's own listing after its commit failed (a full index disk), so the
waiter released in the same transaction would meet an index without it; the provider had succeeded
but was not listed yet when the waiter's dependency row was linked to it (released at once, by
another transaction than the provider's). Each test records the page at the moment the message is
sent, and fails when the message leaves first.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from farm.messages import BuildRecord, JobEvent, StagedWheel
from tests.helpers.farms import prepare_job
from tests.helpers.wheels import make_wheel


@pytest.fixture
def sent(farm_home: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """An embedded farm; each build message sent, with the wheels the `dep` page listed as it left."""
    from farm.cli import main
    from farm.config import get_settings
    from farm.coordinator import dispatch
    from farm.index import simple

    messages: list = []

    def send(specs) -> None:  # type: ignore[no-untyped-def]
        listed = [f.filename for f in simple.read_project(get_settings().index, "dep")]
        messages.extend((s.job_id, s.resume, listed) for s in specs)

    monkeypatch.setattr(dispatch, "send", send)
    assert main(["init"]) == 0
    return messages


def _failing_listing_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The next page listing fails as on a full disk; later ones work."""
    from farm.index import channels

    real, failed = channels.list_new, []

    def list_new(session, settings, project):  # type: ignore[no-untyped-def]
        if not failed:
            failed.append(project)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(session, settings, project)

    monkeypatch.setattr(channels, "list_new", list_new)
    return failed


def _waiter(tmp_path: Path) -> int:
    from farm.config import get_settings
    from farm.coordinator.submit import submit
    from tests.helpers.sdists import sdist_members, write_tar

    sdist = write_tar(tmp_path / "needs-1.0.tar.gz", sdist_members("needs-1.0", "needs", "1.0"))
    return submit(str(sdist), settings=get_settings()).jobs[0][0]


def _to_dep_wait(job_id: int, missing: list[str]) -> None:
    from farm.config import get_settings
    from farm.coordinator.events import apply_event

    for state in ("fetching", "building", "repairing", "verifying"):
        apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state=state), get_settings())
    wheel = StagedWheel(filename="needs-1.0-py3-none-any.whl", sha256="1" * 64,
                        storage_key=f"jobs/{job_id}/attempt-1/needs-1.0-py3-none-any.whl")
    apply_event(JobEvent(job_id=job_id, attempt=1, worker="w1", state="dep_wait", missing=missing,
                         build=BuildRecord(wheels=[wheel])), get_settings())


def _publishing(provider: int, report) -> None:  # type: ignore[no-untyped-def]
    """The provider's worker reports its result: the coordinator publishes it and ends the job."""
    from farm.config import get_settings
    from farm.coordinator.events import apply_event
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        s.get(Job, provider).state = "uploading"  # type: ignore[assignment]
    apply_event(JobEvent(job_id=provider, attempt=1, worker="w2", state="publishing", artifacts=[report]),
                get_settings())


def _state(job_id: int) -> str:
    from farm.db.models import Job
    from farm.db.session import session_scope

    with session_scope() as s:
        return str(s.get(Job, job_id).state)


def test_a_waiter_released_by_its_providers_publish_is_sent_after_the_page_lists_it(
        sent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    settings = get_settings()
    wheel = make_wheel(tmp_path, "dep", "4.16.0")
    provider, report = prepare_job(settings, wheel, version="4.16.0")  # built, in `publishing`
    waiter = _waiter(tmp_path)
    _to_dep_wait(waiter, ['dep>=4.1.0; python_version < "3.99"'])
    assert _state(waiter) == "dep_wait"
    sent.clear()
    failed = _failing_listing_once(monkeypatch)
    _publishing(provider, report)
    assert failed == ["dep"]  # the provider's own listing did not happen
    assert (_state(provider), _state(waiter)) == ("succeeded", "queued")
    assert sent == [(waiter, "verify", [wheel.name])]


def test_a_waiter_linked_to_a_provider_not_listed_yet_is_sent_after_the_page_lists_it(
        sent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from farm.config import get_settings
    from farm.index import simple

    settings = get_settings()
    wheel = make_wheel(tmp_path, "dep", "4.16.0")
    provider, report = prepare_job(settings, wheel, version="4.16.0")
    _failing_listing_once(monkeypatch)
    _publishing(provider, report)
    assert _state(provider) == "succeeded"
    assert simple.read_project(settings.index, "dep") == []  # committed, not listed (yet)
    waiter = _waiter(tmp_path)
    sent.clear()
    _to_dep_wait(waiter, ["dep>=4.1.0"])  # linked to the succeeded provider: released at once
    assert _state(waiter) == "queued"
    assert sent == [(waiter, "verify", [wheel.name])]
