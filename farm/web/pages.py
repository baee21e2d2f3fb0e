"""The dashboard's pages: jobs, one job (timeline, live log, provenance, cancel/retry), a project's
matrix, workers and queues, channels and promotions; and sign-in.

Server-rendered (Jinja2, autoescaped); the only script is the log follower (static/log.js). Every
asset is in this package: the pages load nothing from another site (the Content-Security-Policy says
so too). The queries are in farm/web/queries.py; cancel is the API's (farm.coordinator.lifecycle.cancel)
and retry submits the job's stored sdist again for the job's platform and Python
(farm.coordinator.submit.submit), as `farm submit FILE` would. Promote and yank (the project and
channels pages, role `promote`) take the API's request bodies (farm/api/routes_releases.py: the same
checks of the pin, the channel and the reason) and do the API's work (farm/index/promote.py); like
every form here they carry the CSRF value of the signed-in token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from farm.api.auth import Principal, app_settings
from farm.config import Settings
from farm.db.models import Job
from farm.db.session import session_scope
from farm.db.states import JobState
from farm.errors import FarmError, NotFound, StateError
from farm.status import job_log
from farm.web import queries
from farm.web.logstream import follow
from farm.web.signin import (COOKIE, READ_ROLE, can, check_csrf, csrf_value, principal_for, safe_next, signin_url,
                             viewer)

HERE = Path(__file__).parent
ROW_ID_MAX = 2**31 - 1
router = APIRouter(include_in_schema=False)
env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
RETRYABLE = {JobState.FAILED.value, JobState.CANCELLED.value}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "–"


env.filters["duration"] = _duration
env.filters["when"] = _when
env.globals["states"] = [s.value for s in JobState]


def render(request: Request, template: str, who: Principal | None, *, status: int = 200, **ctx: Any) -> HTMLResponse:
    html = env.get_template(template).render(request=request, who=who, can_submit=can(who, "submit"),
                                             is_admin=can(who, "admin"), can_promote=can(who, "promote"),
                                             csrf=csrf_value(request), **ctx)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _signin_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(signin_url(request), status_code=303)


def _problem(request: Request, who: Principal | None, status: int, message: str, back: str = "/") -> HTMLResponse:
    return render(request, "problem.html", who, status=status, message=message, back=back)


def _id(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= ROW_ID_MAX:
        raise HTTPException(422, f"{value} is not a row id")
    return value


# Sign-in ---------------------------------------------------------------------------------------------


@router.get("/ui/signin")
def signin_form(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", viewer(request), next=safe_next(next), error=None)


@router.post("/ui/signin", response_model=None)
def signin(request: Request, token: str = Form("", max_length=500), next: str = Form("/")) -> Response:
    who = principal_for(request, token.strip())
    error = None
    if who is None:
        error = "That token is not one this farm accepts."
    elif not can(who, READ_ROLE):
        error = f"The token {who.name!r} has the role {who.role!r}; the dashboard needs a submit or admin token."
    if error:
        return render(request, "signin.html", None, status=401, next=safe_next(next), error=error)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/ui/signout")
def signout(request: Request, csrf: str = Form("")) -> RedirectResponse:
    check_csrf(request, csrf)
    response = RedirectResponse("/ui/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# Jobs ------------------------------------------------------------------------------------------------


@router.get("/", response_model=None)
def jobs(request: Request, state: str = Query("", max_length=16), project: str = Query("", max_length=200),
         platform: str = Query("", max_length=64), before: int | None = None, after: int | None = None) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    if state and state not in env.globals["states"]:
        return _problem(request, who, 422, f"{state!r} is not a job state")
    filt = queries.JobFilter(state=state or None, project=project.strip() or None, platform=platform.strip() or None)
    with session_scope() as session:
        page = queries.job_page(session, filt, before=_id(before), after=_id(after))
        depths = queries.queue_depths(session)
    params = filt.params()
    older = f"/?{urlencode({**params, 'before': page.older})}" if page.older else None
    newer = f"/?{urlencode({**params, 'after': page.newer})}" if page.newer else None
    return render(request, "jobs.html", who, page=page, filt=filt, older=older, newer=newer, depths=depths)


@router.get("/ui/jobs/{job_id}", response_model=None)
def job_page(request: Request, job_id: int) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    _id(job_id)
    with session_scope() as session:
        detail = queries.job_detail(session, job_id)
        if detail is None:
            return _problem(request, who, 404, f"There is no job {job_id}.")
        return render(request, "job.html", who, d=detail, retryable=detail["job"].state in RETRYABLE)


@router.get("/ui/jobs/{job_id}/log", response_class=PlainTextResponse)
def job_log_text(request: Request, job_id: int) -> Response:
    if viewer(request) is None:
        return PlainTextResponse("sign in first: /ui/signin\n", status_code=401)
    _id(job_id)
    with session_scope() as session:
        try:
            return PlainTextResponse(job_log(session, job_id), headers={"X-Content-Type-Options": "nosniff"})
        except NotFound as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)


@router.get("/ui/jobs/{job_id}/log/stream", response_model=None)
def job_log_stream(request: Request, job_id: int, start: str | None = Query(None, max_length=40)) -> Response:
    if viewer(request) is None:
        return PlainTextResponse("sign in first: /ui/signin\n", status_code=401)
    _id(job_id)
    resume = request.headers.get("last-event-id") or start
    return StreamingResponse(follow(request, app_settings(request).storage, job_id, resume),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.post("/ui/jobs/{job_id}/cancel", response_model=None)
async def cancel(request: Request, job_id: int, csrf: str = Form("")) -> Response:
    from farm.coordinator.lifecycle import cancel as cancel_job

    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    check_csrf(request, csrf)
    _id(job_id)
    if not can(who, "submit"):
        return _problem(request, who, 403, "Your token may not cancel jobs.", f"/ui/jobs/{job_id}")
    try:
        await run_in_threadpool(cancel_job, job_id, app_settings(request))
    except FarmError as exc:
        return _problem(request, who, 404 if isinstance(exc, NotFound) else 409, str(exc), f"/ui/jobs/{job_id}")
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)


@router.post("/ui/jobs/{job_id}/retry", response_model=None)
async def retry(request: Request, job_id: int, csrf: str = Form("")) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    check_csrf(request, csrf)
    _id(job_id)
    if not can(who, "submit"):
        return _problem(request, who, 403, "Your token may not submit builds.", f"/ui/jobs/{job_id}")
    try:
        new_id = await run_in_threadpool(retry_job, app_settings(request), job_id)
    except FarmError as exc:
        return _problem(request, who, 404 if isinstance(exc, NotFound) else 409, str(exc), f"/ui/jobs/{job_id}")
    return RedirectResponse(f"/ui/jobs/{new_id}", status_code=303)


def retry_job(settings: Settings, job_id: int) -> int:
    """Build a failed or cancelled job again: its stored sdist, submitted for its platform and Python
    (a new submission and job; the old one stays as it ended). The new job's id."""
    from farm.coordinator.submit import submit

    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if job.state not in RETRYABLE:
            raise StateError(f"job {job_id} is {job.state}; only a failed or cancelled job is built again")
        sdist = settings.storage / job.source.storage_key
        platform, python, build_id = job.platform, job.python, job.build_id
    if not sdist.is_file():
        raise NotFound(f"job {job_id}'s sdist is no longer in storage ({sdist.name})")
    result = submit(str(sdist), settings=settings, from_file=True, only_platforms=[platform], only_pythons=[python])
    ids = [i for i, b, _ in result.jobs if b == build_id] or [i for i, _, _ in result.jobs]
    return ids[0]


# Submissions ---------------------------------------------------------------------------------------


@router.get("/ui/submissions", response_model=None)
def submissions_page(request: Request, before: int | None = None) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    with session_scope() as session:
        rows, older = queries.submissions(session, before=_id(before))
    return render(request, "submissions.html", who, rows=rows,
                  older=f"/ui/submissions?{urlencode({'before': older})}" if older else None)


@router.get("/ui/submissions/{submission_id}", response_model=None)
def submission_page(request: Request, submission_id: int) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    _id(submission_id)
    with session_scope() as session:
        closure = queries.submission_closure(session, submission_id)
    if closure is None:
        return _problem(request, who, 404, f"There is no submission {submission_id}.", "/ui/submissions")
    requested = sorted({(r["name"], r["version"]) for r in closure.requested})
    return render(request, "submission.html", who, c=closure, requested=requested)


# Promote and yank ----------------------------------------------------------------------------------


def _release_form(request: Request, csrf: str, back: str, role: str = "promote") -> tuple[Principal | None, Response | None]:
    who = viewer(request)
    if who is None:
        return None, _signin_redirect(request)
    check_csrf(request, csrf)
    if not can(who, role):
        return who, _problem(request, who, 403, "Your token may not promote or yank releases (role promote or admin).",
                             safe_next(back))
    return who, None


def _invalid(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                     for e in exc.errors(include_url=False, include_input=False))


@router.post("/ui/releases/promote", response_model=None)
async def promote_release(request: Request, pin: str = Form("", max_length=300), to: str = Form("", max_length=100),
                          csrf: str = Form(""), back: str = Form("/ui/channels", max_length=400)) -> Response:
    from farm.api.routes_releases import PromoteRequest
    from farm.index.promote import promote_and_publish

    who, refused = _release_form(request, csrf, back)
    if refused is not None:
        return refused
    assert who is not None
    try:
        body = PromoteRequest(pin=pin, to=to)
    except ValidationError as exc:
        return _problem(request, who, 422, _invalid(exc), safe_next(back))
    try:
        lines = await run_in_threadpool(promote_and_publish, app_settings(request), body.pin, body.to,
                                        by=f"dashboard ({who.name})", upload=body.upload)
    except FarmError as exc:
        return _problem(request, who, 404 if isinstance(exc, NotFound) else 422, str(exc), safe_next(back))
    return render(request, "done.html", who, title=f"Promote {body.pin} to {body.to}", lines=lines,
                  back=safe_next(back))


@router.post("/ui/releases/yank", response_model=None)
async def yank_release(request: Request, pin: str = Form("", max_length=300), reason: str = Form("", max_length=500),
                       undo: bool = Form(False), csrf: str = Form(""),
                       back: str = Form("/ui/channels", max_length=400)) -> Response:
    from farm.api.routes_releases import YankRequest
    from farm.index.promote import yank_and_rewrite

    who, refused = _release_form(request, csrf, back)
    if refused is not None:
        return refused
    assert who is not None
    try:
        body = YankRequest(pin=pin, reason=reason.strip() or None, undo=undo)
    except ValidationError as exc:
        return _problem(request, who, 422, _invalid(exc), safe_next(back))
    try:
        lines = await run_in_threadpool(yank_and_rewrite, app_settings(request), body.pin, reason=body.reason,
                                        undo=body.undo)
    except FarmError as exc:
        return _problem(request, who, 404 if isinstance(exc, NotFound) else 422, str(exc), safe_next(back))
    return render(request, "done.html", who, title=f"{'Unyank' if body.undo else 'Yank'} {body.pin}", lines=lines,
                  back=safe_next(back))


# Projects, workers, channels ------------------------------------------------------------------------


@router.get("/ui/projects", response_model=None)
def project_search(request: Request, name: str = Query("", max_length=200)) -> Response:
    return RedirectResponse(f"/ui/projects/{name.strip()}" if name.strip() else "/", status_code=303)


@router.get("/ui/projects/{name}", response_model=None)
def project_page(request: Request, name: str, before: int | None = None) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    if len(name) > 200:
        return _problem(request, who, 422, "That is not a project name.")
    from farm.index.channels import layout

    with session_scope() as session:
        matrix = queries.project_matrix(session, name, before_source=_id(before))
        released = queries.version_channels(session, matrix.name, matrix.versions)
    if not matrix.versions and before is None:
        return _problem(request, who, 404, f"The farm has no sdist of {name!r}.")
    return render(request, "project.html", who, m=matrix, released=released,
                  channels=layout(app_settings(request)).channels, here=request.url.path)


@router.get("/ui/workers", response_model=None)
def workers_page(request: Request) -> Response:
    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    with session_scope() as session:
        found = queries.workers(session)
        depths = queries.queue_depths(session)
        active = queries.active_jobs_by_state(session)
    waiting: dict[str, int] = {}
    for (state, platform), n in active.items():
        if state == JobState.DEP_WAIT.value:
            waiting[platform] = n
    return render(request, "workers.html", who, workers=found, depths=depths, waiting=waiting,
                  lost_after=app_settings(request).lost_after, now=queries.now())


@router.get("/ui/channels", response_model=None)
def channels_page(request: Request, channel: str = Query("", max_length=64), before: int | None = None) -> Response:
    from farm.index.channels import layout

    who = viewer(request)
    if who is None:
        return _signin_redirect(request)
    lay = layout(app_settings(request))
    with session_scope() as session:
        counts = queries.channel_counts(session)
        entries, older = queries.channel_entries(session, channel=channel or None, before=_id(before))
    params = {"channel": channel} if channel else {}
    for e in entries:  # the channel a promotion of this entry goes to: the next one up
        i = lay.channels.index(e["channel"]) if e["channel"] in lay.channels else len(lay.channels)
        e["next"] = lay.channels[i + 1] if i + 1 < len(lay.channels) else None
    here = "/ui/channels" + (f"?{request.url.query}" if request.url.query else "")
    return render(request, "channels.html", who, layout=lay, counts=counts, entries=entries, channel=channel, here=here,
                  older=f"/ui/channels?{urlencode({**params, 'before': older})}" if older else None)
