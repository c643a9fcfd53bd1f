"""The one `citybrain` command. Sub-commands are imported lazily so an edge box needs no hub code."""

from __future__ import annotations

import typer

from central.cli import app as hub_app
from edge.cli import edge_app, firmware_app
from protocol.cli import app as protocol_app

app = typer.Typer(no_args_is_help=True, help="City Brain: edge agents, MQTT contract and the central hub.")
app.add_typer(hub_app, name="hub", help="The central hub: serve, migrate, provision devices, demo.")
app.add_typer(edge_app, name="edge", help="Edge agents: camera gateway, scan terminal, offline verify.")
app.add_typer(firmware_app, name="firmware", help="Device configs: validate, schema.")
app.add_typer(protocol_app, name="protocol", help="The MQTT/city-code contract: JSON Schemas.")

if __name__ == "__main__":
    app()
