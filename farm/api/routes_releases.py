"""Releases: what the farm holds of NAME==VERSION and which file has a sha256 (role `read`: the
answers of `farm show` and `farm find`, for `--server`); yank or unyank NAME==VERSION, promote it to
a higher channel (role `promote`).

The same work as `farm yank` and `farm promote` (farm/index/promote.py); the answer is the lines
those commands print. A refused promotion (the gate) is 422 with every reason; so is a pin whose
name or version cannot be one (farm/util/names.py) or a reason with control characters.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from farm.api.auth import Principal, app_settings, require
from farm.index.promote import promote_and_publish, yank_and_rewrite
from farm.util.names import check_pin, check_text

router = APIRouter(prefix="/api/releases", tags=["releases"])
reader = Depends(require("read"))
admin = Depends(require("promote"))  # promote and yank: role promote (or admin)
Pin = Annotated[str, Field(min_length=3, max_length=300, examples=["pyyaml==6.0.2"]), AfterValidator(check_pin)]


class YankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: Pin
    reason: Annotated[str, AfterValidator(check_text)] | None = Field(None, max_length=500)
    undo: bool = False


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: Pin
    to: str = Field(min_length=1, max_length=100, examples=["stable"])
    upload: bool = Field(True, description="upload to the targets bound to the channel")


class Lines(BaseModel):
    lines: list[str]


@router.get("/show", summary="NAME==VERSION: wheels, inputs, logs, verification, channels (`farm show --json`)")
async def show(request: Request, pin: Annotated[str, Query(min_length=3, max_length=300, examples=["pyyaml==6.0.2"]),
                                                AfterValidator(check_pin)], who: Principal = reader) -> dict[str, Any]:
    from farm.db.session import session_scope
    from farm.records import show as show_record

    settings = app_settings(request)

    def read() -> dict[str, Any]:
        with session_scope() as session:
            return show_record(session, settings, pin)

    return jsonable(await run_in_threadpool(read))


@router.get("/find", summary="The wheel or sdist with this sha256 (8+ hex digits) and its build (`farm find --json`)")
async def find(request: Request, sha256: Annotated[str, Query(min_length=8, max_length=64, pattern="^[0-9a-fA-F]+$")],
               who: Principal = reader) -> dict[str, Any]:
    from farm.db.session import session_scope
    from farm.records import find_sha256

    def read() -> dict[str, Any]:
        with session_scope() as session:
            return find_sha256(session, sha256)

    return jsonable(await run_in_threadpool(read))


def jsonable(data: Any) -> Any:
    """As `farm show --json` prints it (dates and paths as strings)."""
    import json

    return json.loads(json.dumps(data, default=str))


@router.post("/yank", response_model=Lines, summary="PEP 592: yank (or undo) every wheel of NAME==VERSION")
async def yank(body: YankRequest, request: Request, who: Principal = admin) -> Lines:
    lines = await run_in_threadpool(yank_and_rewrite, app_settings(request), body.pin, reason=body.reason,
                                    undo=body.undo)
    return Lines(lines=lines)


@router.post("/promote", response_model=Lines, summary="Promote NAME==VERSION into a channel, through its gate")
async def promote(body: PromoteRequest, request: Request, who: Principal = admin) -> Lines:
    lines = await run_in_threadpool(promote_and_publish, app_settings(request), body.pin, body.to,
                                    by=f"api ({who.name})", upload=body.upload)
    return Lines(lines=lines)
