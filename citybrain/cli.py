"""The one `citybrain` command. The hub group is imported only when `citybrain hub ...` (or the help) asks for
it, so an edge box (citybrain[edge]: no FastAPI, SQLAlchemy, pjsua2, vosk) runs `citybrain edge ...` without it."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.core import TyperGroup

from edge.cli import edge_app, firmware_app
from protocol.cli import app as protocol_app

if TYPE_CHECKING:
    from typer._click.core import Command, Context  # typer (as locked) vendors click

HUB_HELP = "The central hub: serve, migrate, provision devices, demo."


def demo(
    dir: Path = typer.Option(Path("var/demo"), help="Where the demo keeps its broker, store and configs"),
    port: int = typer.Option(8080, help="Hub HTTP port"),
    mqtt_port: int = typer.Option(18830, help="Broker port"),
    fresh: bool = typer.Option(False, help="Start from an empty demo directory"),
    database_url: str | None = typer.Option(None, "--database-url",
                                            help="Run the hub on this database (default: SQLite in --dir), e.g. "
                                                 "the postgresql:// URL `./run postgres` prints"),
) -> None:
    """Broker + hub + one camera gateway + one scan terminal + the voice robot (a simulated callee and one
    dialer engine calling a demo task) on loopback. Ctrl-C stops all."""
    from citybrain.demo import run_demo

    run_demo(dir, port, mqtt_port, fresh, database_url)


@cache
def _hub_command() -> Command:
    """`citybrain hub`: central.cli's group plus the demo, or, where the hub's packages are not installed, one
    command that says so (exit 2) whatever follows it."""
    # Built as `add_typer(..., name="hub")` would build it (name, help, no completion options of its own).
    wrapper = typer.Typer(add_completion=False)
    try:
        from central.cli import app as hub_app
    except ModuleNotFoundError as e:
        missing = e.name

        @wrapper.command("hub", help=f"Not installed here (no {missing}): install the hub role (README).",
                         add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        def hub_missing() -> None:
            typer.echo(f"citybrain hub: the hub is not installed here (no module {missing!r}); "
                       "install citybrain[hub] (README: Install by role)", err=True)
            raise typer.Exit(2)

        return typer.main.get_command(wrapper)
    hub_app.command()(demo)
    wrapper.add_typer(hub_app, name="hub", help=HUB_HELP)
    return typer.main.get_group(wrapper).commands["hub"]


class _Commands(TyperGroup):
    """The top-level group, with `hub` resolved lazily (_hub_command)."""

    def list_commands(self, ctx: Context) -> list[str]:
        names = super().list_commands(ctx)
        return names if "hub" in names else ["hub", *names]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name == "hub" and "hub" not in self.commands:
            self.add_command(_hub_command(), "hub")
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=_Commands, no_args_is_help=True,
                  help="City Brain: edge agents, MQTT contract and the central hub.")
app.add_typer(edge_app, name="edge", help="Edge agents: camera gateway, scan terminal, offline verify.")
app.add_typer(firmware_app, name="firmware", help="Device configs: validate, schema.")
app.add_typer(protocol_app, name="protocol", help="The MQTT/city-code contract: JSON Schemas.")


def main() -> None:
    """Entry point: a bad setting from any sub-command (every one loads settings the same way) is one line
    per problem and exit 2, never a traceback."""
    try:
        app()
    except Exception as e:
        # Only the hub loads settings: if central.settings was never imported, this is no SettingsError.
        settings = sys.modules.get("central.settings")
        if settings is None or not isinstance(e, settings.SettingsError):
            raise
        for problem in e.problems:
            typer.echo(f"settings: {problem}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
