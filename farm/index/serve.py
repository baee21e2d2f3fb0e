"""Serve the static index written by `farm.index.simple` (PEP 503 / PEP 691) as an ASGI app.

    /simple/                  the project list      (HTML or JSON, by the Accept header)
    /simple/<project>/        one project's files   (HTML or JSON, by the Accept header)
    /files/<project>/<file>   the distributions and their `.metadata` and `.provenance` files
    /keys/farm.pub            the farm's public key (farm/provenance/keys.py)
    /<tree>/simple/ ...       channels and virtual indexes (farm/index/channels.py)

A private channel (`private_channels`), and a virtual index that lists one, is served only to a
token of role read or more for it (the API's guard, farm/api/auth.py `index_guard`): none or an
unknown one 401 with `WWW-Authenticate: Basic`, a token for another channel 403. pip, uv and the
others send it from the index URL (`http://__token__:TOKEN@host/<channel>/simple/`), PIP_INDEX_URL or
.netrc. A static web server in front knows nothing of tokens: serve private channels from the API.

`/simple` and `/simple/<project>` redirect to the slash form, and non-normalized project names to
the normalized one. A name that cannot be a project (farm/util/names.py) is 404 before any file is
looked up, and so is a file in a tree whose folder does not exist yet (a channel before its first
promotion, keys before `farm init`). Pages are read whole before the response starts, so a page
that is replaced while it is being sent is still sent as one consistent version.

HTTP: the format comes from `?format=` (a literal `+` in it is a `+`, as clients send media types
unescaped) or else the Accept header; pages are gzipped for clients that accept it; every answer
carries ETag and Last-Modified, and `If-None-Match` (`*` included) and `If-Modified-Since` get 304.
Provenance links a page holds below the placeholder origin (a farm without `public_url`) are served
absolute, from the request's own URL (`simple.absolute_provenance`). Media types: pages as negotiated, distributions
`application/octet-stream` (as PyPI), `.metadata` `text/plain`, provenance JSON `application/json`,
the in-toto bundle `.intoto.jsonl` `application/jsonl` (JSON Lines), keys `text/plain`.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urljoin

from packaging.utils import canonicalize_name
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.datastructures import Headers
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import NotModifiedResponse, PathLike, StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from farm.index.serve_trees import tree_dispatcher
from farm.index.simple import HTML_TYPE, JSON_TYPE, absolute_provenance
from farm.util.names import project_name_problem

TEXT_HTML = "text/html"

# What the index can answer with, in the order it prefers on a tie (HTML is the default).
OFFERS: tuple[str, ...] = (TEXT_HTML, HTML_TYPE, JSON_TYPE)
_FILE_OF = {TEXT_HTML: "index.html", HTML_TYPE: "index.html", JSON_TYPE: "index.json"}
_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_TYPE,
    "application/vnd.pypi.simple.latest+html": HTML_TYPE,
}


def negotiate(accept: str | None, offers: Sequence[str] = OFFERS) -> str | None:
    """The media type of `offers` that the Accept header value `accept` prefers; None if none fits.

    No header (or an empty one) means HTML. Each offer takes the q-value of the most specific
    Accept entry matching it (`type/subtype` over `type/*` over `*/*`); the highest q wins, a tie
    goes to the entry the client listed first, then to the order of `offers`. q=0 excludes.
    """
    if accept is None or not accept.strip():
        return offers[0]
    entries: list[tuple[str, str, float, int]] = []  # type, subtype, q, position
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        media = _ALIASES.get(media.lower(), media.lower())
        if "/" not in media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if not 0.0 <= q <= 1.0:
            continue
        type_, _, subtype = media.partition("/")
        entries.append((type_, subtype, q, position))
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for rank, offer in enumerate(offers):
        o_type, _, o_sub = offer.partition("/")
        match: tuple[int, float, int] | None = None  # specificity, q, position
        for type_, subtype, q, position in entries:
            if type_ == o_type and subtype == o_sub:
                specificity = 2
            elif type_ == o_type and subtype == "*":
                specificity = 1
            elif type_ == "*" and subtype == "*":
                specificity = 0
            else:
                continue
            if match is None or specificity > match[0]:
                match = (specificity, q, position)
        if match is None or match[1] <= 0.0:
            continue
        key = (-match[1], match[2], rank)
        if best is None or key < best:
            best, chosen = key, offer
    return chosen


# (the request, the tree it reads: "" for the top-level tree) -> an answer that refuses it, or None
Guard = Callable[[Request, str], Awaitable[Response | None]]


def index_app(root: Path, *, trees: bool = True, guard: Guard | None = None) -> ASGIApp:
    """An ASGI app serving the index below `root` (see `farm.index.simple` for the layout), and with
    `trees` the channel and virtual-index trees below it at /<name>/simple/ (farm/index/serve_trees.py).

    With `guard`, every request for a page or file is first shown to it with the tree it reads (""
    for the top-level tree, which is the first channel's); the public keys are never guarded. The
    API passes `farm.api.auth.index_guard` (private channels)."""
    app = _index_app(Path(root), trees=trees)
    if guard is None:
        return app

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            first = scope["path"].lstrip("/").split("/", 1)[0]
            if first != "keys":
                tree = "" if first in ("", "simple", "files") else first
                refusal = await guard(Request(scope), tree)
                if refusal is not None:
                    await refusal(scope, receive, send)
                    return
        await app(scope, receive, send)

    return guarded


def _index_app(root: Path, *, trees: bool) -> Starlette:
    simple = root / "simple"

    def page(request: Request, folder: Path, *, project: bool = False) -> Response:
        requested = format_param(request.scope.get("query_string", b"")) or request.headers.get("accept")
        media_type = negotiate(requested)
        if media_type is None:
            return PlainTextResponse(
                "406 Not Acceptable: this index serves " + ", ".join(OFFERS) + "\n",
                status_code=406,
                headers={"Vary": "Accept"},
            )
        path = folder / _FILE_OF[media_type]
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                body = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return _not_found("no such page")
        kind = _FILE_OF[media_type][6:]
        tree_url = urljoin(str(request.url), "../../") if project else ""
        compress = _accepts_gzip(request.headers.get("accept-encoding"))
        version = f"{st.st_mtime_ns:x}-{st.st_size:x}-{kind}"
        etag = f'"{version}-gz"' if compress else f'"{version}"'
        headers = {"Vary": "Accept, Accept-Encoding", "ETag": etag, "Cache-Control": "max-age=60, public",
                   "Last-Modified": formatdate(st.st_mtime, usegmt=True)}
        if _not_modified(request.headers, {f'"{version}"', f'"{version}-gz"'}, st.st_mtime):
            return Response(status_code=304, headers=headers)
        if project:
            body = absolute_provenance(body, kind, tree_url)
        if compress:
            body = _gzipped(path, etag, tree_url, body)
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=media_type, headers=headers)

    async def keys_list(request: Request) -> Response:
        try:
            names = sorted(p.name for p in (root / "keys").iterdir() if p.is_file() and not p.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        if not names:
            return _not_found("no public key yet: the farm signs nothing before `farm init` (or its first build)")
        return PlainTextResponse("".join(f"{n}\n" for n in names))

    async def root_page(request: Request) -> Response:
        return page(request, simple)

    async def project_page(request: Request) -> Response:
        given = request.path_params["project"]
        if problem := project_name_problem(given):
            return _not_found(problem)
        name = canonicalize_name(given)
        if given != name:
            return _redirect(request, given, f"{name}/")
        return page(request, simple / name, project=True)

    async def add_slash(request: Request) -> Response:
        given = request.path_params.get("project")
        if given is None:
            return _redirect(request, "simple", "simple/")
        if problem := project_name_problem(given):
            return _not_found(problem)
        return _redirect(request, given, f"{canonicalize_name(given)}/")

    async def home(request: Request) -> Response:
        return _redirect(request, "", "simple/")

    methods = ["GET", "HEAD"]
    return Starlette(
        routes=[
            Route("/", home, methods=methods),
            Route("/simple", add_slash, methods=methods),
            Route("/simple/", root_page, methods=methods),
            Route("/simple/{project}", add_slash, methods=methods),
            Route("/simple/{project}/", project_page, methods=methods),
            Mount("/files", app=Files(directory=root / "files", check_dir=False), name="files"),
            Route("/keys/", keys_list, methods=methods),
            Mount("/keys", app=Files(directory=root / "keys", check_dir=False), name="keys"),
            *([Mount("/{tree}", app=tree_dispatcher(root, lambda folder: _index_app(folder, trees=False)))]
              if trees else []),
        ]
    )


# Media types by the end of a file name, first match wins (Python's `mimetypes` knows no `.whl`, calls
# `.tar.gz` an uncompressed tar, and `.pub` a publisher document).
MEDIA_TYPES: tuple[tuple[str, str], ...] = (
    (".whl", "application/octet-stream"),
    (".tar.gz", "application/octet-stream"),
    (".zip", "application/octet-stream"),
    (".metadata", "text/plain; charset=utf-8"),
    (".provenance", "application/json"),
    (".provenance.json", "application/json"),
    (".intoto.jsonl", "application/jsonl"),
    (".json", "application/json"),
    (".pub", "text/plain; charset=utf-8"),
    (".pem", "text/plain; charset=utf-8"),
)


def media_type_of(filename: str) -> str:
    return next((t for end, t in MEDIA_TYPES if filename.endswith(end)), "application/octet-stream")


class Files(StaticFiles):
    """StaticFiles whose folder may not exist yet: 404 until it does (Starlette's answer is a 500), with
    the index's media types (`MEDIA_TYPES`). Starlette answers If-None-Match (`*` too) and
    If-Modified-Since with 304."""

    async def check_config(self) -> None:
        if self.directory is not None and os.path.isdir(self.directory):
            await super().check_config()

    def file_response(self, full_path: PathLike, stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result,
                                media_type=media_type_of(os.fspath(full_path)))
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


def format_param(query_string: bytes) -> str | None:
    """The `format` query parameter, with a `+` kept as a `+`: clients put media types such as
    `application/vnd.pypi.simple.v1+json` into the URL unescaped (form decoding would make it a space)."""
    for part in query_string.decode("latin-1").split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == "format" and value:
            return unquote(value)
    return None


def _accepts_gzip(header: str | None) -> bool:
    """Whether Accept-Encoding allows gzip (`gzip` or `*`, with a q-value above 0)."""
    if not header:
        return False
    best: tuple[int, float] | None = None  # (specificity, q)
    for item in header.split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        coding = coding.lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params:
            k, _, v = param.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        specificity = 0 if coding == "*" else 1
        if best is None or specificity > best[0]:
            best = (specificity, q)
    return best is not None and best[1] > 0.0


def _not_modified(headers: Headers, etags: set[str], mtime: float) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present (`*`: the page exists; either encoding's
    ETag names this version), else If-Modified-Since."""
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = _etags(inm)
        return "*" in tags or bool(etags & tags)
    ims = headers.get("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
        return since.tzinfo is not None and int(mtime) <= since.timestamp()
    return False


# (page path, ETag, tree URL) -> gzipped body: a page is compressed once per version and host, not per request.
_GZIPPED: dict[tuple[Path, str, str], bytes] = {}


def _gzipped(path: Path, etag: str, tree_url: str, body: bytes) -> bytes:
    key = (path, etag, tree_url)
    hit = _GZIPPED.get(key)
    if hit is None:
        if len(_GZIPPED) >= 256:
            _GZIPPED.clear()
        hit = _GZIPPED[key] = gzip.compress(body, compresslevel=6, mtime=0)
    return hit


def _not_found(reason: str) -> Response:
    return PlainTextResponse(f"404 Not Found: {reason}\n", status_code=404)


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


def _redirect(request: Request, last: str, replacement: str) -> Response:
    """Redirect to this URL with its last path segment `last` (plus any slash) made `replacement`."""
    path = request.url.path
    stem = path[: len(path.rstrip("/")) - len(last)] if last else path.rstrip("/") + "/"
    target = request.url.replace(path=stem + replacement)
    return RedirectResponse(str(target), status_code=301)
