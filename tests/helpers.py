"""Test helpers shared by every capability's tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from central.hub import Hub


def token_for(hub: Hub, username: str, role: str = "city_admin", org: str = "/city") -> str:
    """A bearer session token for `username` holding `role` over `org`: creates the org chain, the user
    (no usable password, no forced change) and a root binding when missing. Send it as
    `Authorization: Bearer <token>`."""
    from central.iam.service import service_of

    return service_of(hub).session_for(username, role, org)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy (returned) or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
