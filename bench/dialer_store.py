"""Dialer store hot paths on a hub's own database (SQLite by default, `--database-url` for PostgreSQL):

1. CSV import of a call list (`import_contacts`, 100k rows by default): parse, normalise, encrypt, blind-index,
   insert. Value: CPU seconds of this process (the wall clock on a shared machine mostly measures the
   neighbours). Baseline, same run: the per-row work without any store (normalise + encrypt + blind index +
   mask of the same phones), so `ratio` = baseline / value is the share of the import that is not the store.
2. The engine's claim/finish cycle (`claim_due` 4 at a time, then `finish_attempt` each) on that 100k-row
   task: claims per CPU-second, reported beside the import as `claims_per_s`.

Usage: python bench/dialer_store.py [--rows 100000] [--claims 2000] [--database-url postgresql://...]
Last stdout line: {"metric","value","unit","target","baseline","ratio", "claims_per_s", ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from central.app import build_hub  # noqa: E402
from central.dialer import service as svc  # noqa: E402
from central.settings import MqttSettings, Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--claims", type=int, default=2000)
    ap.add_argument("--database-url", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dialer-store-bench-") as td:
        kw = {"database_url": a.database_url} if a.database_url else {}
        hub = build_hub(Settings(data_dir=Path(td) / "hub", mqtt=MqttSettings(enabled=False), **kw))
        try:
            sched = svc.Schedule(windows=[{"start": "00:00", "end": "23:59"}], max_concurrent=10, max_attempts=1)
            tid = svc.create_task(hub, svc.TaskIn(name="bench", org="/city", template_key="notice",
                                                  schedule=sched), "bench")
            phones = [f"138{i:08d}" for i in range(a.rows)]
            data = ("phone,name,priority,note\n" + "".join(f"{p},n{i},{i % 7},x{i}\n" for i, p in enumerate(phones))
                    ).encode()

            c = svc._cipher(hub)
            t0 = time.process_time()
            for p in phones:  # the same per-row work as the import, without the store
                q = svc.normalize_phone(p)
                c.encrypt(q), c.blind_index("phone", q), svc.mask_phone(q)
            base = time.process_time() - t0

            t0, w0 = time.process_time(), time.perf_counter()
            r = svc.import_contacts(hub, tid, "list.csv", data, "bench")
            cpu, wall = time.process_time() - t0, time.perf_counter() - w0
            assert r["imported"] == a.rows, r["imported"]
            print(f"import {a.rows} rows: cpu {cpu:.2f} s, wall {wall:.2f} s; per-row work alone {base:.2f} s")

            svc.change_state(hub, tid, "start", "bench")
            task = svc.running_tasks(hub)[0]
            now = datetime(2025, 3, 10, 4, 0, tzinfo=UTC)
            done = 0
            t0 = time.process_time()
            while done < a.claims:
                got = svc.claim_due(hub, task, now, 4)
                assert got, "nothing claimed"
                for contact in got:
                    svc.finish_attempt(hub, contact["id"], {"started_at": svc.iso(now), "outcome": "completed"}, now)
                done += len(got)
            claim_cpu = time.process_time() - t0
            print(f"claim+finish {done} contacts: cpu {claim_cpu:.2f} s")
        finally:
            hub.close()
    print(json.dumps({"metric": f"dialer_import_{a.rows}_rows_cpu_s", "value": round(cpu, 3), "unit": "s (CPU)",
                      "target": 6.0, "baseline": round(base, 3), "ratio": round(base / cpu, 3),
                      "wall_s": round(wall, 3), "claims_per_s": round(done / claim_cpu, 1)}))


if __name__ == "__main__":
    main()
