"""Request ids, HTTP metrics and JSON logs: how one request is followed through the hub.

Every HTTP request gets an id: the caller's `X-Request-ID` when it is a sane token (a gateway or a business
subsystem tracing its own call), else a new one. It is answered in `X-Request-ID`, carried by every log line
written while the request is served (`request_id` in the JSON logs) and written into the `detail` of every
audit row the request appends (central.iam.audit), so an audit row leads to the log lines of its request.

The HTTP side (the middleware that sets the id, times the request and writes the access line) is
central/observe_http.py; this module has no HTTP types, so the audit log and workers can import it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Literal

import structlog

REQUEST_ID: ContextVar[str | None] = ContextVar("citybrain_request_id", default=None)

LogFormat = Literal["text", "json"]


def request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    return REQUEST_ID.get()


def _add_request_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    rid = REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def configure_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> None:
    """Route the standard library's logging (which every module of the hub uses) through structlog:
    one JSON object per line (`ts`, `level`, `logger`, `event`, `request_id`, exception text) for log
    collectors, or the same fields as readable text for a terminal."""
    pre: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_request_id,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (structlog.processors.JSONRenderer(ensure_ascii=False) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # one format for the server's lines too
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
