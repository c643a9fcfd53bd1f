"""Every route of the hub walked with junk, as a city admin and unauthenticated: nothing may answer 5xx.

Two passes per operation of the app's own OpenAPI (the real app, real store, over schemathesis' ASGI
transport, with no lifespan so no worker sends anything anywhere):

- targeted probes for the classes an attack found (a JSON body of `1e309` or NaN, integers beyond 2^63
  and NUL characters in every path and query parameter, out-of-range integers in each integer field of
  an otherwise valid body);
- schemathesis' generated cases, valid and invalid (hypothesis, derandomized: the same cases every run,
  a bounded number per operation, no deadline).

Operations are split into groups (one test each) to keep every test short."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import ASGIClient

from central.app import build_hub, create_app
from central.hub import Hub
from tests.conftest import make_settings
from tests.helpers import token_for

BASE = "http://testserver"
BIG = str(2**64)  # one past what SQLite (signed 64-bit) stores
BODY_JUNK = ["1e309", "-1e309", "NaN", "Infinity", BIG, '{"x": 1e309}', '["\\u0000"]', '{"x": "\\ud800"}', "[" * 5000,
             "{"]
PARAM_JUNK = [BIG, "-" + BIG, "a\x00b", "9" * 5000]
# generated cases per operation: valid ones (each also sent with every integer field beyond 2^63) and
# invalid ones, as the admin; fewer unauthenticated (most answers there are a 401 before any parsing)
N_VALID, N_INVALID, N_ANON = 4, 4, 2
GROUPS = ["iam", "registry", "codes", "dialer", "video", "other"]


@dataclass
class Target:
    hub: Hub
    schema: Any
    openapi: dict[str, Any]
    client: ASGIClient
    failures: list[str] = field(default_factory=list)

    def admin(self) -> dict[str, str]:
        # a fresh session per operation: a fuzzed logout or password change must not blind the rest
        return {"Authorization": f"Bearer {token_for(self.hub, 'fuzz-admin', role='city_admin', org='/city')}"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    hub = build_hub(make_settings(Path(tmp_path_factory.mktemp("fuzz"))))
    app = create_app(hub=hub, start_bridge=False)
    doc = app.openapi()
    yield Target(hub, schemathesis.openapi.from_dict(doc), doc, ASGIClient(app))
    hub.close()


def _group(path: str) -> str:
    m = re.match(r"/api/v1/([^/]+)", path)
    cap = m.group(1) if m else "other"
    return cap if cap in GROUPS else "other"


def _send(t: Target, label: str, method: str, url: str, **kw: Any) -> None:
    """One request; a 5xx or an exception out of the app is recorded with what reproduces it."""
    try:
        r = t.client.request(method, url if url.startswith("http") else BASE + url, **kw)
    except Exception as e:  # noqa: BLE001  the app raised instead of answering: a 500 in production
        t.failures.append(f"{label}: {type(e).__name__}: {e} <- {method} {url} {_short(kw)}")
        return
    if r.status_code >= 500 and not (r.status_code == 503 and url.endswith("/readyz")):  # its answer by design
        t.failures.append(f"{label}: {r.status_code} {r.text[:200]} <- {method} {url} {_short(kw)}")


def _short(kw: dict[str, Any]) -> str:
    kw = {k: v for k, v in kw.items() if k not in ("headers", "cookies") and v}
    return repr(kw)[:300]


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "1"), path)


def _probes(t: Target, path: str, method: str, op: dict[str, Any], headers: dict[str, str]) -> None:
    label = f"{method.upper()} {path}"
    params = op.get("parameters", [])
    for p in (p for p in params if p["in"] == "path"):
        for junk in PARAM_JUNK:
            _send(t, label, method.upper(), _fill(path, {p["name"]: junk}), headers=headers)
    for p in (p for p in params if p["in"] == "query"):
        for junk in PARAM_JUNK[:3]:
            _send(t, label, method.upper(), _fill(path, {}), params={p["name"]: junk}, headers=headers)
    if "application/json" in op.get("requestBody", {}).get("content", {}):
        for junk in BODY_JUNK:
            _send(t, label, method.upper(), _fill(path, {}), data=junk,
                  headers={**headers, "Content-Type": "application/json"})


def _int_leaves(doc: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, bool):
        return
    if isinstance(doc, int):
        yield at
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield from _int_leaves(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _int_leaves(v, (*at, i))


def _with(doc: Any, at: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    cur = out
    for k in at[:-1]:
        cur = cur[k]
    cur[at[-1]] = value
    return out


def _generated(t: Target, operation: Any, mode: GenerationMode, n: int, headers: Callable[[], dict[str, str]],
               with_big_ints: bool) -> None:
    label = operation.label

    @hypothesis.settings(max_examples=n, derandomize=True, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        kw = case.as_transport_kwargs(base_url=BASE)
        kw["headers"] = {**kw.get("headers", {}), **headers()}
        method, url = kw.pop("method"), kw.pop("url")
        _send(t, label, method, url, **kw)
        if with_big_ints and isinstance(kw.get("json"), dict | list):
            for at in _int_leaves(kw["json"]):
                _send(t, label, method, url, **{**kw, "json": _with(kw["json"], at, 2**64)})

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # e.g. no invalid request exists for an operation without parameters


@pytest.mark.parametrize("half", [0, 1])
@pytest.mark.parametrize("group", GROUPS)
def test_no_route_answers_5xx_to_junk(target: Target, group: str, half: int) -> None:
    t = target
    t.failures.clear()
    ops = [(path, method, op) for path, item in t.openapi["paths"].items() for method, op in item.items()
           if _group(path) == group][half::2]
    assert ops, f"no operation in group {group}"
    anon: dict[str, str] = {}
    for path, method, op in ops:
        admin = t.admin()
        _probes(t, path, method, op, admin)
        _probes(t, path, method, op, anon)
        operation = t.schema[path][method.upper()]
        _generated(t, operation, GenerationMode.POSITIVE, N_VALID, lambda admin=admin: admin, True)
        _generated(t, operation, GenerationMode.NEGATIVE, N_INVALID, lambda admin=admin: admin, False)
        _generated(t, operation, GenerationMode.POSITIVE, N_ANON, dict, False)
    assert not t.failures, f"{len(t.failures)} answers >= 500:\n" + "\n".join(t.failures[:30])


def test_groups_cover_every_operation(target: Target) -> None:
    # the split above must not leave an operation out (a new capability lands in "other")
    paths = {p for p in target.openapi["paths"]}
    assert {p for p in paths if _group(p) in GROUPS} == paths and len(paths) > 50


def test_validation_error_answer_always_serialises(target: Target) -> None:
    """A 422 names the field, whatever the bad input was (1e309 once made the error answer itself fail)."""
    h = {**target.admin(), "Content-Type": "application/json"}
    for body, name in [('{"type": "place", "region": "330106", "name": "x", "lat": 1e309, "lon": 1}', "lat"),
                        ('{"application_id": ' + BIG + ', "identity_id": "p-1"}', "application_id")]:
        url = "/api/v1/registry/entities" if "lat" in body else "/api/v1/codes/issue"
        r = target.client.post(BASE + url, data=body, headers=h)
        assert r.status_code == 422, r.text
        assert [d["field"] for d in r.json()["errors"]] == [name], r.text
    r = target.client.get(BASE + "/api/v1/registry/search", params={"q": "ab\x00cd"}, headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "q"], r.text
    r = target.client.delete(BASE + f"/api/v1/registry/links/{BIG}", headers=h)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["path", "link_id"], r.text
    # a plain validation error still reads as FastAPI's, input echoed when it is short and printable
    r = target.client.post(BASE + "/api/v1/registry/entities", data=json.dumps({"type": "ship"}), headers=h)
    assert r.status_code == 422 and any(d["field"] == "type" and d.get("input") == "ship" for d in r.json()["errors"])


def test_a_closed_store_answers_503_not_500(hub: Hub) -> None:
    """A request racing the hub's shutdown gets 'retry shortly', not an internal error."""
    app = create_app(hub=hub, start_bridge=False)
    h = {"Authorization": f"Bearer {token_for(hub, 'late', role='city_admin', org='/city')}"}
    client = ASGIClient(app)
    assert client.get(BASE + "/api/v1/iam/me", headers=h).status_code == 200
    hub.store.close()
    r = client.get(BASE + "/api/v1/iam/me", headers=h)
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
