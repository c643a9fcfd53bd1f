"""iam fixtures: a hub per crypto profile, a client, and a controllable clock (no sleeping)."""

from __future__ import annotations

import sys
from pathlib import Path as _P

# `from tests.helpers import ...` needs the repo root on sys.path; until pyproject sets
# `pythonpath = ["."]` for pytest, put it there ourselves (harmless once it does).
if str(_P(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(_P(__file__).resolve().parents[2]))

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from central.hub import Hub
from central.iam import audit, checkpoints
from central.iam import store as iam_store
from central.settings import SecuritySettings
from central.store import Db


@dataclass
class Clock:
    t: float = 1_900_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, minutes: float) -> None:
        self.t += minutes * 60


_urls: dict[Path, str | None] = {}  # tmp_path -> its database: hubs made again on one tmp_path share it


def hub_url(tmp_path: Path) -> str | None:
    """The database of the hubs of this tmp_path (None: the SQLite file under tmp_path/hub)."""
    from tests.conftest import database_url

    if tmp_path not in _urls:
        _urls[tmp_path] = database_url(migrated=True)
    return _urls[tmp_path]


def make_hub(tmp_path: Path, profile: str = "intl", **security: object) -> Hub:
    from central.app import build_hub
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url=hub_url(tmp_path),
                             security=SecuritySettings(crypto_profile=profile, **security))  # type: ignore[arg-type]
    return build_hub(settings)


def hub_config(hub: Hub, **extra: Any) -> dict[str, Any]:
    """A settings file's content for the CLI, pointing at this hub's data dir and database."""
    cfg: dict[str, Any] = {"data_dir": str(hub.settings.data_dir), "mqtt": {"enabled": False},
                           "security": {"crypto_profile": hub.settings.security.crypto_profile}, **extra}
    if hub.settings.database_url:
        cfg["database_url"] = hub.settings.database_url
    return cfg


# --- the audit chain through the store, as the tests read and write it ------------------------------
def record_in(hub: Hub, **row: Any) -> int:
    """One audit row in its own transaction."""
    with hub.store.tx() as db:
        return audit.record(db, **row)


def verify_in(hub: Hub) -> audit.VerifyResult:
    with hub.store.read() as db:
        return audit.verify(db)


def make_checkpoint(hub: Hub) -> dict[str, Any] | None:
    with hub.store.read() as db:
        return checkpoints.make(db, hub.services["audit_checkpoints"].chain)


def audit_column(hub: Hub, column: str) -> list[Any]:
    """One column of every audit row, in seq order."""
    with hub.store.read() as db:
        t = iam_store.audit
        return list(db.run(sa.select(t.c[column]).order_by(t.c.seq)).scalars())


def dump(hub: Hub) -> str:
    """Every row of every iam table as text: what someone reading the database at rest would see."""
    with hub.store.read() as db:
        return "\n".join(repr(tuple(r)) for t in iam_store.TABLES for r in db.run(sa.select(t)))


class Attacker:
    """SQL typed by someone holding the database's credentials ('?' placeholders, in order)."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        head, *rest = sql.split("?")
        text = head + "".join(f":p{i}{part}" for i, part in enumerate(rest))
        return self.db.run(sa.text(text), {f"p{i}": v for i, v in enumerate(params)})


@contextmanager
def attacker(hub: Hub) -> Iterator[Attacker]:
    """The append-only triggers switched off for an edit and put back afterwards, in one transaction:
    what someone with write access to the database does (SQLite: drop and re-create them; PostgreSQL:
    disable and enable them)."""
    with hub.store.tx() as db:
        if db.dialect == "postgresql":
            db.run(sa.text("ALTER TABLE iam_audit DISABLE TRIGGER USER"))
        else:
            db.run(sa.text("DROP TRIGGER iam_audit_no_update"))
            db.run(sa.text("DROP TRIGGER iam_audit_no_delete"))
        yield Attacker(db)
        if db.dialect == "postgresql":
            db.run(sa.text("ALTER TABLE iam_audit ENABLE TRIGGER USER"))
        else:
            iam_store.create_extras(db, {"iam_audit"})


@pytest.fixture(params=["intl", "gm"])
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ihub(tmp_path: Path, clock: Clock) -> Iterator[Hub]:
    h = make_hub(tmp_path)
    h.services["iam"].now = clock
    yield h
    h.close()


@pytest.fixture
def iclient(ihub: Hub) -> Iterator[TestClient]:
    from central.app import create_app

    with TestClient(create_app(hub=ihub, start_bridge=False)) as c:
        yield c
