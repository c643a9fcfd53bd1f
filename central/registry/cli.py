"""`citybrain hub registry ...`: bulk import with a progress bar, feed export, lookup.

Runs on the hub host against the hub's database as a named system actor confined to `--org` (whoever can
run this can open the database file anyway); every write is audited under that actor name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from central.registry import service as svc
from central.registry.importer import HeaderError, reader_for

app = typer.Typer(help="Unified base identifier registry", no_args_is_help=True)
console = Console(stderr=True)


def _hub(config: Path | None):  # -> Hub (import deferred so `--help` stays fast)
    from central.app import build_hub
    from central.settings import load_settings

    return build_hub(load_settings(config))


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
    hub = _hub(config)
    try:
        read = reader_for(path.name, fmt)
        total = sum(1 for _ in path.open(encoding="utf-8-sig")) - (1 if read.__name__ == "read_csv" else 0)
        with path.open(encoding="utf-8-sig", newline="") as f, Progress(
            TextColumn("[bold]importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as bar:
            task = bar.add_task("rows", total=max(total, 0))
            report = svc.import_rows(hub, svc.SystemActor(f"cli:{actor}", org), read(f), org=org, chunk=chunk,
                                     progress=lambda n: bar.advance(task, n))
    except HeaderError as e:
        console.print(f"[red]header: {e}")
        raise typer.Exit(2) from None
    finally:
        hub.store.close()
    if errors:
        with errors.open("w", encoding="utf-8") as f:
            for e in report.errors:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    if ids:
        with ids.open("w", encoding="utf-8") as f:
            f.write("row,id\n")
            for r in report.ids:
                f.write(f"{r['row']},{r['id']}\n")
    for e in report.errors[:20]:
        console.print(f"[yellow]row {e['row']}[/] {e['field']}: {e['error']}")
    if len(report.errors) > 20:
        console.print(f"... and {len(report.errors) - 20} more" + (f" (see {errors})" if errors else ""))
    summary = report.to_dict(with_ids=False)
    summary.pop("errors")
    typer.echo(json.dumps(summary))
    if report.errors and not report.created:
        raise typer.Exit(1)


@app.command("export-feed")
def export_feed(
    after: int = typer.Option(0, "--after", min=0, help="cursor: last seq already consumed"),
    out: Path | None = typer.Option(None, "--out", help="file (default: stdout)"),
    config: Path | None = typer.Option(None, "--config"),
) -> None:
    """The change feed from a cursor as JSONL (for the big-data platform)."""
    hub = _hub(config)
    try:
        sink = out.open("w", encoding="utf-8") if out else sys.stdout
        n = 0
        for line in svc.export_feed(hub, svc.SystemActor("cli:export-feed"), after):
            sink.write(line)
            n += 1
        if out:
            sink.close()
        console.print(f"{n} records")
    finally:
        hub.store.close()


@app.command("show")
def show(entity_id: str, config: Path | None = typer.Option(None, "--config")) -> None:
    """Print one entity (PII masked)."""
    hub = _hub(config)
    try:
        try:
            d = svc.lookup(hub, svc.normalize_id(entity_id))
        except svc.IdError as e:
            console.print(f"[red]{e}")
            raise typer.Exit(2) from None
        if d is None:
            console.print(f"[red]{entity_id} is not registered")
            raise typer.Exit(1)
        typer.echo(json.dumps(d, ensure_ascii=False))
    finally:
        hub.store.close()
