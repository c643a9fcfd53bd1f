"""iam fixtures: a hub per crypto profile, a client, and a controllable clock (no sleeping)."""

from __future__ import annotations

import sys
from pathlib import Path as _P

# `from tests.helpers import ...` needs the repo root on sys.path; until pyproject sets
# `pythonpath = ["."]` for pytest, put it there ourselves (harmless once it does).
if str(_P(__file__).resolve().parents[2]) not in sys.path:
    sys.path.insert(0, str(_P(__file__).resolve().parents[2]))

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central.hub import Hub
from central.settings import MqttSettings, SecuritySettings, Settings


@dataclass
class Clock:
    t: float = 1_900_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, minutes: float) -> None:
        self.t += minutes * 60


def make_hub(tmp_path: Path, profile: str = "intl", **security: object) -> Hub:
    from central.app import build_hub

    settings = Settings(data_dir=tmp_path / "hub", mqtt=MqttSettings(enabled=False),
                        security=SecuritySettings(crypto_profile=profile, **security))  # type: ignore[arg-type]
    return build_hub(settings)


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
