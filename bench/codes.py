"""City-code benchmark: online verification over HTTP with N issued codes, and batch issuing.

    .venv/bin/python bench/codes.py [--codes 1000000] [--seconds 8] [--workers 2] [--clients 2] [--threads 8]
                                    [--rounds 1] [--database-url postgresql://...]

1. Builds a hub in a temp dir (intl profile): department, duty, approved scene, app key.
2. Batch issue: signed codes/s through `CodesService.issue_batch` (no images), with and without the
   registry identity check.
3. Fills codes_issued up to --codes rows (real signed codes for the probes, cheap filler rows for the
   rest: the verify path's cost depends on the serial index depth, not on the filler's content).
4. Runs uvicorn (subprocess, --workers) for the hub and, same settings, for a bare FastAPI app returning a
   constant (the baseline), and drives each with the same pure-Python client: --clients processes x
   --threads keep-alive http.client connections. Reports req/s and p50/p99 latency.
5. --rounds N: the two servers stay up and take the load in turn (baseline, hub, hub, baseline, ...), N times
   each; the figures are medians, the ratio the median of each round's own hub/baseline ratio (on a shared,
   noisy machine one run's ratio moves by 20 % and more). Also printed: the server processes' CPU time per
   request (user+sys from /proc), which other load on the machine moves much less than req/s.
--database-url: the hub on that (EMPTY) database, e.g. PostgreSQL; default a SQLite file in the data dir.
Last stdout line: {"metric","value","unit","target","baseline","ratio"}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import FastAPI

ROOT = Path(__file__).resolve().parent.parent

# The baseline app: imported by uvicorn as `codes:baseline_app` (with --app-dir bench).
baseline_app = FastAPI()


@baseline_app.post("/api/v1/codes/verify")
def _const() -> dict[str, str]:
    return {"verdict": "valid", "reason": "ok"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_hub(
    data_dir: Path, total: int, probes: int, database_url: str | None = None
) -> tuple[list[str], str, dict[str, float]]:
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    from central.app import build_hub
    from central.codes import store as codes_store
    from central.codes.service import service_of
    from central.registry.ids import make_id
    from central.settings import MqttSettings, Settings
    from protocol import citycode

    hub = build_hub(Settings(data_dir=data_dir, database_url=database_url, mqtt=MqttSettings(enabled=False)))
    svc = service_of(hub)
    svc.register_department("bench", "HEALTH", "Health", "/city/health")
    svc.import_duties("bench", [{"dept_id": "HEALTH", "scene_type": "clinic.pass"}])
    app = svc.apply("bench", "HEALTH", "Clinic pass", "clinic.pass", "static", "person", "bench", True, "Y")
    svc.decide("bench-checker", app["id"], True, "HC")  # maker-checker: another approver
    key = svc.create_app_key("bench", app["id"], "bench")["key"]
    figures: dict[str, float] = {}

    # batch issue, no identity lookups (identity format checked by the code builder)
    n_batch, batches = 5000, 4
    t0 = time.perf_counter()
    texts: list[str] = []
    for b in range(batches):
        items = [{"identity_id": make_id("person", "310101", b * n_batch + i + 1)} for i in range(n_batch)]
        texts += [c["text"] for c in svc.issue_batch("bench", app["id"], items, check_identity=False)]
    figures["batch_issue_per_s"] = n_batch * batches / (time.perf_counter() - t0)

    # batch issue with every identity validated against the registry table
    now = "2025-01-01T00:00:00+00:00"
    ids = [make_id("person", "310102", i + 1) for i in range(n_batch)]
    cols = ("id", "type", "region", "name", "org", "status", "created_by", "created_at", "updated_at")
    entities = sa.table("registry_entities", *map(sa.column, cols))  # the registry's table, by name
    with hub.store.tx() as db:
        db.run(sa.insert(entities), [{"id": i, "type": "person", "region": "310102", "name": "x", "org": "/city",
                                      "status": "active", "created_by": "bench", "created_at": now,
                                      "updated_at": now} for i in ids])
    t0 = time.perf_counter()
    texts += [c["text"] for c in svc.issue_batch("bench", app["id"], [{"identity_id": i} for i in ids])]
    figures["batch_issue_checked_per_s"] = n_batch / (time.perf_counter() - t0)

    filler = max(total - len(texts), 0)
    t0 = time.perf_counter()
    for start in range(0, filler, 50_000):  # Core executemany, in chunks (bounded memory)
        with hub.store.tx() as db:
            codes_store.insert_issued(db, [
                {"serial": f"F{i:015d}", "app_id": app["id"], "dept_id": "HEALTH", "code_system": "HC",
                 "identity_id": f"P{i:017d}", "kid": "x", "issued_at": 0, "expires_at": 1, "text": "x",
                 "status": "active", "scans": 0} for i in range(start, min(start + 50_000, filler))])
    figures["fill_s"] = time.perf_counter() - t0
    figures["codes"] = len(texts) + filler
    # revoke a few probes so the verify mix exercises the revoked path too
    for t in texts[:5]:
        svc.revoke_code("bench", citycode.parse(t).serial, "bench")
    if hub.store.dialect == "sqlite":  # start the timed part with an empty WAL (a SQLite file bench)
        with hub.store.read() as db:
            db.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    hub.close()
    step = max(len(texts) // probes, 1)
    return texts[::step][:probes], key, figures


def _client(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], threads: int, seconds: float, out: mp.Queue
) -> None:  # type: ignore[type-arg]
    import http.client
    import threading

    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start = time.perf_counter() + 0.5  # warm-up connections before the clock starts
    stop = start + seconds

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = k
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                break
            body = bodies[i % len(bodies)]
            i += threads
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ok = False
            t1 = time.perf_counter()
            if t0 >= start:
                if ok:
                    lat[k].append(t1 - t0)
                else:
                    errors[k] += 1
        conn.close()

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(([x for xs in lat for x in xs], sum(errors)))


def drive(
    port: int, bodies: list[bytes], headers: dict[str, str], clients: int, threads: int, seconds: float
) -> dict[str, float]:
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [
        mp.Process(target=_client, args=(port, "/api/v1/codes/verify", bodies, headers, threads, seconds, q))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    lats: list[float] = []
    errors = 0
    for _ in procs:
        xs, e = q.get()
        lats += xs
        errors += e
    for p in procs:
        p.join()
    lats.sort()
    n = len(lats)
    return {
        "rps": n / seconds,
        "p50_ms": lats[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lats[min(int(n * 0.99), n - 1)] * 1000 if n else float("nan"),
        "errors": errors,
        "requests": n,
    }


def drive_wrk(
    port: int, bodies: list[bytes], headers: dict[str, str], seconds: float, connections: int = 32
) -> dict[str, float]:
    """The same load from wrk (C, one thread): on 2 cores a Python client eats the CPU it measures."""
    import re
    import shutil

    wrk = shutil.which("wrk")
    assert wrk is not None
    hdrs = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    lua_bodies = ",\n".join("[[" + b.decode() + "]]" for b in bodies[:500])
    script = Path(tempfile.mkdtemp()) / "verify.lua"
    script.write_text(
        f"local bodies = {{\n{lua_bodies}\n}}\nlocal i = 0\nlocal h = {{{hdrs}}}\n"
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("POST", "/api/v1/codes/verify", h, bodies[(i % #bodies) + 1])\nend\n'
    )
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True,
    ).stdout
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
        return float(m.group(1)) * unit[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "errors": int(non2xx.group(1)) if non2xx else 0, "requests": 0}


def cpu_seconds(pid: int) -> float | None:
    """user+sys seconds of `pid` and its children that are alive (uvicorn's workers); None without /proc."""
    try:
        kids = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True).stdout.split()
        total = 0.0
        for p in [pid, *map(int, kids)]:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total
    except (OSError, ValueError):
        return None


def serve(target: list[str], env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        *target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                time.sleep(0.5 * workers)  # let every worker finish its import
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--codes", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1, help="baseline and hub take the load in turn, N times each")
    ap.add_argument("--database-url", default=None,
                    help="an EMPTY database for the hub (postgresql://...); default: a SQLite file in the data dir")
    ap.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                    help="load generator: wrk when installed (auto), else Python threads")
    args = ap.parse_args()
    import shutil

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)

    def load(port: int) -> dict[str, float]:
        if use_wrk:
            return drive_wrk(port, bodies, headers, args.seconds)
        return drive(port, bodies, headers, args.clients, args.threads, args.seconds)

    data_dir = args.dir or Path(tempfile.mkdtemp(prefix="bench-codes-"))
    t0 = time.perf_counter()
    probes, app_key, fig = setup_hub(data_dir, args.codes, probes=2000, database_url=args.database_url)
    print(f"setup: {fig['codes']:.0f} codes in {time.perf_counter() - t0:.1f} s (filler insert {fig['fill_s']:.1f} s)")
    print(
        f"batch issue (signed, no images): {fig['batch_issue_per_s']:.0f} codes/s; "
        f"with registry identity check: {fig['batch_issue_checked_per_s']:.0f} codes/s"
    )

    env = {
        **os.environ,
        "CITYBRAIN_DATA_DIR": str(data_dir),
        "CITYBRAIN_MQTT__ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    if args.database_url:
        env["CITYBRAIN_DATABASE_URL"] = args.database_url
    headers = {"Content-Type": "application/json", "X-App-Key": app_key}
    bodies = [json.dumps({"text": t}).encode() for t in probes]

    def timed(proc: subprocess.Popen[bytes], port: int) -> dict[str, float]:
        c0 = cpu_seconds(proc.pid)
        res = load(port)
        c1 = cpu_seconds(proc.pid)
        n = res["requests"] or res["rps"] * args.seconds  # wrk reports a rate, not a count
        res["cpu_us"] = (c1 - c0) / n * 1e6 if c0 is not None and c1 is not None and n else float("nan")
        return res

    print(f"load generator: {'wrk (1 thread, 32 connections)' if use_wrk else 'Python threads'}; "
          f"backend: {'PostgreSQL' if args.database_url else 'SQLite'}")
    base_proc, base_port = serve(["--app-dir", str(ROOT / "bench"), "codes:baseline_app"], env, args.workers)
    bases: list[dict[str, float]] = []
    hubs: list[dict[str, float]] = []
    try:
        hub_proc, hub_port = serve(["--factory", "central.app:create_app"], env, args.workers)
        try:
            # sanity: the probes verify (valid, and revoked for the first few) before timing
            import http.client

            c = http.client.HTTPConnection("127.0.0.1", hub_port, timeout=10)
            verdicts = []
            for b in bodies[:10]:
                c.request("POST", "/api/v1/codes/verify", body=b, headers=headers)
                verdicts.append(json.loads(c.getresponse().read())["verdict"])
            c.close()
            print(f"probe verdicts: {verdicts}")
            assert "valid" in verdicts, verdicts
            for r in range(args.rounds):  # ABBA: neither side always runs first
                for side in (("base", "hub") if r % 2 == 0 else ("hub", "base")):
                    if side == "base":
                        bases.append(timed(base_proc, base_port))
                    else:
                        hubs.append(timed(hub_proc, hub_port))
                b, h = bases[-1], hubs[-1]
                print(f"round {r + 1}: baseline {b['rps']:.0f} req/s ({b['cpu_us']:.0f} us CPU/req), online verify "
                      f"{h['rps']:.0f} req/s ({h['cpu_us']:.0f} us CPU/req), ratio {h['rps'] / b['rps']:.3f}")
        finally:
            hub_proc.terminate()
            hub_proc.wait(10)
    finally:
        base_proc.terminate()
        base_proc.wait(10)

    def med(rs: list[dict[str, float]], k: str) -> float:
        return statistics.median(x[k] for x in rs)

    base = {k: med(bases, k) for k in ("rps", "p50_ms", "p99_ms", "errors", "cpu_us")}
    res = {k: med(hubs, k) for k in ("rps", "p50_ms", "p99_ms", "errors", "cpu_us")}
    ratio = statistics.median(h["rps"] / b["rps"] for b, h in zip(bases, hubs, strict=True))
    what = f"median of {args.rounds} rounds" if args.rounds > 1 else "one round"
    print(
        f"baseline (constant endpoint, {what}): {base['rps']:.0f} req/s, p50 {base['p50_ms']:.2f} ms, "
        f"p99 {base['p99_ms']:.2f} ms, errors {base['errors']:.0f}, server CPU {base['cpu_us']:.0f} us/req"
    )
    print(
        f"online verify ({fig['codes']:.0f} codes, {what}): {res['rps']:.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
        f"p99 {res['p99_ms']:.2f} ms, errors {res['errors']:.0f}, server CPU {res['cpu_us']:.0f} us/req "
        f"(CPU-per-request ratio to the baseline {base['cpu_us'] / res['cpu_us']:.3f})"
    )
    print(
        json.dumps(
            {
                "metric": "batch_issue",
                "value": round(fig["batch_issue_per_s"]),
                "unit": "codes/s",
                "target": 2000,
                "baseline": None,
                "ratio": None,
            }
        )
    )
    print(
        json.dumps(
            {
                "metric": "online_verify_p99",
                "value": round(res["p99_ms"], 2),
                "unit": "ms",
                "target": 20,
                "baseline": round(base["p99_ms"], 2),
                "ratio": round(res["p99_ms"] / base["p99_ms"], 2),
            }
        )
    )
    print(
        json.dumps(
            {
                "metric": "online_verify_throughput",
                "value": round(res["rps"]),
                "unit": "req/s",
                "target": 3000,
                "baseline": round(base["rps"]),
                "ratio": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
