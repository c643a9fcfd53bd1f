"""`citybrain hub ...` commands owned by iam: bootstrap-admin, reset-admin, audit-verify, audit-checkpoint,
gen-certs."""

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
    if svc.has_users():
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


@app.command("reset-admin")
def reset_admin(
    username: str = typer.Option("admin", help="the account to reset"),
    password: str | None = typer.Option(None, help="the new initial password (default: a generated one, printed)"),
    config: Path | None = typer.Option(None, help="hub settings file (JSON/YAML)"),
) -> None:
    """Give an account a new initial password from the hub's host (for an administrator who lost theirs):
    it must be changed at the next login; lockout lifted, sessions ended, audited."""
    import getpass
    import secrets

    from central.iam.service import IamError, service_of

    new = password or "Reset-" + secrets.token_urlsafe(9) + "-7b"  # meets the complexity rule
    hub = _hub(config)
    try:
        service_of(hub).operator_reset(username, new, getpass.getuser())  # type: ignore[arg-type]
    except IamError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(2) from e
    finally:
        hub.close()  # type: ignore[attr-defined]
    shown = f"'{new}'" if password is None else "the one given"
    typer.echo(f"{username}: new initial password {shown}; it must be changed at the next login")


@app.command("audit-verify")
def audit_verify(config: Path | None = typer.Option(None, help="hub settings file (JSON/YAML)"),
                 as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
                 mqtt: bool = typer.Option(True, help="also check the retained checkpoint on the broker"),
                 timeout: float = typer.Option(5.0, min=0.5, help="seconds to wait for the broker")) -> None:
    """Check the keyed audit chain against its signed checkpoints (file and retained MQTT); names each
    changed, deleted, re-ordered, re-chained or cut row. Exit 1 when broken."""
    from central.iam.checkpoints import verify_hub

    hub = _hub(config)
    res = verify_hub(hub, mqtt=mqtt, timeout=timeout)  # type: ignore[arg-type]
    if as_json:
        typer.echo(json.dumps(res.to_dict(), ensure_ascii=False))
    else:
        for p in res.problems:
            rows = f"rows {p['seq']}..{p['last']}" if "last" in p else f"row {p['seq']}"
            typer.echo(f"{rows}: {p['kind']}: {p['why']}")
        for n in res.notes:
            typer.echo(f"note: {n}")
        cp = res.checkpoint
        anchor = f"checked against the {cp['source']} checkpoint of {cp['ts']} (row {cp['seq']})" if cp else \
            "no checkpoint"
        typer.echo(f"audit chain {'OK' if res.ok else 'BROKEN'}: {res.rows} rows, {len(res.problems)} problem(s);"
                   f" {anchor}")
    raise typer.Exit(0 if res.ok else 1)


@app.command("audit-checkpoint")
def audit_checkpoint(config: Path | None = typer.Option(None, help="hub settings file (JSON/YAML)"),
                     public_key: bool = typer.Option(False, "--public-key",
                                                     help="print the checkpoint-verifying public key instead")) -> None:
    """Sign a checkpoint of the audit chain now: appended to the checkpoint file and published retained
    on MQTT. Refused (exit 1) when the rows since the last checkpoint do not verify."""
    from central.iam.checkpoints import CheckpointWithheld, make_now, signing_key

    hub = _hub(config)
    s = hub.settings  # type: ignore[attr-defined]
    if public_key:
        typer.echo(json.dumps(signing_key(s.keys_dir, s.security.crypto_profile).public.to_dict()))
        return
    try:
        cp = make_now(hub)  # type: ignore[arg-type]
    except CheckpointWithheld as e:
        typer.echo(f"refused: {e}", err=True)
        raise typer.Exit(1) from e
    if cp is None:
        typer.echo("no audit rows yet: nothing to checkpoint")
    else:
        typer.echo(f"checkpoint: row {cp['seq']} head {cp['head'][:16]}… at {cp['ts']} (key {cp['kid']})")


@app.command("gen-certs")
def gen_certs(out: Path = typer.Option(..., "--out", help="directory for ca.crt/ca.key/server.crt/server.key"),
              host: list[str] = typer.Option(["localhost", "127.0.0.1"], "--host", help="server name or IP (repeat)"),
              days: int = typer.Option(825, min=1, max=3650)) -> None:
    """Local CA + server certificate for the hub's HTTPS and mosquitto's TLS listener."""
    from central.iam.certs import generate

    p = generate(out, hosts=host, days=days)
    typer.echo(f"CA: {p.ca_cert}\ncert: {p.cert}\nkey: {p.key}")
