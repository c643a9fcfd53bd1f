"""The console: `/` -> `/console`, and the single-page app built from central/web/frontend (Vite) into
central/web/dist, served at `/console/` with every console path falling back to its index.html (the
app's router draws the page). `/api/v1/web/info` tells the app what it cannot know by itself (the hub's
time zone); everything else it shows comes from the other `/api/v1` routes with the user's token."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import Field

from central.deps import get_hub
from central.hub import Hub
from central.iam.deps import public
from central.schema import Out

HERE = Path(__file__).parent
DIST = HERE / "dist"
BUILD_HINT = "the console is not built: run ./run install (or: cd central/web/frontend && npm ci && npx vite build)"
log = logging.getLogger(__name__)

router = APIRouter()


class WebInfoOut(Out):
    """What the console needs to know about the hub before anyone signs in."""

    time_zone: str = Field(description="IANA name of the hub's time zone; the console shows dates in it")
    utc_offset_min: int = Field(description="the zone's offset from UTC now, in minutes")


@router.get("/info", response_model=WebInfoOut, dependencies=[Depends(public("the console reads it before sign-in"))])
def info(hub: Hub = Depends(get_hub)) -> dict[str, object]:
    name = hub.settings.timezone  # validated against the tz database when the settings load
    offset = datetime.now(ZoneInfo(name)).utcoffset()
    return {"time_zone": name, "utc_offset_min": int(offset.total_seconds() // 60) if offset else 0}


def _page_ok(path: str) -> bool:
    # Console routes are short ASCII words (`devices`, `registry`, `login`): anything else is no page.
    return all(p.isascii() and p.isalpha() and len(p) <= 32 for p in path.split("/")) if path else True


def install(app: FastAPI, hub: Hub) -> None:
    index = DIST / "index.html"
    if not index.exists():
        log.warning("%s", BUILD_HINT)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)

    @app.get("/console/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        # Vite names every asset by its content hash: a path is either one of those files or nothing.
        f = DIST / "assets" / name
        if "/" in name or name.startswith(".") or not f.is_file():
            raise HTTPException(404, "no such console asset")
        return FileResponse(f, headers={"cache-control": "public, max-age=31536000, immutable"})

    @app.get("/console", include_in_schema=False)
    @app.get("/console/{path:path}", include_in_schema=False)
    def spa(path: str = "") -> Response:
        if not _page_ok(path.strip("/")):
            raise HTTPException(404, "no such console page")
        if not index.exists():
            return PlainTextResponse(BUILD_HINT, status_code=503)
        # no-cache: a new build's index (naming new asset hashes) is picked up at once
        return FileResponse(index, media_type="text/html", headers={"cache-control": "no-cache"})
