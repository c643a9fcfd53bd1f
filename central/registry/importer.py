"""CSV / JSONL readers for bulk registration: yield (line number, record dict) or (line number, error), so
a malformed row (bad shape, an oversized cell, control characters) becomes a per-row error naming its
column and never stops the file."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from central.errors import TEXT_SUSPECT, json_problems, text_problem

COLUMNS = ("type", "region", "name", "address", "external_key", "phone", "grid", "lat", "lon", "valid_from",
           "valid_to", "local_id", "org", "links", "attrs")
REQUIRED = ("type", "region", "name")
# Longest text a cell may hold, checked before anything parses, stores or echoes it. The entity model's
# limits are tighter for most columns (name 200, address 500); these bound what reaches it.
FIELD_MAX = {"attrs": 16_384, "links": 4_096}
DEFAULT_FIELD_MAX = 1_024


class HeaderError(ValueError):
    pass


class FieldError(ValueError):
    """A per-row error that names its column."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check_cells(rec: dict[str, Any]) -> None:
    """Size and text rules per cell (CSV cells are all text; JSONL values may be anything JSON)."""
    texts = []
    for k, v in rec.items():
        if len(k) > 64:  # JSONL keys are free text; the model would echo an unknown one back
            raise FieldError("row", f"a key longer than 64 characters ({k[:20]!r}...)")
        limit = FIELD_MAX.get(k, DEFAULT_FIELD_MAX)
        if isinstance(v, str):
            if len(v) > limit:
                raise FieldError(k, f"longer than {limit} characters ({len(v)})")
            texts.append(v)
        elif isinstance(v, dict | list | float | int) and not isinstance(v, bool):
            for loc, _kind, why in json_problems(v, (k,)):
                raise FieldError(".".join(map(str, loc)), why)
            if isinstance(v, dict | list) and len(json.dumps(v, ensure_ascii=False)) > limit:
                raise FieldError(k, f"longer than {limit} characters as JSON")
    if TEXT_SUSPECT.search("".join(texts)):  # one scan per row; find the cell only when there is one
        for k, v in rec.items():
            if isinstance(v, str) and (why := text_problem(v)) is not None:
                raise FieldError(k, why)


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


_CELL = re.compile(r'(?:"[^"]*")+|[^,]*')  # one cell of a CSV line (quoted with "" escapes, or bare)


def _long_cell(line: str, header: list[str], limit: int) -> str:
    """The column of the first cell longer than `limit` in one physical line ("row" if none is found)."""
    pos, i = 0, 0
    while pos <= len(line):
        m = _CELL.match(line, pos)
        assert m is not None  # the bare alternative matches the empty string
        if m.end() - m.start() > limit:
            return header[i] if i < len(header) else "row"
        pos, i = m.end() + 1, i + 1
    return "row"


def _remembering(lines: Iterable[str], last: list[str]) -> Iterator[str]:
    """The line source, keeping the last line handed to the csv reader in last[0] (to name an oversized
    cell; a generator is the cheapest per-line wrapper)."""
    for line in lines:
        last[0] = line
        yield line


def _check_csv_cells(header: list[str], fields: list[str]) -> None:
    """`_check_cells` for a CSV row, at C speed when the row is fine (every row but the bad ones)."""
    if max(map(len, fields)) > DEFAULT_FIELD_MAX or TEXT_SUSPECT.search("".join(fields)):
        _check_cells(dict(zip(header, fields, strict=True)))


def read_csv(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    last = [""]
    reader = csv.reader(_remembering(lines, last))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as e:
        raise HeaderError(str(e)) from None
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        shown = ", ".join(repr(h[:64]) if text_problem(h, multiline=False) else h[:64] for h in unknown[:10])
        raise HeaderError(f"unknown column(s) {shown}; known: {', '.join(COLUMNS)}")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise HeaderError(f"missing column(s) {', '.join(missing)}")
    n = len(header)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # the csv module refuses cells over its field limit (and NULs in some versions) and skips to
            # the next line: this row is rejected, the file goes on
            limit = csv.field_size_limit()
            if "field limit" in str(e):
                col = _long_cell(last[0], header, limit)
                yield reader.line_num, FieldError(col, f"longer than {limit} characters")
            else:
                yield reader.line_num, ValueError(f"not CSV: {e}")
            continue
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if len(fields) != n:
            yield line, ValueError(f"row has {len(fields)} fields, the header has {n}")
            continue
        try:
            _check_csv_cells(header, fields)
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
            _check_cells(rec)
            yield i, _row(rec)
        except ValueError as e:
            yield i, e


def reader_for(name: str, fmt: str | None = None) -> Any:
    fmt = fmt or ("jsonl" if name.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv")
    if fmt not in ("csv", "jsonl"):
        raise HeaderError("format must be csv or jsonl")
    return read_csv if fmt == "csv" else read_jsonl
