"""CSV / JSONL readers for bulk registration: yield (line number, record dict) or (line number, error), so
a malformed row becomes a per-row error and never stops the file."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any

COLUMNS = ("type", "region", "name", "address", "external_key", "phone", "grid", "lat", "lon", "valid_from",
           "valid_to", "local_id", "org", "links", "attrs")
REQUIRED = ("type", "region", "name")


class HeaderError(ValueError):
    pass


def parse_links(text: str) -> list[dict[str, str]]:
    """`attached_to:L3301060000000001X;owned_by:@ENT-7` -> [{"rel", "target"}, ...]."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        rel, sep, target = part.partition(":")
        if not sep:
            raise ValueError(f"links: {part!r} is not rel:target")
        out.append({"rel": rel.strip(), "target": target.strip()})
    return out


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if v is None or v == "":
            continue
        if k == "links" and isinstance(v, str):
            v = parse_links(v)
        elif k == "attrs" and isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise ValueError(f"attrs: not JSON ({e.msg})") from None
        out[k] = v
    return out


def read_csv(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    reader = csv.reader(iter(lines))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise HeaderError(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise HeaderError(f"missing column(s) {', '.join(missing)}")
    n = len(header)
    for fields in reader:
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != n:
            yield line, ValueError(f"row has {len(fields)} fields, the header has {n}")
            continue
        try:
            yield line, _row(dict(zip(header, fields, strict=True)))
        except ValueError as e:
            yield line, e


def read_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    for i, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            yield i, ValueError(f"not JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(rec, dict):
            yield i, ValueError("a JSONL line must be an object")
            continue
        try:
            yield i, _row(rec)
        except ValueError as e:
            yield i, e


def reader_for(name: str, fmt: str | None = None) -> Any:
    fmt = fmt or ("jsonl" if name.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv")
    if fmt not in ("csv", "jsonl"):
        raise HeaderError("format must be csv or jsonl")
    return read_csv if fmt == "csv" else read_jsonl
