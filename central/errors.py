"""Hub-wide input rules and error answers: bad input gets a 4xx that names the field, never a 500.

`install(app, max_body_bytes)` (called last by `central.app.create_app`) adds what every route shares:

- one error shape, RFC 9457 problem details (`application/problem+json`, members in `central.problems`),
  for every 4xx and 5xx: a `HubError` raised by a service or route, an HTTPException (iam.deps, Starlette's
  404 for an unknown path and 405), a validation error, a closed or unreachable store (503) and any
  unhandled exception (500: nothing of it in the answer but a request id, under which it is logged);
- a validation-error answer that always serialises (FastAPI's own echoes the input, and `1e309`, NaN or
  bytes in it made the error answer itself fail with a 500); its items are the problem's `errors`;
- an input guard (innermost middleware: before any route or dependency runs; an `org_of` dependency
  reads the database with the raw path id) refusing what no field of this API may hold and SQLite cannot
  take: integers outside the signed 64-bit range (in int-typed path/query parameters and anywhere in a
  JSON body), non-finite numbers (`1e309`, NaN, Infinity), control characters in the path and in query
  values, and lone surrogates in body strings (they cannot be encoded as UTF-8). Control characters in
  body text are left to each model: some routes must judge any text (the online city-code verifier).

The text rule (`text_problem`) is plain Python so importers apply it per row as well."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from central.problems import HubError, problem
from central.store import StoreClosed, StoreUnavailable

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF and CR are allowed
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# one pass over many cells: does any of them break the multiline text rule? (then `text_problem` says how)
TEXT_SUSPECT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_INPUT_ECHO = 200  # an error answer repeats at most this many characters of the bad input

Loc = tuple[str | int, ...]
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("citybrain.errors")


def text_problem(value: str, *, multiline: bool = True) -> str | None:
    """Why `value` may not be stored as text, or None. `multiline` allows tab, LF and CR."""
    m = (_CONTROL_IN_TEXT if multiline else _CONTROL).search(value)
    if m:
        return f"control character U+{ord(m.group()):04X} at position {m.start()}"
    m = _SURROGATE.search(value)
    if m:
        return f"lone surrogate U+{ord(m.group()):04X} at position {m.start()}"
    return None


def int_problem(value: int) -> str | None:
    if not INT64_MIN <= value <= INT64_MAX:
        return "integer out of range (signed 64-bit: -2^63 .. 2^63-1)"
    return None


class _Unparsed:
    """A JSON number or constant kept as text by the guard's parser (too long, NaN, Infinity)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _Unparsed:
    # longer than any int64 (and than Python's 4,300-digit int() limit): never converted
    return int(text) if len(text) <= 20 else _Unparsed(text)


def _surrogate_problem(value: str, *, multiline: bool = True) -> str | None:
    m = _SURROGATE.search(value)
    return f"lone surrogate U+{ord(m.group()):04X} at position {m.start()}" if m else None


def json_problems(doc: Any, loc: Loc = ("body",), *, text: bool = True) -> Iterator[tuple[Loc, str, str]]:
    """(loc, error type, message) for every value in a parsed JSON document that breaks the rules: numbers
    always; strings by the whole text rule, or with `text=False` only for lone surrogates (what can never
    be encoded as UTF-8). Iterative, so a deeply nested body cannot exhaust the stack."""
    check = text_problem if text else _surrogate_problem
    stack: list[tuple[Loc, Any]] = [(loc, doc)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, _Unparsed):
            kind = "int_out_of_range" if v.text.lstrip("-").isdigit() else "finite_number"
            yield where, kind, ("integer out of range (signed 64-bit: -2^63 .. 2^63-1)" if kind == "int_out_of_range"
                                else f"{v.text} is not a finite number")
        elif isinstance(v, int):
            if (why := int_problem(v)) is not None:
                yield where, "int_out_of_range", why
        elif isinstance(v, float):
            if not math.isfinite(v):
                yield where, "finite_number", "number out of range (not a finite double)"
        elif isinstance(v, str):
            if (why := check(v)) is not None:
                yield where, "text_invalid", why
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                if (why := check(k, multiline=False)) is not None:
                    yield (*where, k), "text_invalid", f"key: {why}"
                stack.append(((*where, k), item))
        elif isinstance(v, list):
            stack.extend(((*where, i), item) for i, item in reversed(list(enumerate(v))))


def _is_int_type(tp: Any) -> bool:
    """int, int | None, Annotated[int, ...], list[int] ... (not bool)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _is_int_type(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return any(_is_int_type(a) for a in typing.get_args(tp))
    return tp is int


def _all(dep: Dependant) -> Iterator[Dependant]:
    yield dep
    for sub in dep.dependencies:
        yield from _all(sub)


class _Spec:
    """What the guard needs to know about one route: its int-typed path/query parameters (over the whole
    dependency tree: an `org_of` dependency reads the database with the raw path id)."""

    def __init__(self, regex: re.Pattern[str], methods: set[str], dependant: Dependant) -> None:
        self.regex, self.methods = regex, methods
        self.int_path: set[str] = set()
        self.int_query: set[str] = set()
        for d in _all(dependant):
            self.int_path.update(f.alias for f in d.path_params if _is_int_type(f.field_info.annotation))
            self.int_query.update(f.alias for f in d.query_params if _is_int_type(f.field_info.annotation))


def _specs(app: FastAPI) -> list[_Spec]:
    """Every API route with an int-typed parameter, in the router's matching order."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.160: included routers are not copied
    except ImportError:  # pragma: no cover
        contexts: Iterable[Any] = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    out = []
    for rc in contexts:
        if not isinstance(getattr(rc, "original_route", rc), APIRoute) or rc.dependant is None:
            continue
        spec = _Spec(rc.path_regex, set(rc.methods or ()), rc.dependant)
        if spec.int_path or spec.int_query:
            out.append(spec)
    return out


def _raw_int_problem(raw: str) -> str | None:
    """For the text of an int-typed parameter: out of int64 range? (Text pydantic will not read as an
    integer at all is left to its own 422.)"""
    s = raw.strip().replace("_", "")
    if len(s) > 4000:
        return "integer out of range (signed 64-bit: -2^63 .. 2^63-1)"
    try:
        d = Decimal(s)
    except (InvalidOperation, ValueError):
        return None
    if d.is_finite() and not INT64_MIN <= d <= INT64_MAX:
        return "integer out of range (signed 64-bit: -2^63 .. 2^63-1)"
    return None


def _param_problems(specs: list[_Spec], scope: Scope) -> Iterator[tuple[Loc, str, str]]:
    path: str = scope.get("path", "")
    if (why := text_problem(path, multiline=False)) is not None:
        yield ("path",), "text_invalid", why
        return
    spec = next((s for s in specs if scope.get("method") in s.methods and s.regex.match(path)), None)
    if spec is not None and spec.int_path:
        m = spec.regex.match(path)
        assert m is not None
        for name, raw in m.groupdict().items():
            if name in spec.int_path and (why := _raw_int_problem(raw)) is not None:
                yield ("path", name), "int_out_of_range", why
    qs = scope.get("query_string", b"").decode("latin-1")
    if qs:
        for name, raw in parse_qsl(qs, keep_blank_values=True):
            if (why := text_problem(raw, multiline=False)) is not None:
                yield ("query", name), "text_invalid", why
            elif spec is not None and name in spec.int_query and (why := _raw_int_problem(raw)) is not None:
                yield ("query", name), "int_out_of_range", why


def _content_type(scope: Scope) -> tuple[bool, int | None]:
    """(JSON body?, declared Content-Length)."""
    json_body, length = False, None
    for k, v in scope.get("headers", []):
        if k == b"content-type":
            media = v.split(b";", 1)[0].strip().lower()
            json_body = media == b"application/json" or media.endswith(b"+json")
        elif k == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(v)
    return json_body, length


def _item(kind: str, loc: Loc, msg: str) -> dict[str, Any]:
    loc = _safe_loc(loc)  # a key in a bad body may be megabytes long
    named = loc[1:] if loc and loc[0] in ("body", "path", "query", "header", "cookie") else loc
    field = ".".join(str(p) for p in named) or str(loc[0] if loc else "body")
    return {"type": kind, "loc": list(loc), "field": field, "message": msg}


class InputGuard:
    """Pure-ASGI middleware, innermost (inside the body limit): refuses out-of-range integers, non-finite
    numbers and control characters with a 422 naming the field before routing, so no route or dependency
    ever sees them. A JSON body is read here, checked and handed on unchanged; one larger than the hub's
    body limit is passed straight through for the body limit to refuse."""

    def __init__(self, app: ASGIApp, specs: list[_Spec], max_body: int) -> None:
        self.app, self.specs, self.max_body = app, specs, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problems = list(_param_problems(self.specs, scope))
        json_body, length = _content_type(scope)
        if not problems and json_body and (length is None or length <= self.max_body):
            messages: list[Message] = []
            size = 0
            while size <= self.max_body:
                msg = await receive()
                messages.append(msg)
                size += len(msg.get("body", b""))
                if msg["type"] != "http.request" or not msg.get("more_body", False):
                    break
            else:
                messages.append({"type": "citybrain.unread"})  # too big to check: stream the rest on
            if messages[-1]["type"] == "http.request" and not messages[-1].get("more_body", False):
                body = b"".join(m.get("body", b"") for m in messages)
                if body:
                    try:
                        doc = json.loads(body, parse_int=_parse_int, parse_constant=_Unparsed)
                    except (ValueError, RecursionError):
                        pass  # not JSON: FastAPI answers that itself (422 json_invalid or 400)
                    else:
                        # body text is each model's business: the online verifier must judge any text
                        # (control characters included) as the offline one does, so only what cannot be
                        # encoded is refused here
                        problems = list(json_problems(doc, text=False))
            pending = iter(m for m in messages if m["type"] != "citybrain.unread")

            async def replay() -> Message:
                return next(pending, None) or await receive()

            receive = replay
        if problems:
            await _problem_response(problems[:20])(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _echo(value: Any) -> Any:
    """The part of a bad input an error answer may repeat: short JSON-safe scalars only."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or int_problem(value) is None else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:_INPUT_ECHO] if text_problem(value) is None else None
    return None


def _safe_loc(loc: Iterable[Any]) -> Loc:
    return tuple(p if isinstance(p, int) and not isinstance(p, bool) else _printable(str(p)[:_INPUT_ECHO])
                 for p in loc)


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _summary(items: list[dict[str, Any]]) -> str:
    """The human sentence of a 422: the first failing field and how many more."""
    if not items:
        return "invalid input"
    first = f"{items[0]['field']}: {items[0]['message']}"
    return first if len(items) == 1 else f"{first} (and {len(items) - 1} more)"


def problem_response(status: int, detail: str, *, errors: list[Any] | None = None,
                     headers: Mapping[str, str] | None = None, instance: str | None = None) -> JSONResponse:
    """The one error answer: RFC 9457 problem details (see central.problems for the members)."""
    body = problem(status, detail, errors=errors)
    if instance is not None:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _problem_response(problems: Iterable[tuple[Loc, str, str]]) -> JSONResponse:
    items = [_item(t, loc, msg) for loc, t, msg in problems]
    return problem_response(422, _summary(items), errors=items)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 problem details; `errors` holds FastAPI's items ({"type", "loc", ...}) with "field" and "message",
    built only from values that always serialise."""
    assert isinstance(exc, RequestValidationError)
    items = []
    for err in list(exc.errors())[:50]:
        loc = _safe_loc(err.get("loc", ()))
        item = _item(str(err.get("type", "value_error")), loc, str(err.get("msg", "invalid"))[:500])
        if (echo := _echo(err.get("input"))) is not None:
            item["input"] = echo
        ctx = err.get("ctx")
        if isinstance(ctx, dict):
            item["ctx"] = {str(k): e for k, v in ctx.items() if (e := _echo(v if isinstance(v, str | int | float | bool)
                                                                        else str(v))) is not None}
        items.append(item)
    return problem_response(422, _summary(items), errors=items)


Observer = Callable[[Request, HubError], None]


def observe(app: FastAPI, fn: Observer) -> None:
    """Have `fn` see every HubError before it is answered (iam audits its refusals this way)."""
    if not hasattr(app.state, "problem_observers"):
        app.state.problem_observers = []
    app.state.problem_observers.append(fn)


async def hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    for fn in getattr(request.app.state, "problem_observers", ()):
        await run_in_threadpool(fn, request, exc)  # observers may write (an audit row): off the event loop
    return problem_response(exc.status, exc.problem_detail, errors=list(exc.errors), headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """HTTPException (routes, iam.deps, Starlette's own 404 for an unknown path and 405) as problem details.
    A dict detail {"field", "error"} or a list of them (older routes) becomes `errors`."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304) or exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    d = exc.detail
    errors: list[dict[str, Any]] = []
    if isinstance(d, dict):
        d = [d]
    if isinstance(d, list):
        errors = [{"field": str(x.get("field", "")), "message": str(x.get("error", x.get("message", "")))}
                  for x in d if isinstance(x, dict)]
        detail = _summary(errors) if errors else str(exc.status_code)
    else:
        detail = str(d)
    return problem_response(exc.status_code, detail, errors=errors, headers=exc.headers)


async def store_closed(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(503, "the hub is shutting down; retry shortly", headers={"Retry-After": "5"})


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # the reason names the database server: logged for the operator, not told to the caller
    log.error("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"})


async def unhandled(request: Request, exc: Exception) -> JSONResponse:
    """500 for a bug: nothing of it in the answer but a request id, under which the traceback is logged."""
    rid = uuid.uuid4().hex
    log.error("unhandled error on %s %s (request %s)", request.method, request.url.path, rid,
              exc_info=(type(exc), exc, exc.__traceback__))
    return problem_response(500, f"internal error; quote request id {rid} to the operator",
                            headers={"X-Request-Id": rid}, instance=f"urn:uuid:{uuid.UUID(rid)}")


def document(app: FastAPI) -> None:
    """The OpenAPI document names the real error answers: every operation's 4XX and 5XX are problem
    details (FastAPI would document a 422 `HTTPValidationError` body the hub never sends)."""
    from central.schema import Problem

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs",
                                                                                                    {}).items():
            schemas[name] = schema
        schemas["Problem"] = {k: v for k, v in Problem.model_json_schema(
            ref_template="#/components/schemas/{model}").items() if k != "$defs"}
        answer = {"content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for ops in doc.get("paths", {}).values():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = {"description": "Refused: problem details naming the failing field", **answer}
                responses["5XX"] = {"description": "Server error: problem details", **answer}
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Error answers (every 4xx and 5xx as problem details), and the input guard as the innermost middleware
    (call it after every route is mounted: the guard learns the int-typed parameters from the routes)."""
    document(app)
    app.add_exception_handler(HubError, hub_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StoreClosed, store_closed)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(Exception, unhandled)  # Starlette runs this one outermost, for any route
    # appended, not `add_middleware` (which puts it outermost): the body limit must count what it reads
    app.user_middleware.append(Middleware(InputGuard, specs=_specs(app), max_body=max_body_bytes))
