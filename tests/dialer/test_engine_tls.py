"""SIP over TLS: the engine verifies the trunk's certificate against its CA (TLS 1.2 at least) and a call
completes; a trunk whose certificate chains to another CA gets no call, and the CDR says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from central.dialer import service as svc
from central.hub import Hub
from central.iam.certs import generate
from tests.dialer.sipp import engine, settings_file
from tests.dialer.test_engine_sip_results import CLOCK, _run, _task
from tests.helpers import stop_processes

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def test_over_tls_the_trunk_is_verified_and_a_call_completes(hub: Hub, tmp_path: Path) -> None:
    trunk = generate(tmp_path / "trunk-ca", hosts=["127.0.0.1"])
    other = generate(tmp_path / "other-ca", hosts=["127.0.0.1"])
    script = {"log": str(tmp_path / "callee.jsonl"), "work": str(tmp_path / "callee"),
              "tls": {"cert": str(trunk.cert), "key": str(trunk.key)},
              "numbers": {"13800000001": {"turns": [{"dtmf": "1"}]}, "13800000002": {"turns": []}}}
    (tmp_path / "callee").mkdir()
    (tmp_path / "script.json").write_text(json.dumps(script))
    callee = subprocess.Popen([sys.executable, str(HERE / "callee_sim.py"), str(tmp_path / "script.json")],
                              stdout=subprocess.PIPE, stderr=(tmp_path / "callee.stderr").open("w"), text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        port = next(int(line.split()[1]) for line in callee.stdout if line.startswith("READY"))  # type: ignore[union-attr]
        uri = f"sip:{{phone}}@127.0.0.1:{port};transport=tls"
        s = settings_file(hub, tmp_path / "s.yaml")
        good = _task(hub, "tls", ["13800000001"], max_concurrent=1, max_attempts=1)
        _run(engine(s, port, "--transport", "tls", "--tls-ca-file", str(trunk.ca_cert), *CLOCK, "--exit-when-idle",
                    "--max-runtime", "90", log=tmp_path / "good.log", uri=uri), tmp_path / "good.log")
        (cdr,) = svc.cdrs(hub, good)
        assert (cdr["outcome"], cdr["sip_status"]) == ("completed", 200), (tmp_path / "good.log").read_text()[-3000:]

        bad = _task(hub, "tls-wrong-ca", ["13800000002"], max_concurrent=1, max_attempts=1)
        _run(engine(s, port, "--transport", "tls", "--tls-ca-file", str(other.ca_cert), *CLOCK, "--exit-when-idle",
                    "--max-runtime", "90", log=tmp_path / "bad.log", uri=uri), tmp_path / "bad.log")
        (cdr,) = svc.cdrs(hub, bad)
        assert cdr["outcome"] == "failed" and not cdr["answered_at"], cdr
        assert "certificate" in (cdr.get("reason") or "").lower() + (cdr.get("sip_reason") or "").lower(), cdr
    finally:
        stop_processes([callee])
    called = [json.loads(x)["phone"] for x in (tmp_path / "callee.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "incoming"]
    assert called == ["13800000001"]  # the wrong-CA engine never got as far as an INVITE
