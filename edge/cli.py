"""`citybrain edge ...` (run agents, verify codes offline) and `citybrain firmware ...` (device configs)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from edge.config import ConfigError, json_schema, load_config

edge_app = typer.Typer(no_args_is_help=True)
firmware_app = typer.Typer(no_args_is_help=True)


def _load(config: Path):  # noqa: ANN202 - DeviceConfig
    try:
        return load_config(config)
    except ConfigError as e:
        for err in e.errors:
            typer.echo(f"{config}: {err}", err=True)
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@edge_app.command()
def camera(
    config: Path = typer.Option(..., "--config", "-c", help="Device config (YAML/JSON)"),
    test_event: bool = typer.Option(False, help="Publish one test event at start"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a camera-gateway agent."""
    from edge.agent import run_agent

    cfg = _load(config)
    if cfg.kind != "camera":
        typer.echo(f"{config}: kind: this is a {cfg.kind} config, not camera", err=True)
        raise typer.Exit(2)
    _logging(verbose)
    run_agent(cfg, test_event=test_event)


@edge_app.command()
def scanner(
    config: Path = typer.Option(..., "--config", "-c", help="Device config (YAML/JSON)"),
    test_event: bool = typer.Option(False, help="Publish one test event at start"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a scan-terminal agent."""
    from edge.agent import run_agent

    cfg = _load(config)
    if cfg.kind != "scanner":
        typer.echo(f"{config}: kind: this is a {cfg.kind} config, not scanner", err=True)
        raise typer.Exit(2)
    _logging(verbose)
    run_agent(cfg, test_event=test_event)


@edge_app.command()
def verify(
    image: Path | None = typer.Argument(None, help="Image file or directory with QR codes"),
    payload: str | None = typer.Option(None, "--payload", help="A raw city-code payload instead of an image"),
    config: Path = typer.Option(..., "--config", "-c"),
) -> None:
    """Verify city codes offline; one JSON verdict per code or input. Exit 0 all valid, 1 any invalid or no code,
    2 usage error or unreadable input."""
    try:
        from edge.scanner.cli import verify_command
    except ImportError as e:
        typer.echo(f"scanner support missing: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        status = verify_command(image, payload, config)
    except Exception as e:  # noqa: BLE001 - a gate script needs exit 2 and one line, never a traceback
        typer.echo(f"verify: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


@edge_app.command()
def analyse(
    video: Path = typer.Argument(..., help="Recorded video file"),
    config: Path | None = typer.Option(None, "--config", "-c", help="Device config, camera section or one camera"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per event, then a summary object"),
    camera: str | None = typer.Option(None, "--camera", help="Camera id in the config (default: the first)"),
) -> None:
    """Replay a recording through one camera's pipeline: every event and a summary. Exit 2 if unreadable."""
    from edge.camera.cli import analyse_command

    raise typer.Exit(analyse_command(video, config, as_json, camera))


@firmware_app.command()
def validate(file: Path = typer.Argument(..., help="Device config to check")) -> None:
    """Validate a device config; errors name the field. Exit 1 when invalid."""
    try:
        cfg = load_config(file)
    except ConfigError as e:
        for err in e.errors:
            typer.echo(f"{file}: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{file}: ok ({cfg.kind} {cfg.site}/{cfg.device})")


@firmware_app.command()
def schema(out: Path = typer.Option(Path("firmware_configs/device-config.schema.json"))) -> None:
    """Write the JSON Schema of device configs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_schema(), indent=2) + "\n")
    typer.echo(str(out))
