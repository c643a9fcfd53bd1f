"""CSV (and XLSX) export cells that are safe to open in a spreadsheet: OWASP's CSV-injection rule.

A text cell beginning with `=`, `+`, `-`, `@`, tab or CR is a formula to Excel, LibreOffice and WPS
(`=HYPERLINK(...)` runs when an officer opens the file). Such a cell is written with a leading single
quote and always quoted, so it is shown as text; numbers (int/float) are written as numbers, everything
else unchanged. Use `writer` / `DictWriter` instead of the csv module's for every export, and `cell()` for
each value put into an XLSX sheet (openpyxl stores a string beginning with `=` as a formula)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = frozenset(',"\r\n')


class _Sink(Protocol):
    def write(self, s: str, /) -> Any: ...


def cell(value: Any) -> Any:
    """The value as it may be exported: a formula-looking text gets a leading `'`; numbers stay numbers."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def format_cell(value: Any) -> str:
    """One CSV field: minimal quoting (as the csv module's default), plus quotes around every cell the
    rule neutralised."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return str(value)
    text = value if isinstance(value, str) else str(value)
    if text.startswith(FORMULA_START):
        return "\"'" + text.replace('"', '""') + '"'
    if not _NEEDS_QUOTES.isdisjoint(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def format_row(row: Iterable[Any]) -> str:
    cells = [format_cell(v) for v in row]
    return (",".join(cells) if cells != [""] else '""') + "\r\n"  # a lone empty cell is not a blank line


class Writer:
    """`csv.writer` with the rule applied (comma, double quote, CRLF: the csv module's excel dialect)."""

    def __init__(self, f: _Sink) -> None:
        self.f = f

    def writerow(self, row: Iterable[Any]) -> None:
        self.f.write(format_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(f: _Sink) -> Writer:
    return Writer(f)


class DictWriter:
    """`csv.DictWriter` with the rule applied (header cells too)."""

    def __init__(self, f: _Sink, fieldnames: Sequence[str], restval: Any = "",
                 extrasaction: Literal["raise", "ignore"] = "raise") -> None:
        self.w = Writer(f)
        self.fieldnames = list(fieldnames)
        self.restval = restval
        self.extrasaction = extrasaction

    def writeheader(self) -> None:
        self.w.writerow(self.fieldnames)

    def writerow(self, rowdict: Mapping[str, Any]) -> None:
        if self.extrasaction == "raise":
            extra = [k for k in rowdict if k not in self.fieldnames]
            if extra:
                raise ValueError(f"dict contains fields not in fieldnames: {', '.join(map(repr, extra))}")
        self.w.writerow(rowdict.get(k, self.restval) for k in self.fieldnames)

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            self.writerow(r)
