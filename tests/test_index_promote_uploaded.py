"""Promoting an uploaded wheel (an artifact with no job): the gate gives reasons, never a crash.

Covered: an uploaded pure wheel into a channel that requires verification is refused, the reason
naming the uploader and that the farm neither built nor verified it; the same wheel marked verified
(a row no build wrote) still counts for no platform and does not crash the gate; into a channel
without requirements it is promoted and listed; a version with a built, verified wheel and an
uploaded one is promoted whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cli import main
from farm.db.session import session_scope
from farm.errors import PromotionRefused
from farm.index import channels, simple
from farm.index.promote import promote
from tests.helpers.farms import publish_wheel
from tests.helpers.wheels import make_wheel


@pytest.fixture
def settings(farm_home: Path):  # type: ignore[no-untyped-def]
    from farm.config import get_settings

    assert main(["init"]) == 0
    return get_settings()


def _upload(settings, wheel: Path) -> int:  # type: ignore[no-untyped-def]
    from farm.coordinator.uploaded import publish_upload

    with session_scope() as s:
        art, new = publish_upload(s, settings, wheel, channel="staging", uploader="team-ci")
        assert new
        return art.id


def _promote(settings, pin: str, to: str = "stable") -> list[str]:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        result = promote(s, settings, pin, to, by="test")
        added = [a.filename for a in result.added]
    with session_scope() as s:
        channels.regenerate(s, settings, pin.split("==")[0], channels.layout(settings).containing(to))
    return added


def test_an_uploaded_wheel_meets_the_gate_with_reasons(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.db.models import Artifact

    wheel = make_wheel(tmp_path / "up", "upromo", "1.0")
    art_id = _upload(settings, wheel)
    assert settings.channel_requirements == {"stable": ["linux-x86_64"]}
    with pytest.raises(PromotionRefused) as refused:
        _promote(settings, "upromo==1.0")
    assert "not verified on linux-x86_64" in str(refused.value)
    assert "uploaded by team-ci, not built or verified by the farm" in str(refused.value)
    with session_scope() as s:  # a verified flag no build set: still no platform, and no AttributeError
        s.get(Artifact, art_id).verified = True
    with pytest.raises(PromotionRefused) as refused:
        _promote(settings, "upromo==1.0")
    assert "verified on: nothing" in str(refused.value)
    assert simple.read_project(settings.index / "stable", "upromo") == []

    open_gate = settings.model_copy(update={"channel_requirements": {}})
    assert _promote(open_gate, "upromo==1.0") == [wheel.name]
    for tree in ("stable", "prod"):
        assert [f.filename for f in simple.read_project(settings.index / tree, "upromo")] == [wheel.name]


def test_a_version_with_a_built_and_an_uploaded_wheel_is_promoted_whole(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    built = make_wheel(tmp_path / "b", "upmix", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    publish_wheel(settings, built, version="1.0", platform="linux-x86_64")
    uploaded = make_wheel(tmp_path / "u", "upmix", "1.0")  # py3-none-any, uploaded beside it
    _upload(settings, uploaded)
    assert sorted(_promote(settings, "upmix==1.0")) == sorted([built.name, uploaded.name])
    assert {f.filename for f in simple.read_project(settings.index / "stable", "upmix")} == {built.name, uploaded.name}
