"""Registry test helpers: valid external keys, a small city (place, enterprise, object) and clients
holding tokens for different scopes."""

from __future__ import annotations

import sys
from pathlib import Path

# `tests.helpers` needs the repo root on sys.path until pyproject sets pytest `pythonpath = ["."]`.
if str(Path(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from typing import Any  # noqa: E402

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from central.hub import Hub  # noqa: E402
from central.registry.ids import id_card_check, uscc_check  # noqa: E402
from tests.helpers import auth, token_for  # noqa: E402


def id_card(n: int, region: str = "330106", birth: str = "19900101") -> str:
    body = f"{region}{birth}{n % 1000:03d}"
    return body + id_card_check(body)


def uscc(n: int, region: str = "330106") -> str:
    body = f"9{1}{region}{n:09d}"
    return body + uscc_check(body)


class Api:
    """A TestClient bound to one principal's token."""

    def __init__(self, client: TestClient, token: str) -> None:
        self.c = client
        self.h = auth(token)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.c.post(f"/api/v1/registry{path}", json=json, headers=self.h, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.c.get(f"/api/v1/registry{path}", headers=self.h, **kw)

    def patch(self, path: str, json: Any) -> Any:
        return self.c.patch(f"/api/v1/registry{path}", json=json, headers=self.h)

    def delete(self, path: str) -> Any:
        return self.c.delete(f"/api/v1/registry{path}", headers=self.h)

    def ok(self, method: str, path: str, json: Any = None, **kw: Any) -> Any:
        fn = getattr(self, method)
        r = fn(path, json, **kw) if method in ("post", "patch") else fn(path, **kw)
        assert r.status_code < 300, (r.status_code, r.text)
        return r.json()


@pytest.fixture
def admin_a(hub: Hub, client: TestClient) -> Api:
    """District admin of district-a (everything inside it, including pii.read)."""
    return Api(client, token_for(hub, "admin-a", role="district_admin", org="/city/district-a"))


@pytest.fixture
def admin_b(hub: Hub, client: TestClient) -> Api:
    return Api(client, token_for(hub, "admin-b", role="district_admin", org="/city/district-b"))


@pytest.fixture
def city(admin_a: Api) -> dict[str, str]:
    """A building (place), its owner (enterprise), a person and a hydrant (object) in district-a."""
    bld = admin_a.ok("post", "/entities", {"type": "place", "region": "330106", "name": "Wensan Tower 文三大厦",
                                          "address": "Wensan Road 100, Xihu", "grid": "wtmkq8",
                                          "valid_from": "2020-01-01"})
    ent = admin_a.ok("post", "/entities", {"type": "enterprise", "region": "330106", "name": "Xihu Property Co",
                                          "external_key": uscc(1)})
    per = admin_a.ok("post", "/entities", {"type": "person", "region": "330106", "name": "Zhang San",
                                          "external_key": id_card(1), "phone": "13812345678"})
    hyd = admin_a.ok("post", "/entities", {
        "type": "object", "region": "330106", "name": "Hydrant F1-01 消防栓",
        "links": [{"rel": "contained_in", "target": bld["id"]}, {"rel": "managed_by", "target": ent["id"]}],
        "grid": "wtmkq8v1", "valid_from": "2024-01-01", "valid_to": "2030-01-01", "attrs": {"kind": "hydrant"},
    })
    return {"building": bld["id"], "enterprise": ent["id"], "person": per["id"], "hydrant": hyd["id"]}


# iam's audit table, for counting what the registry audited (read through the store, either backend)
AUDIT = sa.table("iam_audit", sa.column("seq"), sa.column("actor"), sa.column("action"), sa.column("detail"))


def count(hub: Hub, table: Any, *where: Any) -> int:
    with hub.store.read() as db:
        return int(db.scalar(sa.select(sa.func.count()).select_from(table).where(*where)))


def rows(hub: Hub, *cols: Any, where: Any = None, order_by: Any = None) -> list[tuple[Any, ...]]:
    q = sa.select(*cols)
    if where is not None:
        q = q.where(where)
    if order_by is not None:
        q = q.order_by(order_by)
    with hub.store.read() as db:
        return [tuple(r) for r in db.run(q)]
