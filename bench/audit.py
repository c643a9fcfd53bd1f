"""Audit appends per second: a loop of `central.iam.audit.record()` calls, as the services make them.

Value: rows per CPU-second into a hub's keyed chain (HMAC-SHA-256, or HMAC-SM3 with `--profile gm`), one write
transaction per row (how routes record) and 1,000 rows per transaction (how batches record).
Baseline, same run: the same loop into an identical hub whose database names no chain key, which
writes the legacy unkeyed chain (SHA-256 / SM3, what record() wrote before the chain was keyed).
Last stdout line: {"metric","value","unit","target","baseline","ratio"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from central.app import build_hub  # noqa: E402
from central.iam.audit import record  # noqa: E402
from central.settings import MqttSettings, SecuritySettings, Settings  # noqa: E402


def _loop(store: Any, n: int, per_tx: int) -> float:
    # CPU time of this process, not wall time: on a shared 2-core machine the wall clock mostly
    # measures the neighbours, and an append is CPU-bound (WAL, synchronous=NORMAL).
    t0 = time.process_time()
    done = 0
    while done < n:
        with store.tx() as db:
            for _ in range(min(per_tx, n - done)):
                record(db, actor="bench", action="bench.write", target=f"thing:{done}", org="/city/district-a",
                       detail={"i": done, "名": "城市码"})
                done += 1
    return n / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--profile", choices=["intl", "gm"], default="intl")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    hub = build_hub(Settings(data_dir=tmp / "hub", mqtt=MqttSettings(enabled=False),
                             security=SecuritySettings(crypto_profile=a.profile)))
    # Baseline: an identical hub whose database names no chain key, so record() writes the legacy
    # unkeyed chain (what it did before keying); same schema and contents, only the hash differs.
    bare = build_hub(Settings(data_dir=tmp / "legacy", mqtt=MqttSettings(enabled=False),
                              security=SecuritySettings(crypto_profile=a.profile)))
    with bare.store.tx() as db:
        db.run("DELETE FROM iam_meta WHERE key = 'audit_key'")
    out: dict[str, float] = {}
    for per_tx in (1, 1000):
        n = a.rows // 4 if per_tx == 1 else a.rows
        keyed, legacy = [], []
        for _ in range(5):  # alternated, best of each: the machine is shared, so noise hits both alike
            keyed.append(_loop(hub.store, n, per_tx))
            legacy.append(_loop(bare.store, n, per_tx))
        out[f"keyed_tx{per_tx}"], out[f"legacy_tx{per_tx}"] = max(keyed), max(legacy)
    for k, v in out.items():
        print(f"{k}: {v:,.0f} rows/s")
    hub.close()
    bare.close()
    value, base = out["keyed_tx1000"], out["legacy_tx1000"]
    print(json.dumps({"metric": f"audit_append_rows_per_s_{a.profile}", "value": round(value), "unit": "rows/s",
                      "target": round(0.8 * base), "baseline": round(base), "ratio": round(value / base, 3)}))


if __name__ == "__main__":
    main()
