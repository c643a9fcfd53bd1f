"""FastAPI dependencies every capability's routes share. Routes only: services and the hub never import
FastAPI (they are driven by the CLI, workers and tests too)."""

from __future__ import annotations

from fastapi import Request

from central.hub import Hub


def get_hub(request: Request) -> Hub:
    """The hub this app was built around (`create_app` puts it on app.state)."""
    return request.app.state.hub
