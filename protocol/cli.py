"""`citybrain protocol ...`: write the JSON Schemas of every payload in the contract."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from protocol import messages, trust

app = typer.Typer(no_args_is_help=True)

MODELS = {
    "status": messages.Status,
    "heartbeat": messages.Heartbeat,
    "event": messages.Event,
    "scan_batch": messages.ScanBatch,
    "cmd": messages.Cmd,
    "ack": messages.Ack,
    "trust_list": trust.TrustList,
    "revocation_list": trust.RevocationList,
}


@app.command()
def schema(out: Path = typer.Option(Path("protocol/schemas"), help="Directory to write <name>.schema.json")) -> None:
    """Write one JSON Schema per payload model."""
    out.mkdir(parents=True, exist_ok=True)
    for name, model in MODELS.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, ensure_ascii=False) + "\n")
        typer.echo(str(path))


@app.command("version")
def version() -> None:
    """Print the contract's schema version."""
    from protocol import SCHEMA_VERSION

    typer.echo(str(SCHEMA_VERSION))
