"""Console pages: `/` -> `/console`, `/console/login`, `/console/<page>`, static assets under
`/console/static`. No `router` here: nothing is mounted under /api/v1 (the console is an API client)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from central.hub import Hub

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

# Page ids the console knows how to draw; a menu entry from /api/v1/iam/me for any other capability still
# gets a shell (it says there is no page for it yet) rather than a 404.
PAGES = {
    "home": "Home",
    "devices": "Devices",
    "registry": "Registry",
    "codes": "City codes",
    "video": "Video cases",
    "dialer": "Call tasks",
    "channel": "Access channels",
    "webhooks": "Webhooks",
    "iam": "Users & access",
    "audit": "Audit log",
}


def install(app: FastAPI, hub: Hub) -> None:
    app.mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="console-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)

    @app.get("/console/login", include_in_schema=False, response_class=HTMLResponse)
    def login(request: Request) -> Response:
        return templates.TemplateResponse(request, "login.html", {"title": "Sign in"})

    @app.get("/console", include_in_schema=False, response_class=HTMLResponse)
    @app.get("/console/{page}", include_in_schema=False, response_class=HTMLResponse)
    def page(request: Request, page: str = "home") -> Response:
        if not page.isascii() or not page.isalpha() or len(page) > 32:
            raise HTTPException(404, "no such console page")
        return templates.TemplateResponse(
            request, "shell.html", {"page": page, "title": PAGES.get(page, page.title()), "known": page in PAGES}
        )
