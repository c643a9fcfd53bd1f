"""The cast of the access-control attack tests (issue 14, point 2): a city admin, two district admins and
a street admin of district A, all with real sessions (tests.helpers.token_for), against one hub."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from central.hub import Hub
from tests.helpers import auth, token_for

A, B = "/city/district-a", "/city/district-b"
STREET = A + "/street-1"
PW = "Initial-Pass-2024!"
NEW_PW = "Taken-Over-2024!x"
API = "/api/v1"


def id_card(n: int, region: str = "330106", birth: str = "19900101") -> str:
    """A valid 18-digit ID-card number (GB 11643 check digit)."""
    from central.registry.ids import id_card_check

    body = f"{region}{birth}{n % 1000:03d}"
    return body + id_card_check(body)


class Cast:
    def __init__(self, hub: Hub, client: TestClient) -> None:
        self.hub, self.c = hub, client
        self.iam = hub.services["iam"]
        self.city = auth(token_for(hub, "root", "city_admin", "/city"))
        self.city2 = auth(token_for(hub, "root2", "city_admin", "/city"))  # a second approver
        self.admin_a = auth(token_for(hub, "admin-a", "district_admin", A))
        self.admin_b = auth(token_for(hub, "admin-b", "district_admin", B))
        # "street admin": full rights, but only over one street of district A
        self.street = auth(token_for(hub, "street-a", "district_admin", STREET))

    def user(self, name: str, home: str, *bindings: tuple[str, str]) -> None:
        """An account homed at `home` holding root bindings (role, org), made by the hub's operator."""
        self.iam.ensure_org_chain(home)
        uid = self.iam.create_user(None, name, PW, home, must_change=False)
        for role, org in bindings:
            self.iam.grant_root(uid, role, org)

    def token(self, name: str, role: str, org: str) -> dict[str, str]:
        return auth(token_for(self.hub, name, role, org))

    def post(self, path: str, headers: dict[str, str], json: Any = None) -> Any:
        return self.c.post(API + path, headers=headers, json=json)

    def get(self, path: str, headers: dict[str, str], **kw: Any) -> Any:
        return self.c.get(API + path, headers=headers, **kw)

    def ok(self, r: Any, status: int = 200) -> Any:
        assert r.status_code == status, f"{r.status_code} {r.text}"
        return r.json()
