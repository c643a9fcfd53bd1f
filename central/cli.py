"""`citybrain hub ...`: serve, migrate, provision devices, run the broker, the demo, backup/restore.
Capabilities add their own command groups through a `cli.py` with a typer `app` (mounted here)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from central.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True)

ConfigOpt = typer.Option(None, "--config", "-c",
                         help="Hub settings file (YAML/JSON; default $CITYBRAIN_CONFIG). Precedence: file < "
                              "env CITYBRAIN_* < command-line options")


def _settings(config: Path | None, **options: object) -> Settings:
    """The one way commands load settings: file < CITYBRAIN_* < the given options (None = not given)."""
    try:
        return load_settings(config, **options)
    except SettingsError as e:
        for problem in e.problems:
            typer.echo(f"settings: {problem}", err=True)
        raise typer.Exit(2) from None


@app.command()
def migrate(config: Path | None = ConfigOpt) -> None:
    """Create or upgrade the hub's store to the newest schema (one Alembic history, SQLite or PostgreSQL; a
    pre-Alembic SQLite store is adopted in place first)."""
    from central.store import Store, StoreUnavailable

    s = _settings(config)
    store = Store(s.store_url)
    try:
        applied = store.migrate()
    except StoreUnavailable as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{store}: applied {len(applied)} migration(s) {applied}; versions {store.versions()}")


@app.command("copy-store")
def copy_store_cmd(
    target: str = typer.Argument(..., help="database_url of the new, empty hub database"),
    config: Path | None = ConfigOpt,
) -> None:
    """Copy this hub's data (its database_url) into another, empty database, e.g. SQLite into PostgreSQL.
    Stop the hub first; the target is migrated and filled in one transaction."""
    from central.store import Store, StoreUnavailable
    from central.store.copy import CopyError, copy_store

    s = _settings(config)
    src, dst = Store(s.store_url), Store(target)
    try:
        counts = copy_store(src, dst, progress=lambda t, n: typer.echo(f"  {t}: {n} row(s)"))
    except (StoreUnavailable, CopyError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    finally:
        src.close()
        dst.close()
    typer.echo(f"copied {sum(counts.values())} row(s) in {len(counts)} table(s) from {src} to {dst}")


@app.command()
def serve(
    config: Path | None = ConfigOpt, no_bridge: bool = typer.Option(False, help="Do not start the MQTT bridge"),
    host: str | None = typer.Option(None, help="Listen address (overrides `host` from the file and env)"),
    port: int | None = typer.Option(None, help="Listen port (overrides `port` from the file and env)"),
    log_format: str | None = typer.Option(None, help="text | json (overrides `log_format`)"),
    workers: int = typer.Option(1, min=1, help="HTTP worker processes on the one port (uvicorn workers); "
                                               "more than 1 with the bridge needs mqtt.share_group"),
    primary: bool = typer.Option(True, "--primary/--no-primary",
                                 help="Run the once-only background workers in one of this serve's processes "
                                      "(--no-primary on every host but one when several hosts serve one database)"),
) -> None:
    """Run the hub (HTTPS when security.tls_cert/tls_key are set): one process, or `--workers N` processes
    sharing the port, each with its own hub; any number of them, on any hosts, may serve one PostgreSQL."""
    import os

    import uvicorn

    from central.app import SERVE_ENV, build_hub, create_app, serve_role
    from central.media import MediaError
    from central.observe import configure_logging
    from central.settings import config_path
    from central.store import StoreUnavailable

    options = {"host": host, "port": port, "log_format": log_format}
    s = _settings(config, **options)
    bridge = False if no_bridge else None
    if workers > 1 and s.mqtt.enabled and not no_bridge and not s.mqtt.share_group:
        # Each worker process runs a bridge; without a shared subscription each would take every message.
        typer.echo("settings: mqtt.share_group: --workers > 1 runs a bridge in every worker process, which "
                   "must share the ingest: set mqtt.share_group (CITYBRAIN_MQTT__SHARE_GROUP), or give "
                   "--no-bridge", err=True)
        raise typer.Exit(2)
    configure_logging(s.log_format)  # the process's logging: only once it will really serve
    try:
        if workers == 1:
            application = create_app(hub=build_hub(s, primary=serve_role(s, primary)),
                                     start_bridge=bridge)
        else:
            build_hub(s).close()  # migrate once, before any worker starts, and stop here on a bad store
    except (StoreUnavailable, MediaError) as e:  # stop at start, naming the database or media_dir
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    tls = {}
    if s.security.tls_cert and s.security.tls_key:
        tls = {"ssl_certfile": str(s.security.tls_cert), "ssl_keyfile": str(s.security.tls_key)}
    # log_config=None: uvicorn's lines go through the handler configure_logging set, in the same format
    # access_log=False: the hub writes its own access line per request (with the request id and route)
    common = {"host": s.host, "port": s.port, "log_level": "info", "log_config": None, "access_log": False, **tls}
    if workers == 1:
        uvicorn.run(application, **common)  # type: ignore[arg-type]
        return
    file = config_path(config)
    os.environ[SERVE_ENV] = json.dumps({
        "config": str(file.resolve()) if file else None,
        "options": {k: v for k, v in options.items() if v is not None},
        "bridge": bridge, "primary": primary,
    })
    uvicorn.run("central.app:factory", factory=True, workers=workers, **common)  # type: ignore[arg-type]


@app.command("bridge")
def bridge_only(config: Path | None = ConfigOpt) -> None:
    """Run only the MQTT ingest bridge: one more member of the ingest pool when `mqtt.share_group` is set
    (devices' messages split between every member, `hub serve` processes included). Stops on SIGTERM/Ctrl-C
    after storing and receipting what it took."""
    import signal
    import threading

    from central.app import build_hub
    from central.bridge.service import Bridge
    from central.observe import configure_logging
    from central.store import StoreUnavailable

    s = _settings(config)
    configure_logging(s.log_format)
    if not s.mqtt.enabled:
        typer.echo("settings: mqtt.enabled is false: there is nothing to bridge", err=True)
        raise typer.Exit(2)
    try:
        hub = build_hub(s)
    except StoreUnavailable as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    b = Bridge(hub).start()
    typer.echo(f"bridge {b.client_id} -> {s.mqtt.host}:{s.mqtt.port}"
               + (f" (shared group {s.mqtt.share_group})" if s.mqtt.share_group else ""), err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        b.stop()
        hub.close()


@app.command("provision-device")
def provision_device(
    site: str = typer.Option(..., "--site"),
    kind: str = typer.Option(..., "--kind", help="camera | scanner"),
    name: str = typer.Option(..., "--name"),
    device: str | None = typer.Option(None, "--device", help="Device id (default: derived from the name)"),
    org: str = typer.Option("/city", "--org", help="Org path the device belongs to"),
    out: Path | None = typer.Option(None, "--out", help="Where to write the device config (YAML)"),
    config: Path | None = ConfigOpt,
) -> None:
    """Register a device, create its broker credentials + ACL, and write its ready config."""
    from central.app import build_hub
    from central.devices.service import DeviceError

    hub = build_hub(_settings(config))
    try:
        row, cfg = hub.services["devices"].provision(site, kind, name, device, org)  # type: ignore[arg-type]
    except DeviceError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    out = out or Path(f"firmware_configs/generated/{row['site']}-{row['device']}.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out.chmod(0o600)  # it holds the device's broker password
    typer.echo(json.dumps({"device": row["id"], "config": str(out)}))


@app.command()
def broker(
    dir: Path = typer.Option(Path("var/broker"), help="Broker directory (conf, passwd, acl, data)"),
    port: int = typer.Option(18830),
) -> None:
    """Run the project's mosquitto (password file + ACL) in the foreground."""
    from central.broker import Broker, BrokerConfig

    b = Broker(BrokerConfig(dir=dir, port=port)).start()
    typer.echo(f"mosquitto on 127.0.0.1:{port}, config {b.cfg.conf}")
    try:
        assert b.proc is not None
        b.proc.wait()
    except KeyboardInterrupt:
        b.stop()


@app.command()
def backup(target: Path = typer.Argument(...), config: Path | None = ConfigOpt) -> None:
    """Online backup of the hub store (SQLite backup API; safe while the hub runs)."""
    from central.store import Store

    s = _settings(config)
    Store(s.store_url).backup(target)
    typer.echo(f"backed up {s.database} -> {target}")


@app.command()
def restore(source: Path = typer.Argument(...), config: Path | None = ConfigOpt) -> None:
    """Restore the hub store from a backup (stop the hub first)."""
    import sqlite3

    s = _settings(config)
    if not source.exists():
        typer.echo(f"source: {source} does not exist", err=True)
        raise typer.Exit(2)
    s.database.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(str(source))
    dst = sqlite3.connect(str(s.database))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    typer.echo(f"restored {source} -> {s.database}")


def _mount_capability_clis() -> None:
    from central import capabilities

    for cap, cli_mod in capabilities.modules("cli"):
        sub = getattr(cli_mod, "app", None)
        if sub is None:
            continue
        if getattr(cli_mod, "MERGE", False):  # commands straight under `citybrain hub`
            app.registered_commands.extend(sub.registered_commands)
            app.registered_groups.extend(sub.registered_groups)
        else:
            app.add_typer(sub, name=getattr(cli_mod, "NAME", cap))


def _mount_security_shortcuts() -> None:
    """The issues' spellings: `citybrain hub gen-certs`, `bootstrap-admin`, `reset-admin` and `audit verify`."""
    from central.iam import cli as iam_cli

    app.command("gen-certs")(iam_cli.gen_certs)
    app.command("bootstrap-admin")(iam_cli.bootstrap_admin)
    app.command("reset-admin")(iam_cli.reset_admin)
    audit = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
    audit.command("verify")(iam_cli.audit_verify)
    audit.command("checkpoint")(iam_cli.audit_checkpoint)
    app.add_typer(audit, name="audit")


_mount_capability_clis()
_mount_security_shortcuts()
