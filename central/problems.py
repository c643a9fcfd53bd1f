"""The hub's one error type: every refusal a service or route makes is a `HubError`, answered by
`central.errors` as RFC 9457 problem details (`application/problem+json`):

    {"type": "urn:citybrain:problem:not-found", "title": "Not found", "status": 404,
     "detail": "dept_id: no department 'X'", "errors": [{"field": "dept_id", "message": "no department 'X'"}],
     "field": "dept_id"}

`type` is a URN (`urn:citybrain:problem:<slug>`), one per kind of refusal and stable across releases: a
client may branch on it; it is not meant to be dereferenced. `title` is the kind in words, `detail` the
human sentence for this occurrence (always a string), `errors` the failing fields when there are any, and
`field` the first of them (kept: clients of the iam API read it).

Plain Python on purpose (no FastAPI import): services raise these without knowing about HTTP. Each
capability keeps its own class (CodesError, DialerError, ...) deriving from `HubError`, so callers that
catch the capability's error still do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

PREFIX = "urn:citybrain:problem:"

# status -> (slug, title): the kinds of refusal the hub answers
KINDS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Not authenticated"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    410: ("gone", "Gone"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("invalid", "Invalid input"),
    423: ("locked", "Locked"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def kind(status: int) -> tuple[str, str]:
    """(type URI, title) for an HTTP status; a status the table lacks gets a generic slug of its class."""
    if status in KINDS:
        slug, title = KINDS[status]
    else:
        slug, title = ("client-error", "Client error") if status < 500 else ("server-error", "Server error")
    return PREFIX + slug, title


class FieldProblem(TypedDict):
    field: str
    message: str


class HubError(Exception):
    """A refusal with an HTTP meaning. `status` is the class default or given per instance; `field` names
    the one failing input (then `errors` is that one entry unless given); `headers` go on the answer (e.g.
    WWW-Authenticate, Retry-After)."""

    status: int = 500

    def __init__(self, detail: str, *, status: int | None = None, field: str | None = None,
                 errors: list[FieldProblem] | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self._problem(detail, status=status, field=field, errors=errors, headers=headers)

    def _problem(self, detail: str, *, status: int | None = None, field: str | None = None,
                 errors: list[FieldProblem] | None = None, headers: Mapping[str, str] | None = None) -> None:
        """Sets the problem members; capability classes with their own constructor signature call this."""
        if status is not None:
            self.status = status
        self.problem_detail = detail
        self.field = field
        if errors is None and field:
            prefix = f"{field}: "
            errors = [{"field": field, "message": detail[len(prefix):] if detail.startswith(prefix) else detail}]
        self.errors: list[FieldProblem] = errors or []
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def type(self) -> str:
        return kind(self.status)[0]

    @property
    def title(self) -> str:
        return kind(self.status)[1]

    def problem(self) -> dict[str, Any]:
        return problem(self.status, self.problem_detail, errors=self.errors)


def problem(status: int, detail: str, *, errors: list[FieldProblem] | list[dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    """The problem-details body for `status`: type, title, status, detail, and errors/field when fields failed."""
    type_, title = kind(status)
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
        body["field"] = errors[0].get("field")
    return body


class BadRequest(HubError):
    status = 400


class Unauthorized(HubError):
    status = 401


class Forbidden(HubError):
    status = 403


class NotFound(HubError):
    status = 404


class Conflict(HubError):
    status = 409


class Gone(HubError):
    status = 410


class TooLarge(HubError):
    status = 413


class Invalid(HubError):
    status = 422


class Locked(HubError):
    status = 423


class RateLimited(HubError):
    status = 429


class Unavailable(HubError):
    status = 503
