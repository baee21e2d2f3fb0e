"""The intake policy (farm/coordinator/intake.py): allow and deny lists and the release cool-down.

At submit (a real JSON upstream index over HTTP): a range takes the newest release the cool-down
admits, a person's exact pin skips it, and each refusal records nothing.

Bad inputs covered: a deny-listed release, a release off the allow-list (project absent, and
version outside the allowed range), a release younger than the cool-down, a release whose upload
time the index does not give (fail-closed), and malformed policy entries in the configuration.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from farm.config import Settings
from farm.coordinator.intake import IntakePolicy, Release
from farm.errors import ConfigError, IntakeRefused
from tests.helpers.indexes import StaticIndex
from tests.helpers.sdists import make_good


NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def policy(**kw: object) -> IntakePolicy:
    return IntakePolicy.from_settings(Settings(**kw))  # type: ignore[arg-type]


def test_no_policy_takes_everything() -> None:
    p = policy()
    assert not p.active
    assert p.refusal(Release("anything", "1.0", upload_time=None), now=NOW) is None


def test_deny_and_allow_lists_name_the_rule() -> None:
    p = policy(intake_allow=["PyYAML>=6", "msgpack"], intake_deny=["pyyaml==6.0.1", "evil"])
    assert p.refusal(Release("pyyaml", "6.0.2"), now=NOW) is None
    assert p.refusal(Release("MsgPack", "0.1"), now=NOW) is None
    assert p.refusal(Release("PyYAML", "6.0.1"), now=NOW) == \
        "pyyaml 6.0.1 is refused by the intake policy (intake_deny: 'pyyaml==6.0.1')"
    assert p.refusal(Release("evil", "1.0"), now=NOW) == "evil 1.0 is refused by the intake policy (intake_deny: 'evil')"
    assert p.refusal(Release("pyyaml", "5.4"), now=NOW) == \
        "pyyaml 5.4 is not on the intake allow-list (the allowed versions are 'PyYAML>=6')"
    assert p.refusal(Release("six", "1.16.0"), now=NOW) == \
        "six 1.16.0 is not on the intake allow-list (the project is not on it)"
    assert p.refusal(Release("six", "1.16.0", upstream=False), now=NOW) is not None  # lists apply to uploads too


def test_cool_down_is_fail_closed_and_exempts_only_pins() -> None:
    p = policy(min_release_age_days=7)
    old = Release("lib", "1.0", upload_time=NOW - dt.timedelta(days=8))
    young = Release("lib", "1.1", upload_time=NOW - dt.timedelta(days=2))
    assert p.refusal(old, now=NOW) is None
    assert p.refusal(young, now=NOW) == ("lib 1.1 was uploaded 2026-11-30 12:00 UTC, less than 7 days ago "
                                         "(min_release_age_days); it can be taken in from 2026-12-07 12:00 UTC")
    unknown = Release("lib", "1.2", upload_time=None)
    assert "gives no upload time" in (p.refusal(unknown, now=NOW) or "") and "fail-closed" in (p.refusal(unknown, now=NOW) or "")
    pinned = Release("lib", "1.1", upload_time=young.upload_time, pinned=True)
    assert p.refusal(pinned, now=NOW) is None
    assert policy(min_release_age_days=7, min_release_age_exempt_pins=False).refusal(pinned, now=NOW) is not None
    assert p.refusal(Release("lib", "1.1", upload_time=None, upstream=False), now=NOW) is None  # a person's own sdist
    assert [r.version for r in p.admissible([old, young, unknown], now=NOW)] == ["1.0"]


@pytest.mark.parametrize(("entry", "problem"), [
    ("not a requirement!", "intake_deny: 'not a requirement!'"),
    ("pkg @ https://example.invalid/p.tar.gz", "only a name and a version specifier"),
    ("pkg; python_version < '3'", "only a name and a version specifier"),
])
def test_malformed_policy_entries_are_configuration_errors(entry: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="intake_deny") as err:
        policy(intake_deny=[entry])
    assert problem in str(err.value)


# At submit, against a real upstream index over HTTP (PEP 691 JSON with PEP 700 upload times) ------


@pytest.fixture
def upstream(tmp_path: Path):  # type: ignore[no-untyped-def]
    index = StaticIndex(tmp_path / "upstream")
    now = dt.datetime.now(dt.UTC)
    for name, version, uploaded in [("lib", "1.0", now - dt.timedelta(days=30)),
                                    ("lib", "1.1", now - dt.timedelta(days=1)), ("nodate", "1.0", None)]:
        sdist = make_good(tmp_path / "build", name, version)
        index.add(name, sdist.name, sdist.read_bytes(), uploaded=uploaded)
    yield index
    index.stop()


def _submit_with(monkeypatch: pytest.MonkeyPatch, upstream: StaticIndex, request: str, **env: str):  # type: ignore[no-untyped-def]
    from farm.config import get_settings, reset_settings
    from farm.coordinator.submit import submit

    monkeypatch.setenv("FARM_UPSTREAM_INDEX", upstream.url)
    for k, v in env.items():
        monkeypatch.setenv(f"FARM_{k.upper()}", v)
    reset_settings()
    return submit(request, settings=get_settings())


def _submissions() -> int:
    from sqlalchemy import func, select

    from farm.db.models import Source, Submission
    from farm.db.session import session_scope

    with session_scope() as s:
        return (s.scalar(select(func.count()).select_from(Submission)) or 0) + \
            (s.scalar(select(func.count()).select_from(Source)) or 0)


def test_submit_takes_the_newest_release_the_cool_down_admits(farm_home: Path, upstream: StaticIndex,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.cli import main

    assert main(["init"]) == 0
    assert _submit_with(monkeypatch, upstream, "lib", min_release_age_days="7").version == "1.0"
    assert _submit_with(monkeypatch, upstream, "lib==1.1", min_release_age_days="7").version == "1.1"  # a person's pin
    before = _submissions()
    with pytest.raises(IntakeRefused, match=r"lib 1\.1 was uploaded .* less than 7 days ago"):
        _submit_with(monkeypatch, upstream, "lib>1.0", min_release_age_days="7")
    with pytest.raises(IntakeRefused, match="gives no upload time.*fail-closed"):
        _submit_with(monkeypatch, upstream, "nodate==1.0", min_release_age_days="7",
                     min_release_age_exempt_pins="false")
    with pytest.raises(IntakeRefused, match=r"intake_deny: 'lib<1\.1'"):
        _submit_with(monkeypatch, upstream, "lib==1.0", min_release_age_days="0", intake_deny='["lib<1.1"]')
    with pytest.raises(IntakeRefused, match="not on the intake allow-list"):
        _submit_with(monkeypatch, upstream, str(make_good(farm_home.parent / "own", "mine", "2.0")),
                     intake_allow='["lib"]', intake_deny="[]")
    assert _submissions() == before  # a refusal records nothing
