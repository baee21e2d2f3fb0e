"""Serving the channel and virtual-index trees (farm/index/channels.py) at /<name>/simple/.

`index/trees.json` maps each name to its folder: "." for the first channel (the top-level tree,
so /staging/simple/ and /simple/ are the same pages), the name itself for the others. Names are
looked up when first asked for and the app for each is kept; a tree made later (a new virtual
index) is found without a restart. A static web server needs one alias for the first channel
(nginx: `location /staging/ { alias /srv/farm/index/; }`) and serves the rest as they are.
Only a tree name (farm/util/names.py) listed there is served, so no request, and no edited
`trees.json`, reaches a folder outside the index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from farm.util.names import is_tree_name

TREES_JSON = "trees.json"


def tree_dispatcher(root: Path, make_app: Callable[[Path], ASGIApp]) -> ASGIApp:
    """An ASGI app for `Mount("/{tree}", ...)`: hands the request to the named tree's index app."""
    apps: dict[str, ASGIApp] = {}
    manifest: dict[str, Any] = {"mtime": None, "trees": {}}

    def refresh() -> None:
        path = root / TREES_JSON
        try:
            mtime: int | None = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != manifest["mtime"]:
            try:
                trees = json.loads(path.read_bytes()).get("trees", {})
            except (FileNotFoundError, ValueError, AttributeError):
                trees = {}
            manifest["trees"] = trees if isinstance(trees, dict) else {}
            manifest["mtime"] = mtime
            apps.clear()

    def folder_of(name: str) -> Path | None:
        if not is_tree_name(name):
            return None
        rel = manifest["trees"].get(name)
        if not isinstance(rel, str) or rel not in (".", name):
            return None
        folder = root if rel == "." else root / rel
        return folder if (folder / "simple").is_dir() else None

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("tree", "")
        refresh()
        app = apps.get(name)
        if app is None:
            folder = folder_of(name)
            if folder is None:
                missing = PlainTextResponse("404 Not Found: no such channel or index\n", status_code=404)
                await missing(scope, receive, send)
                return
            app = apps[name] = make_app(folder)
        await app(scope, receive, send)

    return dispatch
