"""The base of every route's answer model (issue 16: the OpenAPI document is the contract a generated
client is built from, so each route says what it returns).

Response models live in each capability's `models.py` beside its input models, derive from `Out`, and name
every key the service returns. In production a key the model lacks is dropped (the answer is what the
contract says). The test suite sets CITYBRAIN_STRICT_RESPONSES=1 (tests/conftest.py): then an undeclared
key fails the request that returns it (a response-validation error), so a service and its model cannot
drift apart unnoticed."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict

STRICT = os.environ.get("CITYBRAIN_STRICT_RESPONSES") == "1"


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid" if STRICT else "ignore")


class Ok(Out):
    """The answer of an action that has nothing else to say."""

    ok: bool = True


class FieldProblemOut(Out):
    field: str
    message: str


class Problem(Out):
    """RFC 9457 problem details, the body of every 4xx and 5xx (`application/problem+json`; see
    central/problems.py): `type` is a stable URN a client may branch on, `detail` the sentence for this
    occurrence, `errors` the failing fields and `field` the first of them."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblemOut] = []
    field: str | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` written in place, for an `openapi_extra` request body of a
    route that reads its body itself (a `$ref` there would point at a component FastAPI never emits)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]
