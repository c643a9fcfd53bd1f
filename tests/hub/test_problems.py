"""Every 4xx and 5xx of the hub's HTTP API is RFC 9457 problem details (central.problems, central.errors):
`application/problem+json` with type, title, status and a string detail, plus the failing fields."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from central.app import create_app
from central.codes.service import CodesError, CodesService
from central.hub import Hub
from central.problems import PREFIX, HubError, kind
from tests.helpers import auth, token_for

API = "/api/v1"


def is_problem(r: Response, status: int, *, field: str | None = None) -> dict[str, Any]:
    """The answer is problem details for `status`; with `field`, that field is among the failing ones."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == "application/problem+json", r.headers
    body = r.json()
    assert body["status"] == status and body["type"] == kind(status)[0] and body["type"].startswith(PREFIX), body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]] and all("message" in e for e in body["errors"]), body
        assert body["field"] == body["errors"][0]["field"], body
    return body


@pytest.fixture
def app_client(hub: Hub) -> Iterator[TestClient]:
    # raise_server_exceptions=False: see the 500 the hub answers, not the exception the test client re-raises
    with TestClient(create_app(hub=hub, start_bridge=False), raise_server_exceptions=False) as c:
        yield c


def test_framework_errors_are_problems(app_client: TestClient, hub: Hub) -> None:
    admin = auth(token_for(hub, "p-admin"))
    is_problem(app_client.get(f"{API}/no-such-capability", headers=admin), 404)
    assert is_problem(app_client.get(f"{API}/no-such", headers=admin), 404)["detail"] == "Not Found"  # console.js
    r = app_client.delete("/healthz")
    assert is_problem(r, 405) and "GET" in r.headers["allow"]
    # no credentials: 401 keeps its WWW-Authenticate challenge
    r = app_client.get(f"{API}/iam/me")
    assert is_problem(r, 401) and r.headers["www-authenticate"] == "Bearer"
    # a body over the limit is refused by middleware, before any route: the same shape
    r = app_client.post(f"{API}/iam/orgs", headers={**admin, "Content-Length": str(10**9)}, content=b"{}")
    is_problem(r, 413)


def test_validation_errors_keep_their_items_in_errors(app_client: TestClient, hub: Hub) -> None:
    admin = auth(token_for(hub, "p-admin"))
    body = is_problem(app_client.post(f"{API}/registry/entities", headers=admin, json={"type": "ship"}), 422,
                      field="type")
    item = next(e for e in body["errors"] if e["field"] == "type")
    assert item["loc"] == ["body", "type"] and item["input"] == "ship" and item["type"] and item["message"]
    assert body["detail"].startswith(body["field"] + ": "), body  # a human sentence naming the first field
    # the input guard (before routing) answers alike
    body = is_problem(app_client.get(f"{API}/registry/search", params={"q": "a\x00b"}, headers=admin), 422, field="q")
    assert body["errors"][0]["loc"] == ["query", "q"]


def test_service_refusals_are_problems(app_client: TestClient, hub: Hub) -> None:
    admin = auth(token_for(hub, "p-admin"))
    # not found, from three services (codes, dialer, iam), each naming the field
    is_problem(app_client.get(f"{API}/codes/applications/999999", headers=admin), 404, field="application_id")
    is_problem(app_client.get(f"{API}/dialer/tasks/999999", headers=admin), 404, field="task_id")
    # conflict
    org = {"parent": "/city", "slug": "p-district", "name": "P"}
    assert app_client.post(f"{API}/iam/orgs", headers=admin, json=org).status_code == 201
    is_problem(app_client.post(f"{API}/iam/orgs", headers=admin, json=org), 409, field="slug")
    # registry: a mistyped id is a 400 naming the field
    is_problem(app_client.get(f"{API}/registry/entities/not-an-id", headers=admin), 400, field="id")


def test_authorization_refusals_are_problems(app_client: TestClient, hub: Hub) -> None:
    outsider = auth(token_for(hub, "p-outsider", role="auditor", org="/city/p-elsewhere"))
    # forbidden: the permission is held nowhere (iam.deps.require)
    r = app_client.post(f"{API}/iam/orgs", headers=outsider, json={"parent": "/city", "slug": "x", "name": "x"})
    assert "iam.orgs.write" in is_problem(r, 403)["detail"]
    # the dialer's own scope check keeps its field
    r = app_client.post(f"{API}/dialer/dnc", headers=auth(token_for(hub, "p-caller", role="call_operator",
                                                                    org="/city/p-a")),
                        json={"phone": "13800000000", "org": "/city/p-b", "reason": "asked"})
    is_problem(r, 403, field="org")


def test_an_unhandled_error_is_a_500_that_tells_nothing(app_client: TestClient, hub: Hub,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: CodesService, *a: object, **kw: object) -> None:
        raise RuntimeError("secret internals /var/lib/citybrain")

    monkeypatch.setattr(CodesService, "departments", broken)
    with caplog.at_level(logging.ERROR, logger="citybrain.errors"):
        r = app_client.get(f"{API}/codes/departments", headers=auth(token_for(hub, "p-admin")))
    body = is_problem(r, 500)
    assert "secret" not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text
    rid = r.headers["x-request-id"]
    assert rid in body["detail"] and body["instance"].replace("-", "").endswith(rid)
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret internals" in str(logged[0].exc_info[1])


def test_a_closed_store_is_a_503_problem(hub: Hub) -> None:
    h = auth(token_for(hub, "p-late"))
    with TestClient(create_app(hub=hub, start_bridge=False), raise_server_exceptions=False) as c:
        assert c.get(f"{API}/iam/me", headers=h).status_code == 200
        hub.store.close()
        r = c.get(f"{API}/iam/me", headers=h)
    assert is_problem(r, 503) and r.headers["retry-after"] == "5"


def test_capability_errors_are_hub_errors() -> None:
    """Each capability's error class keeps its name and constructor and says its status as problem details."""
    from central.channel.service import ChannelError
    from central.devices.service import DeviceError
    from central.dialer.service import DialerError
    from central.iam.service import Locked
    from central.registry.service import NotFound as RegistryNotFound
    from central.video.service import VideoError

    cases: list[tuple[HubError, int, str | None]] = [
        (CodesError(409, "duty", "not in the catalogue"), 409, "duty"),
        (DialerError("phone", "on the do-not-call list", 409), 409, "phone"),
        (RegistryNotFound("entity_id", "no entity"), 404, "entity_id"),
        (DeviceError("site", "belongs to another org", 403), 403, "site"),
        (ChannelError(403, "text", "revoked"), 403, "text"),
        (VideoError(410, "snapshot: missing or damaged"), 410, None),
        (Locked("account locked; retry later"), 423, None),
    ]
    for err, status, field in cases:
        p = err.problem()
        assert (p["status"], p["type"], p.get("field")) == (status, kind(status)[0], field), p
        assert isinstance(p["detail"], str) and p["detail"]
    assert isinstance(DialerError("x", "y"), ValueError)  # callers that catch ValueError still do
