"""`citybrain edge verify (IMAGE | --payload TEXT) --config FILE`: offline verdicts as JSON lines.

Uses the trust lists the terminal last synced (in scanner.data_dir) and no network. A single-use code
verified here counts as used on this terminal (this command is how a gate script checks a pass).
Every input gets its own line: each code found, "no-code" for an image without one, "unreadable" (with
the reason, also as one line on stderr) for a file that is no image; one bad file in a directory does not
stop the others.
Exit status: 0 every code valid; 1 any code not valid or no code found; 2 usage/config error or any
unreadable input.
"""

from __future__ import annotations

import json
import sqlite3
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
    except (ValueError, OSError, sqlite3.Error) as e:
        return _err(f"{config}: {e}")
    try:
        # (source, text or None for no code, reason when the input could not be read)
        items: list[tuple[str | None, str | None, str | None]]
        if payload is not None:
            items = [(None, payload, None)]
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
                if isinstance(found, DecodeError):
                    items.append((str(path), None, str(found)))
                else:
                    items += [(str(path), d.text, None) for d in found] or [(str(path), None, None)]
        status = 0 if items else 1
        for source, text, unreadable in items:
            if unreadable is not None:
                line: dict[str, object] = {"source": source, "verdict": "unreadable", "reason": unreadable}
                print(unreadable.splitlines()[0], file=sys.stderr)
                status = 2
            elif text is None:
                line = {"source": source, "verdict": "no-code", "reason": "no QR code found"}
                status = max(status, 1)
            else:
                res = verifier.verify(text)
                line = {"source": source, **res.to_dict()} if source else res.to_dict()
                if not res.ok:
                    status = max(status, 1)
            print(json.dumps(line, ensure_ascii=False))
        return status
    finally:
        verifier.close()
