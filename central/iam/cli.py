"""`citybrain hub ...` commands owned by iam: bootstrap-admin, audit-verify, gen-certs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from central.settings import Settings, load_settings

app = typer.Typer(help="Identity, audit and certificates", no_args_is_help=True)


def _hub(config: Path | None) -> object:
    from central.app import build_hub

    settings: Settings = load_settings(config)
    return build_hub(settings)


@app.command("bootstrap-admin")
def bootstrap_admin(
    username: str = typer.Option(..., help="the first city administrator"),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="initial password (must be changed at first login)"),
    org: str = typer.Option("/city", help="root org path"),
    config: Path | None = typer.Option(None, help="hub settings file (JSON/YAML)"),
) -> None:
    """Create the root org and the first city admin (refused once any user exists)."""
    from central.iam.service import IamError, service_of

    hub = _hub(config)
    svc = service_of(hub)  # type: ignore[arg-type]
    if svc.db.conn.execute("SELECT 1 FROM iam_users LIMIT 1").fetchone():
        typer.echo("refused: users already exist; create more through the API", err=True)
        raise typer.Exit(1)
    try:
        svc.ensure_org_chain(org, actor="bootstrap")
        uid = svc.create_user(None, username, password, org, must_change=True)
        svc.grant_root(uid, "city_admin", org, actor="bootstrap")
    except IamError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"created city_admin {username} over {org}; the password must be changed at first login")


@app.command("audit-verify")
def audit_verify(config: Path | None = typer.Option(None, help="hub settings file (JSON/YAML)"),
                 as_json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Check the audit hash chain; names each changed, deleted or re-ordered row. Exit 1 when broken."""
    from central.iam.audit import verify

    hub = _hub(config)
    res = verify(hub.store.db)  # type: ignore[attr-defined]
    if as_json:
        typer.echo(json.dumps(res.to_dict()))
    else:
        for p in res.problems:
            typer.echo(f"row {p['seq']}: {p['kind']}: {p['why']}")
        typer.echo(f"audit chain {'OK' if res.ok else 'BROKEN'}: {res.rows} rows, {len(res.problems)} problem(s)")
    raise typer.Exit(0 if res.ok else 1)


@app.command("gen-certs")
def gen_certs(out: Path = typer.Option(..., "--out", help="directory for ca.crt/ca.key/server.crt/server.key"),
              host: list[str] = typer.Option(["localhost", "127.0.0.1"], "--host", help="server name or IP (repeat)"),
              days: int = typer.Option(825, min=1, max=3650)) -> None:
    """Local CA + server certificate for the hub's HTTPS and mosquitto's TLS listener."""
    from central.iam.certs import generate

    p = generate(out, hosts=host, days=days)
    typer.echo(f"CA: {p.ca_cert}\ncert: {p.cert}\nkey: {p.key}")
