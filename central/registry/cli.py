"""`citybrain hub registry ...`: bulk import with a progress bar, feed export, lookup.

Runs on the hub host against the hub's database as a named system actor confined to `--org` (whoever can
run this can open the database file anyway); every write is audited under that actor name."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from central import csvsafe
from central.registry import service as svc
from central.registry.importer import HeaderError, reader_for

app = typer.Typer(help="Unified base identifier registry", no_args_is_help=True)
console = Console(stderr=True)


def _hub(config: Path | None):  # -> Hub (import deferred so `--help` stays fast)
    from central.app import build_hub
    from central.settings import load_settings

    return build_hub(load_settings(config))


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and the exit code (2: bad input or usage), never a traceback."""
    console.print(f"[red]{escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _utf8_lines(path: Path) -> int:
    """Count the lines of `path`, refusing a file that is not UTF-8 (a spreadsheet saved as GBK) with the
    line and byte that show it."""
    n = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):  # noqa: B007  (n is the count afterwards)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _fail(f"{path}: line {n} is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1});"
                      " save the file as UTF-8")
    return n


@app.command("import")
def import_file(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV or JSONL file"),
    org: str = typer.Option(..., "--org", help="registering department's org path, e.g. /city/district-a/fire"),
    actor: str = typer.Option("cli", "--actor", help="name recorded in the audit log"),
    fmt: str | None = typer.Option(None, "--format", help="csv | jsonl (default: from the file name)"),
    errors: Path | None = typer.Option(None, "--errors", help="write per-row errors here as JSONL"),
    ids: Path | None = typer.Option(None, "--ids", help="write row -> new base id here as CSV"),
    config: Path | None = typer.Option(None, "--config", help="hub settings file (JSON/YAML)"),
    chunk: int = typer.Option(5000, min=1, max=100000, help="rows per transaction"),
) -> None:
    """Register every valid row of a file; rows with errors are reported and skipped."""
    try:
        read = reader_for(path.name, fmt)
        lines = _utf8_lines(path)
    except HeaderError as e:
        _fail(f"{path}: {e}")
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}")
    total = lines - (1 if read.__name__ == "read_csv" else 0)
    sinks: dict[str, TextIO] = {}
    for name, target in (("errors", errors), ("ids", ids)):
        if target is not None:  # opened before anything is stored: an unwritable path fails first
            try:
                sinks[name] = target.open("w", encoding="utf-8", newline="")
            except OSError as e:
                _fail(f"{target}: {e.strerror or e}")
    hub = _hub(config)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f, Progress(
            TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as bar:
            task = bar.add_task("rows", total=max(total, 0))
            report = svc.import_rows(hub, svc.SystemActor(f"cli:{actor}", org), read(f), org=org, chunk=chunk,
                                     progress=lambda n: bar.advance(task, n))
    except HeaderError as e:
        _fail(f"{path}: header: {e}")
    except UnicodeDecodeError as e:  # the file changed since it was checked
        _fail(f"{path}: not UTF-8 ({e.reason})")
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}")
    finally:
        hub.close()
    try:
        if "errors" in sinks:
            with sinks["errors"] as out:
                for e in report.errors:
                    out.write(json.dumps(e, ensure_ascii=False) + "\n")
        if "ids" in sinks:
            with sinks["ids"] as out:
                w = csvsafe.writer(out)
                w.writerow(["row", "id"])
                w.writerows([r["row"], r["id"]] for r in report.ids)
    except OSError as e:
        _fail(f"{e.filename or 'output'}: {e.strerror or e}")
    for e in report.errors[:20]:
        console.print(f"[yellow]row {e['row']}[/] {escape(_printable(e['field']))}: {escape(_printable(e['error']))}",
                      highlight=False)
    if len(report.errors) > 20:
        console.print(f"... and {len(report.errors) - 20} more" + (f" (see {errors})" if errors else ""))
    summary = report.to_dict(with_ids=False)
    summary.pop("errors")
    typer.echo(json.dumps(summary))
    if report.errors and not report.created:
        raise typer.Exit(1)


def _printable(text: str, limit: int = 200) -> str:
    """A per-row error as one short terminal-safe line (the cell it quotes may hold anything)."""
    text = str(text)
    short = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return short + ("..." if len(text) > limit else "")


@app.command("export-feed")
def export_feed(
    after: int = typer.Option(0, "--after", min=0, help="cursor: last seq already consumed"),
    out: Path | None = typer.Option(None, "--out", help="file (default: stdout)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (for machines, values verbatim) | csv (for a "
                            "spreadsheet: formula-looking cells are neutralised)"),
    config: Path | None = typer.Option(None, "--config"),
) -> None:
    """The change feed from a cursor as JSONL (for the big-data platform) or CSV (to open in a spreadsheet)."""
    if fmt not in ("jsonl", "csv"):
        _fail("--format must be jsonl or csv")
    try:
        sink = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
    except OSError as e:
        _fail(f"{out}: {e.strerror or e}")
    hub = _hub(config)
    try:
        export = svc.export_feed_csv if fmt == "csv" else svc.export_feed
        n = -1 if fmt == "csv" else 0  # the CSV header is no record
        for line in export(hub, svc.SystemActor("cli:export-feed"), after):
            sink.write(line)
            n += 1
        if out:
            sink.close()
    except OSError as e:
        _fail(f"{out or 'stdout'}: {e.strerror or e}")
    finally:
        hub.close()
    console.print(f"{max(n, 0)} records")


@app.command("show")
def show(entity_id: str, config: Path | None = typer.Option(None, "--config")) -> None:
    """Print one entity (PII masked)."""
    hub = _hub(config)
    try:
        try:
            d = svc.lookup(hub, svc.normalize_id(entity_id))
        except svc.IdError as e:
            _fail(str(e))
        if d is None:
            _fail(f"{_printable(entity_id)} is not registered", 1)
        typer.echo(json.dumps(d, ensure_ascii=False))
    finally:
        hub.close()
