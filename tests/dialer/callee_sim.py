"""The tests' callee simulator: `python tests/dialer/callee_sim.py SCRIPT.json`, a thin wrapper over the
product's simulated callee (central.dialer.callee, `citybrain hub dialer callee`).

The tests' scripts name espeak-ng WAVs they wrote as `say: <path>`; those become the product's `wav` turns.
Prints "READY <port>" once listening; appends JSON lines of what happened to the script's `log`.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
from pathlib import Path
from typing import Any

from central.dialer.callee import load_script, serve


def _turn(t: dict[str, Any]) -> dict[str, Any]:
    return {"wav": t["say"]} if "say" in t and Path(t["say"]).suffix == ".wav" else t


def main(script_path: str) -> int:
    raw = json.loads(Path(script_path).read_text())
    for spec in raw.get("numbers", {}).values():
        spec["turns"] = [_turn(t) for t in spec.get("turns", [])]
    script = load_script(raw)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    return serve(script, stopping=lambda: bool(stop), announce=lambda line: print(line, flush=True))


if __name__ == "__main__":
    faulthandler.enable()
    sys.exit(main(sys.argv[1]))
