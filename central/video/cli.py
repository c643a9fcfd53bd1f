"""`citybrain hub video ...`: run the video correlator as its own process."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Video cases: the correlator process.")


@app.command()
def correlate(config: Path | None = typer.Option(None, "--config", "-c", help="Hub settings file")) -> None:
    """Correlate stored events into cases until SIGINT/SIGTERM (run the hub with inline_consumers: false)."""
    from central.app import build_hub
    from central.settings import load_settings
    from central.video.service import service_of

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = build_hub(load_settings(config))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The same hub worker that runs inside `hub serve`, here alone in its own process; idle polls every 0.2 s
    # since no bridge in this process kicks it.
    worker = service_of(hub).correlator
    worker.interval_s = 0.2
    worker.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        worker.stop()
        hub.close()
