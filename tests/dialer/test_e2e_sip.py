"""End to end over real SIP on loopback: the engine process (CLI) calls a pjsua2 callee simulator
process, plays TTS prompts, recognises espeak-ng speech with pocketsphinx and RFC 2833 digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from central.dialer import service as svc
from central.dialer.templates import Template
from central.hub import Hub

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def espeak(path: Path, text: str) -> str:
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
    return str(path)


@pytest.mark.slow
def test_campaign_over_real_sip(hub: Hub, tmp_path: Path) -> None:
    wav = {w: espeak(tmp_path / f"{w}.wav", w) for w in ("yes", "no", "four")}
    script = {
        "log": str(tmp_path / "callee.jsonl"), "work": str(tmp_path / "callee"),
        "numbers": {
            "13800000001": {"turns": [{"say": wav["yes"]}, {"dtmf": "4"}]},  # speech, then keypad
            "13800000002": {"turns": [{"dtmf": "1"}, {"say": wav["four"]}]},  # keypad, then a spoken digit
            "13800000003": {"busy_first": 1, "turns": [{"say": wav["no"]}]},  # busy once, then "no"
            "13800000004": {"mode": "ring"},  # never answers
            "13800000005": {"turns": [{"say": wav["yes"]}]},  # on the do-not-call list: must not ring
            "13800000006": {"turns": []},  # answers and stays silent
        },
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    callee_err = tmp_path / "callee.stderr"
    callee = subprocess.Popen([sys.executable, str(HERE / "callee_sim.py"), str(tmp_path / "script.json")],
                              stdout=subprocess.PIPE, stderr=callee_err.open("w"), text=True, env=env)
    callee_alive = False
    try:
        port = 0
        for line in callee.stdout:  # type: ignore[union-attr]  # pjlib prints a banner first
            if line.startswith("READY"):
                port = int(line.split()[1])
                break

        tpl = Template.from_yaml((HERE / "assets" / "survey_en.yaml").read_text())
        svc.save_template(hub, tpl, "/city/district-a", "alice")
        sched = svc.Schedule(timezone="Asia/Shanghai", windows=[{"start": "09:00", "end": "12:00"}],
                             max_concurrent=3, calls_per_second=5, max_attempts=2,
                             retry_delay_s={"busy": 1, "no_answer": 1, "failed": 1})
        tid = svc.create_task(hub, svc.TaskIn(name="e2e", org="/city/district-a", template_key="e2e-survey",
                                              schedule=sched), "alice")
        svc.add_dnc(hub, "138-0000-0005", "/city", "alice", reason="asked not to be called")
        csv = "phone,name\n" + "".join(f"1380000000{i},P{i}\n" for i in range(1, 7)) + "12345,Bad\n"
        res = svc.import_contacts(hub, tid, "list.csv", csv.encode(), "alice")
        assert res["imported"] == 6 and res["dnc_skipped"] == 1
        assert res["errors"] == [{"row": 8, "field": "phone", "error": res["errors"][0]["error"]}]
        svc.change_state(hub, tid, "start", "alice")

        settings = tmp_path / "settings.yaml"
        settings.write_text(yaml.safe_dump({"data_dir": str(hub.settings.data_dir), "mqtt": {"enabled": False},
                                            "database_url": hub.settings.store_url}))  # the engine: same store
        # The clock starts 3 s before the 09:00 window opens: nothing may be dialled before it does.
        engine = subprocess.run(
            [sys.executable, "-c", "from central.dialer.cli import app; app()", "run", "--settings", str(settings),
             "--uri-template", f"sip:{{phone}}@127.0.0.1:{port}", "--ring-timeout", "2",
             "--clock-start", "2025-03-10T08:59:57+08:00", "--exit-when-idle", "--max-runtime", "100"],
            env=env, capture_output=True, text=True, timeout=130)
        assert engine.returncode == 0, engine.stderr[-2000:]
        callee_alive = callee.poll() is None
    finally:
        callee.terminate()
        callee.wait(timeout=10)
    # a simulator that died mid-campaign ends its calls: say so rather than blame the robot's outcomes
    assert callee_alive, f"callee simulator exited {callee.returncode}: {callee_err.read_text()[-2000:]}"

    cdrs = svc.cdrs(hub, tid)
    by_phone: dict[str, list[dict]] = {}
    for c in cdrs:
        by_phone.setdefault(c["phone_masked"], []).append(c)
    assert min(datetime.fromisoformat(c["started_at"]) for c in cdrs) >= datetime.fromisoformat(
        "2025-03-10T09:00:00+08:00")

    print("\n".join(f"{c['phone_masked']} {c['outcome']} {c['transcript']}" for c in cdrs))  # shown on failure

    def outcomes(i: int) -> list[str]:
        return [c["outcome"] for c in by_phone.get(f"138****000{i}", [])]

    assert outcomes(1) == ["completed"]
    assert outcomes(2) == ["completed"]
    assert outcomes(3) == ["busy", "callback"]  # retried after busy
    assert outcomes(4) == ["no_answer", "no_answer"]  # max_attempts = 2
    assert outcomes(5) == []  # do-not-call: never dialled
    assert outcomes(6) == ["no_input"]
    one, two, three = by_phone["138****0001"][0], by_phone["138****0002"][0], by_phone["138****0003"][1]
    assert one["answers"]["good_time"] == {"intent": "yes", "value": "yes", "text": "yes", "dtmf": "",
                                           "via": "asr"}
    assert one["answers"]["score"]["value"] == 4 and one["answers"]["score"]["via"] == "dtmf"
    assert two["answers"]["score"] == {"intent": "score", "value": 4, "text": "four", "dtmf": "", "via": "asr"}
    assert three["answers"]["good_time"]["intent"] == "no" and three["answers"]["good_time"]["via"] == "asr"
    assert by_phone["138****0003"][0]["sip_status"] == 486
    media = svc.media(hub)  # recordings are in the hub's media store, each read checked against its SHA-256
    assert all(len(media.get(c["recording"], c["recording_sha256"])) > 1000 for c in cdrs if c["answered_at"])
    assert not list((hub.settings.data_dir / "dialer" / "recordings").glob("*.wav"))  # none left in work_dir

    called = [json.loads(x)["phone"] for x in (tmp_path / "callee.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "incoming"]
    assert "13800000005" not in called and called.count("13800000003") == 2

    rep = svc.report(hub, tid)
    assert rep["task"]["status"] == "completed"
    assert rep["outcomes"] == {"completed": 2, "callback": 1, "no_answer": 1, "dnc": 1, "no_input": 1}
    assert rep["answers"]["good_time"] == {"yes": 2, "no": 1} and rep["answers"]["score"] == {"4": 2}
    p = rep["progress"]
    assert (p["dialled"], p["answered"], p["completed"], p["failed"], p["skipped"]) == (7, 4, 2, 1, 1)
    lines = svc.export_csv(hub, tid).splitlines()
    assert lines[0] == "row,phone,name,status,outcome,attempts,good_time,score,reason"
    assert "2,138****0001,P1,done,completed,1,yes,4," in lines
