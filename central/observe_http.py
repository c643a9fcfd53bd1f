"""The HTTP side of central.observe: one plain ASGI middleware (no BaseHTTPMiddleware) that gives each
request its id (`X-Request-ID`, the caller's when it is a sane token), times it into the route's histogram
and writes the access log line inside the request's context (so the line carries the id). The context
variable reaches sync routes because Starlette copies the context into the thread that runs them."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from central.observe import REQUEST_ID

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from central.metrics import Metrics

access = logging.getLogger("citybrain.http")
HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:-]{8,64}")  # a caller's id is logged and audited: no spaces, no control chars


def route_templates(routes: list[Any]) -> dict[int, str]:
    """id(route object a request is matched to) -> its full path template: FastAPI >= 0.160 matches
    included routers' own route objects, whose `path` lacks the router's prefix."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover  older FastAPI copies included routes with their full path
        return {id(r): r.path for r in routes if hasattr(r, "path")}
    out: dict[int, str] = {}
    for rc in iter_route_contexts(routes):
        route = getattr(rc, "original_route", rc)
        path = getattr(rc, "path_format", None) or getattr(route, "path", None)
        if path:
            out.setdefault(id(route), path)
    return out


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, templates: dict[int, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), b"")
        rid = given.decode() if _SANE.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(rid)
        status = 500  # what the client sees if the app dies before it starts an answer
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            took = time.perf_counter() - t0
            route = scope.get("route")
            # the route's template, never the raw path: ids in paths would make a series per object
            template = "unmatched" if route is None else self.templates.get(id(route)) or getattr(route, "path", "?")
            self.metrics.observe_http(template, scope["method"], status, took)
            # the access log line, written inside the request's context so it carries the request id
            if access.isEnabledFor(logging.INFO):
                access.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, took * 1000,
                            extra={"method": scope["method"], "path": scope["path"], "route": template,
                                   "status": status, "ms": round(took * 1000, 2)})
            REQUEST_ID.reset(token)
