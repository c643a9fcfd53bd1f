"""The base of every route's answer model (issue 16: the OpenAPI document is the contract a generated
client is built from, so each route says what it returns).

Response models live in each capability's `models.py` beside its input models, derive from `Out`, and name
every key the service returns. In production a key the model lacks is dropped (the answer is what the
contract says). The test suite sets CITYBRAIN_STRICT_RESPONSES=1 (tests/conftest.py): then an undeclared
key fails the request that returns it (a response-validation error), so a service and its model cannot
drift apart unnoticed."""

from __future__ import annotations

import os

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
