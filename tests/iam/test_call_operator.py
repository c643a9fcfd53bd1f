"""The built-in call-operator role: everything of the voice robot, read elsewhere, no PII, no iam."""

from __future__ import annotations

from fastapi.testclient import TestClient

from central.hub import Hub
from tests.helpers import auth, token_for


def test_call_operator_scope(hub: Hub, client: TestClient) -> None:
    h = auth(token_for(hub, "caller1", role="call_operator", org="/city/district-a"))
    me = client.get("/api/v1/iam/me", headers=h).json()
    perms = set(me["permissions"])
    assert {"dialer.run", "dialer.design"} <= perms
    assert "pii.read" not in perms and "audit.read" not in perms
    assert not any(p.startswith("iam.") and not p.endswith(".read") for p in perms)
    assert me["scopes"]["dialer.run"] == ["/city/district-a"]
    assert client.get("/api/v1/iam/audit", headers=h).status_code == 403
