"""An upload-enabled farm for the upload tests: the farm's app served on 127.0.0.1 with its tokens, and
multipart upload forms as twine sends them."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.indexes import _Server


@dataclass
class Farm:
    server: _Server
    tokens: dict[str, str]
    home: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
def farm(farm_home: Path) -> Iterator[Farm]:
    from farm.api.app import create_app
    from farm.cli import main
    from farm.config import get_settings
    from farm.db.session import session_scope
    from farm.tokens import issue

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init"]) == 0
    settings = get_settings()
    with session_scope() as s:
        tokens = {"upload": issue(s, settings, "uploader", "upload"),
                  "read": issue(s, settings, "reader", "read"),
                  "stable-only": issue(s, settings, "stable-only", "upload", channel="stable")}
    with _Server(create_app(settings)) as server:
        yield Farm(server, tokens, farm_home)


def form_upload(farm: Farm, wheel: Path, token: str | None, channel: str = "staging",
                **fields: str) -> httpx.Response:
    data = {":action": "file_upload", "protocol_version": "1", "filetype": "bdist_wheel",
            "name": wheel.name.split("-")[0], "version": wheel.name.split("-")[1], **fields}
    auth = None if token is None else ("__token__", token)
    with open(wheel, "rb") as f:
        return httpx.post(farm.url(f"/{channel}/legacy/"), data=data, files={"content": (wheel.name, f)},
                          auth=auth, timeout=60)
