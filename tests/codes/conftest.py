"""Fixtures for city-code tests: a hub (crypto profile parametrizable), a client, and a city set up with
one department whose scene is approved."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.hub import Hub
from tests.conftest import make_settings
from tests.helpers import auth, token_for


def make_hub(tmp_path: Path, profile: str = "intl") -> Hub:
    from central.app import build_hub
    from central.settings import SecuritySettings, WebhooksSettings

    # Tests deliver webhooks by calling the outbox's deliver_due() themselves (no background sender).
    return build_hub(make_settings(tmp_path, security=SecuritySettings(crypto_profile=profile),
                                   webhooks=WebhooksSettings(worker=False)))


@pytest.fixture(params=["intl"])
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def chub(tmp_path: Path, profile: str) -> Iterator[Hub]:
    h = make_hub(tmp_path, profile)
    yield h
    h.close()


@pytest.fixture
def cclient(chub: Hub) -> Iterator[TestClient]:
    from central.app import create_app

    with TestClient(create_app(hub=chub, start_bridge=False)) as c:
        yield c


class City:
    """Tokens and one approved scene: HEALTH may issue person codes for 'clinic.pass' (code system HC)."""

    def __init__(self, hub: Hub, client: TestClient) -> None:
        self.hub, self.c = hub, client
        self.admin = auth(token_for(hub, "cityadmin", role="city_admin", org="/city"))
        self.issuer = auth(token_for(hub, "nurse", role="department_issuer", org="/city/health"))
        self.outsider = auth(token_for(hub, "roads", role="department_issuer", org="/city/roads"))

    def ok(self, r: Any, status: int = 200) -> Any:
        assert r.status_code == status, r.text
        return r.json()

    def department(self, dept_id: str = "HEALTH", org: str = "/city/health", webhook_url: str | None = None) -> Any:
        return self.ok(
            self.c.post(
                "/api/v1/codes/departments",
                headers=self.admin,
                json={"id": dept_id, "name": dept_id.title(), "org": org, "webhook_url": webhook_url},
            ),
            201,
        )

    def duties(self, rows: list[tuple[str, str]]) -> None:
        csv_body = "dept_id,scene_type,description\n" + "".join(f"{d},{s},duty\n" for d, s in rows)
        self.ok(
            self.c.post("/api/v1/codes/duties", headers={**self.admin, "Content-Type": "text/csv"}, content=csv_body)
        )

    def apply(
        self,
        dept_id: str = "HEALTH",
        scene_type: str = "clinic.pass",
        share: bool = True,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        body = {
            "dept_id": dept_id,
            "scene_name": "Clinic pass",
            "scene_type": scene_type,
            "code_type": "static",
            "entity_type": "person",
            "purpose": "entry to clinics",
            "share_commitment": share,
            "validity": "Y",
            **kw,
        }
        return self.ok(self.c.post("/api/v1/codes/applications", headers=headers or self.issuer, json=body), 201)

    def approve(self, app_id: int, code_system: str = "HC") -> Any:
        return self.c.post(
            f"/api/v1/codes/applications/{app_id}/decision",
            headers=self.admin,
            json={"approve": True, "code_system": code_system},
        )

    def approved_scene(self) -> int:
        self.department()
        self.duties([("HEALTH", "clinic.pass")])
        app = self.apply()
        self.ok(self.approve(app["id"]))
        return int(app["id"])

    def issue(self, app_id: int, identity_id: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.c.post(
            "/api/v1/codes/issue",
            headers=headers or self.issuer,
            json={"application_id": app_id, "identity_id": identity_id, **kw},
        )

    def verify(self, text: str, headers: dict[str, str] | None = None) -> Any:
        return self.ok(self.c.post("/api/v1/codes/verify", headers=headers or self.issuer, json={"text": text}))


@pytest.fixture
def city(chub: Hub, cclient: TestClient) -> City:
    return City(chub, cclient)


_serial = iter(range(1, 10**9))


def register_entity(hub: Hub, etype: str = "person", name: str = "Zhang San", status: str = "active") -> str:
    """A registry entity row (the registry's own API is another capability; its table is the contract)."""
    from datetime import UTC, datetime

    from central.registry.ids import make_id

    eid = make_id(etype, "310101", next(_serial))
    now = datetime.now(UTC).isoformat()
    cols = ("id", "type", "region", "name", "org", "status", "created_by", "created_at", "updated_at")
    entities = sa.table("registry_entities", *map(sa.column, cols))  # by name: the registry owns the Table
    with hub.store.tx() as db:
        db.run(sa.insert(entities).values(id=eid, type=etype, region="310101", name=name, org="/city", status=status,
                                          created_by="test", created_at=now, updated_at=now))
    return eid
