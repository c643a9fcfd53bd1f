"""FastAPI app factory. Each capability folder with a `routes.py` is mounted at `/api/v1/<name>`
(or at its module-level `PREFIX`); its optional `service.setup(hub)` wires hooks, its optional
`routes.install(app, hub)` adds middleware or pages."""

from __future__ import annotations

import fcntl
import functools
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Literal

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from central import capabilities, errors, metrics
from central.hub import Hub, Worker
from central.iam.deps import public
from central.observe_http import RequestMiddleware, route_templates
from central.schema import Out
from central.settings import Settings, get_settings
from central.store import describe, migrations

log = logging.getLogger("citybrain.app")


# The workers a hub may run in every process of a multi-process `hub serve`: the webhook sender claims
# deliveries under leases, the video correlator claims the one cursor row (one works at a time), and the
# video alert sender drains its own process's queue (a dispatch answered by this process queued it). The
# others run once per host: in the primary process only (see `claim_primary`), until they lease their work
# too; a capability whose worker becomes safe to run N times adds its name here.
EVERY_PROCESS_WORKERS = frozenset({"webhooks-deliver", "video-correlator", "video-alerts"})
# `hub serve --workers N` hands its worker processes what it was given (settings file, options) as JSON here.
SERVE_ENV = "CITYBRAIN_SERVE"
PRIMARY_LOCK = "serve-primary.lock"
_primary_lock: IO[str] | None = None  # held open for the life of the process that is the primary


class SecondaryHub(Hub):
    """The hub of a serve process that is not the primary: it registers only EVERY_PROCESS_WORKERS (the
    bridge, which joins the shared ingest group, is started by `start` as in any hub)."""

    def add_worker(self, worker: Worker) -> Worker:
        if worker.name in EVERY_PROCESS_WORKERS:
            return super().add_worker(worker)
        log.debug("worker %s runs in the primary serve process only", worker.name)
        return worker


def claim_primary(data_dir: Path) -> bool:
    """Whether this process is its host's primary `hub serve` process: the first to take the exclusive
    lock on data_dir/serve-primary.lock. The kernel frees the lock when the process ends, so the worker
    uvicorn starts in place of a dead one can take it over."""
    global _primary_lock
    if _primary_lock is not None:
        return True
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / PRIMARY_LOCK, "a")  # noqa: SIM115  held open for the process's life
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    _primary_lock = f
    return True


def serve_role(settings: Settings, may_be_primary: bool) -> bool:
    """Whether this `hub serve` process is the primary (it may be and claims the lock), logged."""
    primary = may_be_primary and claim_primary(settings.data_dir)
    role = "primary (runs the once-only workers)" if primary else \
        f"secondary (runs only {', '.join(sorted(EVERY_PROCESS_WORKERS))})"
    log.info("hub serve process %d: %s", os.getpid(), role)
    return primary


def build_hub(settings: Settings | None = None, migrate: bool = True, primary: bool = True) -> Hub:
    """A hub with every capability's hooks wired (migrated first unless `migrate` is False: `hub serve
    --workers N` migrates once in its parent); used by the app, the CLI and tests. `primary` False: a
    SecondaryHub, without the workers that must run once."""
    hub = (Hub if primary else SecondaryHub)(settings or get_settings())
    if migrate:
        hub.store.migrate()
    for _cap, svc in capabilities.modules("service"):
        if hasattr(svc, "setup"):
            svc.setup(hub)
    return hub


class Health(Out):
    """The hub is up and its database answers; `db` names it (PostgreSQL without its password)."""

    ok: bool
    db: str
    mqtt_connected: bool | None  # None: this process runs no MQTT bridge


class Check(Out):
    """One part a ready hub needs, and what is wrong with it when `ok` is false."""

    name: Literal["store", "migrations", "broker", "workers"]
    ok: bool
    detail: str


class Ready(Out):
    """Whether this process should be sent traffic: every check passes (503 with the same body otherwise)."""

    ready: bool
    checks: list[Check]


def readiness(hub: Hub, bridge: bool) -> Ready:
    """The store answers, its schema is at the code's Alembic head, the broker is connected (when this
    process runs the bridge) and every worker the hub started is alive."""
    checks: list[Check] = []
    try:
        hub.store.ping()
        checks.append(Check(name="store", ok=True, detail=describe(hub.store.url)))
        rev = migrations.versions(hub.store)["alembic"]
        at_head = rev == migration_head()
        checks.append(Check(name="migrations", ok=at_head,
                            detail=f"at {rev}" + ("" if at_head else f", code needs {migration_head()}")))
    except Exception as e:  # noqa: BLE001  any failure to reach the store is "not ready", with its reason
        checks.append(Check(name="store", ok=False, detail=f"{type(e).__name__}: {e}"[:300]))
    if bridge:
        w = hub.worker("mqtt-bridge")
        up = bool(w is not None and getattr(w, "connected", False))
        checks.append(Check(name="broker", ok=up, detail=f"{hub.settings.mqtt.host}:{hub.settings.mqtt.port}"
                            + ("" if up else " not connected")))
    dead = [w.name for w in hub.workers if getattr(w, "alive", True) is False] if hub.running else ["hub stopped"]
    checks.append(Check(name="workers", ok=not dead, detail=f"{len(hub.workers)} running" if not dead
                        else "not alive: " + ", ".join(dead)))
    return Ready(ready=all(c.ok for c in checks), checks=checks)


@functools.cache
def migration_head() -> str:
    return migrations.head()


OPENAPI_URL = "/api/v1/openapi.json"
DOCS_ASSETS = "/docs/assets"


def api_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc with their JavaScript and CSS served by the hub (the copies
    the fastapi-offline package ships), and the OpenAPI document also at /openapi.json, where tools look."""
    import fastapi_offline

    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs-assets")
    title = f"{app.title} — API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=title,
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                                   oauth2_redirect_url="/docs/oauth2-redirect")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=title, redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())


def operation_id(route: APIRoute) -> str:
    """`<capability>_<function>` (registry_register, codes_apply): the names a generated client's calls get,
    stable while a route's function keeps its name."""
    return f"{route.tags[0]}_{route.name}" if route.tags else route.name


def factory() -> FastAPI:
    """The app of one `hub serve --workers N` process (uvicorn calls it in each worker): settings as the
    parent resolved them (its file and options, passed in CITYBRAIN_SERVE, over this environment), the
    store already migrated by the parent, the once-only workers in the process that claims the primary lock."""
    from central.observe import configure_logging
    from central.settings import load_settings

    given = json.loads(os.environ.get(SERVE_ENV) or "{}")
    config = given.get("config")
    settings = load_settings(Path(config) if config else None, **given.get("options", {}))
    configure_logging(settings.log_format)
    # uvicorn switched its access lines off (access_log=False) before this re-routed its loggers: again off,
    # the hub writes its own access line per request
    logging.getLogger("uvicorn.access").propagate = False
    primary = serve_role(settings, bool(given.get("primary", True)))
    return create_app(hub=build_hub(settings, migrate=False, primary=primary), start_bridge=given.get("bridge"))


def create_app(settings: Settings | None = None, hub: Hub | None = None, start_bridge: bool | None = None) -> FastAPI:
    hub = hub or build_hub(settings)
    run_bridge = hub.settings.mqtt.enabled if start_bridge is None else start_bridge

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The hub owns its workers: started here, stopped and joined before the app (and its store) go.
        hub.start(bridge=run_bridge)
        try:
            yield
        finally:
            hub.stop()

    app = FastAPI(
        title="City Brain hub",
        version="0.1.0",
        docs_url=None,  # served below from the hub's own copies of the assets (no CDN: the hub may be offline)
        redoc_url=None,
        openapi_url=OPENAPI_URL,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.hub = hub

    @app.get("/healthz", tags=["health"], response_model=Health,
             dependencies=[Depends(public("liveness probe"))])
    def healthz() -> dict[str, object]:
        """Liveness: the process serves requests (no store or broker involved: see /readyz for those)."""
        bridge_state = getattr(hub.publisher, "connected", None)
        db = str(hub.settings.database) if hub.store.dialect == "sqlite" else describe(hub.store.url)
        return {"ok": True, "db": db, "mqtt_connected": bridge_state}

    @app.get("/readyz", tags=["health"], response_model=Ready, dependencies=[Depends(public("readiness probe"))],
             responses={503: {"model": Ready, "description": "Not ready: the checks say what is down"}})
    def readyz() -> JSONResponse:
        r = readiness(hub, run_bridge)
        return JSONResponse(r.model_dump(mode="json"), status_code=200 if r.ready else 503)

    token = hub.settings.security.metrics_token

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             dependencies=[Depends(public("Prometheus scrapes it; a bearer token when security.metrics_token"))],
             responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    def prometheus_metrics(authorization: str | None = Header(default=None)) -> Response:
        if token is not None and not hmac.compare_digest(authorization or "", f"Bearer {token}"):
            raise HTTPException(401, "metrics: a bearer token is required (security.metrics_token)",
                                headers={"WWW-Authenticate": "Bearer"})
        return Response(hub.metrics.render(), media_type=metrics.CONTENT_TYPE)

    api_docs(app)
    for cap, routes in capabilities.modules("routes"):
        if hasattr(routes, "router"):
            prefix = getattr(routes, "PREFIX", f"/api/v1/{cap}")
            app.include_router(routes.router, prefix=prefix, tags=[cap])
        if hasattr(routes, "install"):
            routes.install(app, hub)
    errors.install(app, hub.settings.security.max_body_bytes)  # last: it reads the mounted routes
    # outermost: its request id and timing cover everything, the error handlers' answers included
    app.add_middleware(RequestMiddleware, metrics=hub.metrics, templates=route_templates(app.routes))
    return app
