"""`citybrain edge verify (IMAGE | --payload TEXT) --config FILE`: offline verdicts as JSON lines.

Uses the trust lists the terminal last synced (in scanner.data_dir) and no network. A single-use code
verified here counts as used on this terminal (this command is how a gate script checks a pass).
Exit status: 0 every code valid, 1 any code invalid or no code found, 2 usage/config error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge.config import ConfigError, load_config
from edge.scanner.verify import Verifier, data_dir_for


def _err(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def verify_command(image: Path | None, payload: str | None, config: Path) -> int:
    if (image is None) == (payload is None):
        return _err("usage: give exactly one of IMAGE or --payload TEXT")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        return _err("\n".join(f"{config}: {err}" for err in e.errors))
    if cfg.scanner is None:
        return _err(f"{config}: scanner: section missing (kind is {cfg.kind!r})")
    try:
        verifier = Verifier.from_config(cfg.scanner, data_dir_for(cfg))
    except ValueError as e:
        return _err(f"{config}: {e}")
    try:
        if payload is not None:
            items: list[tuple[str | None, str | None]] = [(None, payload)]
        else:
            assert image is not None
            # Imported here: OpenCV + decoders cost ~0.5 s to load, which a --payload check never needs.
            from edge.scanner.decode import DecodeError, decode_path, make_decoder

            try:
                decoded = decode_path(make_decoder(cfg.scanner.decoder), image)
            except DecodeError as e:
                return _err(str(e))
            items = []
            for path, found in decoded:
                items += [(str(path), d.text) for d in found] or [(str(path), None)]
        all_valid = True
        for source, text in items:
            if text is None:
                line: dict[str, object] = {"source": source, "verdict": "no-code", "reason": "no QR code found"}
                all_valid = False
            else:
                res = verifier.verify(text)
                line = {"source": source, **res.to_dict()} if source else res.to_dict()
                all_valid = all_valid and res.ok
            print(json.dumps(line, ensure_ascii=False))
        return 0 if all_valid and items else 1
    finally:
        verifier.close()
