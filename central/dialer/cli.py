"""`citybrain hub dialer ...`: run the SIP engine process, a simulated callee for it, watch a task's progress."""

from __future__ import annotations

import logging
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Outbound voice robot (SIP engine and task progress).", no_args_is_help=True)


def _hub(settings_file: Path | None):  # type: ignore[no-untyped-def]
    from central.app import build_hub
    from central.settings import load_settings

    return build_hub(load_settings(settings_file))


@app.command()
def run(
    uri_template: Annotated[str, typer.Option(help="How a phone becomes a SIP URI (trunk or direct)")] =
    "sip:{phone}@127.0.0.1:5060",
    settings_file: Annotated[Path | None, typer.Option("--settings", help="Hub settings YAML/JSON")] = None,
    sip_host: str = "127.0.0.1",
    sip_port: Annotated[int, typer.Option(help="Local SIP UDP port (0 = any free; workers > 1 need 0)")] = 0,
    registrar: Annotated[str | None, typer.Option(help="Register to this SIP trunk (sip:host:port)")] = None,
    username: str = "robot",
    password: Annotated[str, typer.Option(envvar="CITYBRAIN_DIALER_SIP_PASSWORD")] = "",
    domain: Annotated[str | None, typer.Option(help="AOR domain: sip:<username>@<domain> (default: the "
                                                    "registrar's host)")] = None,
    realm: Annotated[str, typer.Option(help="Digest auth realm ('*' = any)")] = "*",
    proxy: Annotated[str | None, typer.Option(help="Outbound proxy URI, e.g. sip:sbc.example:5060;lr")] = None,
    transport: Annotated[str, typer.Option(help="udp | tcp | tls")] = "udp",
    tls_ca_file: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="TLS: CA bundle the trunk's certificate must chain to (default: "
                                          "the system's)")] = None,
    tls_cert_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                       help="TLS: our certificate (mutual TLS)")] = None,
    tls_key_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                      help="TLS: the key of --tls-cert-file")] = None,
    tls_verify: Annotated[bool, typer.Option(help="TLS: verify the trunk's certificate (off only in a lab)")] =
    True,
    rtp_port: Annotated[int, typer.Option(min=0, max=65535, help="First RTP port (0 = any)")] = 0,
    rtp_port_range: Annotated[int, typer.Option(min=0, max=65535, help="RTP ports usable from --rtp-port")] = 0,
    session_expires: Annotated[int, typer.Option(
        min=0, max=86400, help="SIP session timer (RFC 4028) in s, >= 90; 0 = off")] = 90,
    lease: Annotated[float, typer.Option(min=1, max=86400, help="Claim lease in s (> --session-expires): a "
                                                                "dead engine's contacts are released after it")] =
    120.0,
    heartbeat: Annotated[float, typer.Option(min=0.2, max=3600, help="Report/renew every this many s")] = 5.0,
    reg_retry: Annotated[float, typer.Option(min=1, max=86400, help="Retry a refused registration after s")] = 60.0,
    clock_rate: int = 16000,
    workers: Annotated[int, typer.Option(min=1, max=256, help="Engine processes (each holds <= 4 calls)")] = 1,
    max_workers: Annotated[int, typer.Option(
        min=0, max=256, help="Add engine processes, up to this many, while the running tasks want more calls "
                             "at once than the live engines hold (0 = --workers: none added)")] = 0,
    ring_timeout: float = 30.0,
    asr: Annotated[str, typer.Option(help="pocketsphinx | vosk")] = "pocketsphinx",
    vosk_model: Annotated[Path | None, typer.Option(help="vosk model directory for zh (same as --asr-model zh=)")] =
    None,
    asr_model: Annotated[list[str] | None, typer.Option(
        help="LANG=DIR: a vosk model per template language (repeatable); a language without one is DTMF only "
             "(en falls back to pocketsphinx's bundled en-US model)")] = None,
    asr_min_confidence: Annotated[float, typer.Option(min=0.0, max=1.0,
                                                      help="Lowest word confidence accepted as an answer")] = 0.6,
    asr_workers: int = 2,
    work_dir: Annotated[Path | None, typer.Option(help="Recordings + TTS cache (default data_dir/dialer)")] =
    None,
    record: bool = True,
    engine_id: Annotated[str | None, typer.Option(
        help="Engine id (default: one generated once and kept in work_dir; never shared by two engines)")] =
    None,
    # formats named: the offset must parse whatever typer's default formats are (0.27's have none with %z)
    clock_start: Annotated[datetime | None, typer.Option(
        help="Rehearsal/test: pretend the clock starts here (with its offset)",
        formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="Exit when no task is running or paused")] = False,
    max_runtime: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
    verbose: bool = False,
) -> None:
    """Run the SIP engine: dial due contacts of running tasks until stopped."""
    if clock_start is not None and clock_start.tzinfo is None:
        raise typer.BadParameter("give a time zone offset, e.g. 2025-03-10T08:59:58+08:00",
                                 param_hint="--clock-start")
    if workers > 1 and sip_port:
        raise typer.BadParameter("several workers cannot share one SIP port; use 0", param_hint="--sip-port")
    if transport not in ("udp", "tcp", "tls"):
        raise typer.BadParameter("udp, tcp or tls", param_hint="--transport")
    if transport != "tls" and (tls_ca_file or tls_cert_file or tls_key_file):
        raise typer.BadParameter("TLS files need --transport tls", param_hint="--transport")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise typer.BadParameter("a certificate and its key go together", param_hint="--tls-key-file")
    if session_expires and session_expires < 90:
        raise typer.BadParameter("at least 90 s (PJSIP's minimum), or 0 for off", param_hint="--session-expires")
    if session_expires and lease <= session_expires:
        raise typer.BadParameter("must exceed --session-expires: a dead engine's leg must be gone before its "
                                 "contacts are re-dialled", param_hint="--lease")
    if lease < 3 * heartbeat:
        raise typer.BadParameter("at least three --heartbeat intervals", param_hint="--lease")
    params = dict(uri_template=uri_template, settings_file=settings_file, sip_host=sip_host, sip_port=sip_port,
                  registrar=registrar, username=username, password=password, clock_rate=clock_rate,
                  domain=domain, realm=realm, proxy=proxy, transport=transport, rtp_port=rtp_port,
                  tls=dict(tls_ca_file=tls_ca_file and str(tls_ca_file),
                           tls_cert_file=tls_cert_file and str(tls_cert_file),
                           tls_key_file=tls_key_file and str(tls_key_file), tls_verify=tls_verify),
                  rtp_port_range=rtp_port_range, session_expires=session_expires, lease=lease,
                  heartbeat=heartbeat, reg_retry=reg_retry,
                  workers=workers, ring_timeout=ring_timeout, asr=asr, vosk_model=vosk_model,
                  asr_models=_asr_models(asr_model), asr_min_confidence=asr_min_confidence,
                  asr_workers=asr_workers, work_dir=work_dir, record=record, clock_start=clock_start,
                  exit_when_idle=exit_when_idle, max_runtime=max_runtime, verbose=verbose)
    if max_workers and max_workers < workers:
        raise typer.BadParameter(f"at least --workers ({workers})", param_hint="--max-workers")
    if workers == 1 and max_workers <= 1:
        _run_engine(params, engine_id)
        return
    _supervise(params, engine_id, workers, max(max_workers, workers))


def _supervise(params: dict[str, Any], engine_id: str | None, workers: int, max_workers: int) -> None:
    """Run `workers` engine processes; while the running tasks want more calls at once than the live engines
    hold (every host's), add one more, up to `max_workers`; past that, say once which limit stops it."""
    import multiprocessing
    import time

    from central.dialer import service as svc

    # spawn, not fork: each worker is a fresh interpreter with its own pjsua2 Endpoint (PJSIP is not
    # fork-safe and this wheel allows 4 calls per Endpoint); the store arbitrates who dials whom.
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []

    def start() -> None:
        i = len(procs)
        p = ctx.Process(target=_run_engine, args=(params, f"{engine_id}-w{i}" if engine_id else None), daemon=False)
        p.start()
        procs.append(p)

    for _ in range(workers):
        start()
    hub = _hub(params["settings_file"]) if max_workers > workers else None
    stale = max(svc.ENGINE_STALE_S, 3 * params["heartbeat"])
    started_at, told = time.monotonic(), False
    try:
        while any(p.is_alive() for p in procs):
            # wait one beat on a worker still running (an idle one may have exited already)
            next(p for p in procs if p.is_alive()).join(timeout=params["heartbeat"])
            if hub is None:
                continue
            try:
                wanted = sum(svc.calls_wanted(hub).values())
                live, cap = svc.live_engines(hub, stale)
            except Exception as e:  # noqa: BLE001  a store hiccup: look again next beat
                typer.echo(f"dialer: could not read the engines' load: {e}", err=True)
                continue
            alive = sum(1 for p in procs if p.is_alive())
            # a new worker counts once it has reported (its pjsua2 start takes seconds); until then, wait
            if wanted <= cap or (live < alive and time.monotonic() - started_at < 30):
                continue
            if alive < max_workers:
                start()
                started_at = time.monotonic()
                typer.echo(f"dialer: the running tasks want {wanted} calls at once, the live engines hold {cap}: "
                           f"worker {len(procs)} started ({alive + 1} of at most {max_workers})", err=True)
            elif not told:
                told = True
                typer.echo(f"dialer: the running tasks want {wanted} calls at once, the live engines hold {cap}, "
                           f"and this host runs --max-workers {max_workers}: calls wait for a free line "
                           "(raise --max-workers or start engines elsewhere)", err=True)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
            p.join()
    finally:
        if hub is not None:
            hub.close()  # type: ignore[attr-defined]
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise typer.Exit(1)


def _asr_models(specs: list[str] | None) -> dict[str, Path]:
    from central.dialer.asr import check_vosk_model, parse_models

    try:
        models = parse_models(specs)
        for lang, path in models.items():
            check_vosk_model(path, lang)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--asr-model") from e
    return models


def _run_engine(params: dict[str, Any], engine_id: str | None) -> None:
    from central.dialer.engine import Engine, EngineConfig, ShiftedClock
    from central.dialer.sip import SipConfig

    logging.basicConfig(level=logging.INFO if params["verbose"] else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    hub = _hub(params["settings_file"])
    cfg = EngineConfig(
        uri_template=params["uri_template"],
        sip=SipConfig(bind_host=params["sip_host"], port=params["sip_port"], clock_rate=params["clock_rate"],
                      registrar=params["registrar"], username=params["username"], password=params["password"],
                      domain=params["domain"], realm=params["realm"], proxy=params["proxy"],
                      transport=params["transport"], rtp_port=params["rtp_port"],
                      rtp_port_range=params["rtp_port_range"], session_expires_s=params["session_expires"],
                      reg_retry_s=params["reg_retry"], **params["tls"]),
        ring_timeout_s=params["ring_timeout"], asr_backend=params["asr"], asr_model_dir=params["vosk_model"],
        asr_models=params["asr_models"], asr_min_confidence=params["asr_min_confidence"],
        asr_workers=params["asr_workers"], work_dir=params["work_dir"] or hub.settings.data_dir / "dialer",
        record=params["record"], engine_id=engine_id, workers=params["workers"], lease_s=params["lease"],
        heartbeat_s=params["heartbeat"],
    )
    clock = ShiftedClock(params["clock_start"]) if params["clock_start"] is not None else None
    try:
        engine = Engine(hub, cfg, clock=clock)
    except (RuntimeError, ValueError) as e:  # an id in use, a bad setting: say so, do not dial
        typer.echo(f"dialer engine not started: {e}", err=True)
        raise typer.Exit(2) from e
    engine_id = engine.engine_id

    def _term(*_: Any) -> None:  # a service manager's stop: hang up, write the CDRs, report stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    typer.echo(f"dialer engine {engine_id} on sip:{engine.sip.local} (up to {engine.sip.max_calls} calls)",
               err=True)
    try:
        engine.run(exit_when_idle=params["exit_when_idle"], max_runtime_s=params["max_runtime"])
    except KeyboardInterrupt:
        pass
    typer.echo(f"{engine_id}: dialled={engine.stats['dialled']} cdrs={engine.stats['cdrs']}", err=True)


@app.command()
def callee(
    script: Annotated[Path, typer.Argument(help="YAML/JSON: per number answer/busy/ring and turns (say, wav, "
                                                "dtmf, silence); see central/dialer/callee.py")],
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="SIP UDP port (0 = any free)")] = 0,
    log: Annotated[Path | None, typer.Option(help="JSON lines of what happened (default: the script's `log`)")] =
    None,
    work_dir: Annotated[Path | None, typer.Option(help="Recordings + synthesised speech (default: the "
                                                       "script's `work`)")] = None,
    ready_file: Annotated[Path | None, typer.Option(help="Write the SIP port here once listening")] = None,
) -> None:
    """A simulated callee on loopback for demos and drills: answers the engine's calls per a script, speaks
    (the robot's TTS) or presses keys (RFC 2833). Prints READY <port>; stops on SIGTERM/Ctrl-C."""
    import faulthandler

    from central.dialer.callee import ScriptError, load_script, serve

    faulthandler.enable()  # a crash inside PJSIP still leaves a traceback on stderr
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        parsed = load_script(script)
    except ScriptError as e:
        raise typer.BadParameter(str(e), param_hint="SCRIPT") from e
    parsed.log = log or parsed.log
    parsed.work = work_dir or parsed.work
    stop: list[bool] = []

    def _stop(*_: Any) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = serve(parsed, host, port, ready_file, stopping=lambda: bool(stop),
                 announce=lambda line: typer.echo(line))
    raise typer.Exit(code)


@app.command()
def progress(
    task_id: int,
    settings_file: Annotated[Path | None, typer.Option("--settings")] = None,
    follow: Annotated[bool, typer.Option(help="Keep a live progress bar until the task ends")] = False,
) -> None:
    """Show a task's progress (dialled, answered, completed, failed) as a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn

    from central.dialer import service as svc

    hub = _hub(settings_file)
    try:
        p = svc.progress(hub, task_id)
    except svc.DialerError as e:
        raise typer.BadParameter(str(e), param_hint="task_id") from e
    fmt = "dialled {task.fields[d]} answered {task.fields[a]} completed {task.fields[c]} failed {task.fields[f]}"
    with Progress(TextColumn(f"task {task_id} [{{task.fields[s]}}]"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TextColumn(fmt)) as bar:
        t = bar.add_task("t", total=p["total"], s=p["status"], d=0, a=0, c=0, f=0)
        while True:
            p = svc.progress(hub, task_id)
            bar.update(t, completed=p["finished_contacts"], s=p["status"], d=p["dialled"], a=p["answered"],
                       c=p["completed"], f=p["failed"])
            if not follow or p["status"] in ("completed", "cancelled"):
                break
            time.sleep(1)
