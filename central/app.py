"""FastAPI app factory. Each capability folder with a `routes.py` is mounted at `/api/v1/<name>`
(or at its module-level `PREFIX`); its optional `service.setup(hub)` wires hooks, its optional
`routes.install(app, hub)` adds middleware or pages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from central import capabilities, errors
from central.hub import Hub
from central.schema import Out
from central.settings import Settings, get_settings
from central.store import describe

log = logging.getLogger("citybrain.app")


def build_hub(settings: Settings | None = None) -> Hub:
    """A migrated hub with every capability's hooks wired; used by the app, the CLI and tests."""
    hub = Hub(settings or get_settings())
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


def operation_id(route: APIRoute) -> str:
    """`<capability>_<function>` (registry_register, codes_apply): the names a generated client's calls get,
    stable while a route's function keeps its name."""
    return f"{route.tags[0]}_{route.name}" if route.tags else route.name


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
        docs_url="/docs",
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.hub = hub

    @app.get("/healthz", tags=["health"], response_model=Health)
    def healthz() -> dict[str, object]:
        hub.store.ping()
        bridge_state = getattr(hub.publisher, "connected", None)
        db = str(hub.settings.database) if hub.store.dialect == "sqlite" else describe(hub.store.url)
        return {"ok": True, "db": db, "mqtt_connected": bridge_state}

    for cap, routes in capabilities.modules("routes"):
        if hasattr(routes, "router"):
            prefix = getattr(routes, "PREFIX", f"/api/v1/{cap}")
            app.include_router(routes.router, prefix=prefix, tags=[cap])
        if hasattr(routes, "install"):
            routes.install(app, hub)
    errors.install(app, hub.settings.security.max_body_bytes)  # last: it reads the mounted routes
    return app
