"""The OpenAPI document is a contract: every operation says what it answers (issue 16)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from central.app import create_app
from central.hub import Hub


def _untyped(schema: dict[str, Any] | None, components: dict[str, Any]) -> str | None:
    """Why this JSON schema tells a client nothing about the answer, or None."""
    if not schema:
        return "no schema"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = components.get(name, {})
        if target.get("type") == "object" and not target.get("properties") and not target.get("additionalProperties"):
            return f"{name} has no properties"
        return None
    for key in ("anyOf", "oneOf"):
        if key in schema:
            whys = [_untyped(s, components) for s in schema[key] if s.get("type") != "null"]
            return next((w for w in whys if w), None)
    kind = schema.get("type")
    if kind == "array":
        return _untyped(schema.get("items"), components)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if schema.get("properties"):
            return None
        if isinstance(extra, dict) and extra:
            return _untyped(extra, components)  # a map: its values must be typed
        return "an object with no properties"
    return None if kind else "no type"


def untyped_operations(app: FastAPI) -> list[str]:
    doc = app.openapi()
    components = doc.get("components", {}).get("schemas", {})
    found = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            if not ok:
                found.append(f"{method.upper()} {path}: no 2xx answer documented")
            for code, answer in ok.items():
                content = answer.get("content") or {}
                if not content:
                    if code != "204":
                        found.append(f"{method.upper()} {path}: {code} without content")
                    continue
                if "application/json" in content:
                    why = _untyped(content["application/json"].get("schema"), components)
                    if why:
                        found.append(f"{method.upper()} {path}: {code} {why}")
    return found


class Typed(BaseModel):
    n: int


def test_every_operation_declares_its_answer(hub: Hub) -> None:
    app = create_app(hub=hub, start_bridge=False)
    assert untyped_operations(app) == []


def test_the_check_sees_an_untyped_answer(hub: Hub) -> None:
    app = create_app(hub=hub, start_bridge=False)

    @app.get("/probe/untyped")
    def untyped() -> dict[str, Any]:
        return {}

    @app.get("/probe/typed")
    def typed() -> list[Typed]:
        return []

    app.openapi_schema = None
    found = untyped_operations(app)
    assert "GET /probe/untyped: 200 an object with no properties" in found
    assert not [f for f in found if f.startswith("GET /probe/typed")]


def test_model_names_are_unique_across_capabilities(hub: Hub) -> None:
    """A generated client has one flat models package: two capabilities' `SceneOut`s would clash (FastAPI
    then falls back to `central__codes__models__SceneOut`, and openapi-python-client drops both)."""
    schemas = create_app(hub=hub, start_bridge=False).openapi()["components"]["schemas"]
    assert [name for name in schemas if "__" in name] == []
    titles = [s.get("title", name) for name, s in schemas.items()]
    assert sorted({t for t in titles if titles.count(t) > 1}) == []
