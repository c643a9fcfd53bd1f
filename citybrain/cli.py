"""The one `citybrain` command. Sub-commands are imported lazily so an edge box needs no hub code."""

from __future__ import annotations

from pathlib import Path

import typer

from central.cli import app as hub_app
from central.settings import SettingsError
from edge.cli import edge_app, firmware_app
from protocol.cli import app as protocol_app


@hub_app.command()
def demo(
    dir: Path = typer.Option(Path("var/demo"), help="Where the demo keeps its broker, store and configs"),
    port: int = typer.Option(8080, help="Hub HTTP port"),
    mqtt_port: int = typer.Option(18830, help="Broker port"),
    fresh: bool = typer.Option(False, help="Start from an empty demo directory"),
    database_url: str | None = typer.Option(None, "--database-url",
                                            help="Run the hub on this database (default: SQLite in --dir), e.g. "
                                                 "the postgresql:// URL `./run postgres` prints"),
) -> None:
    """Broker + hub + one camera gateway + one scan terminal on loopback. Ctrl-C stops all."""
    from citybrain.demo import run_demo

    run_demo(dir, port, mqtt_port, fresh, database_url)


app = typer.Typer(no_args_is_help=True, help="City Brain: edge agents, MQTT contract and the central hub.")
app.add_typer(hub_app, name="hub", help="The central hub: serve, migrate, provision devices, demo.")
app.add_typer(edge_app, name="edge", help="Edge agents: camera gateway, scan terminal, offline verify.")
app.add_typer(firmware_app, name="firmware", help="Device configs: validate, schema.")
app.add_typer(protocol_app, name="protocol", help="The MQTT/city-code contract: JSON Schemas.")


def main() -> None:
    """Entry point: a bad setting from any sub-command (every one loads settings the same way) is one line
    per problem and exit 2, never a traceback."""
    try:
        app()
    except SettingsError as e:
        for problem in e.problems:
            typer.echo(f"settings: {problem}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
