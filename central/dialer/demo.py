"""Demo seed (`citybrain hub demo`): a short Mandarin call template, and on every demo run a fresh call task
of three contacts started at once. The demo's simulated callee (central.dialer.callee) answers them: one
says 是的 (then presses 1 if the robot asks again, as it does where no zh speech model is installed), one
presses 1, one is busy and answers the retry. Writes the callee's script and the task id under
<demo_dir>/dialer/ for the demo runner (citybrain/demo.py), which starts the callee and an engine."""

from __future__ import annotations

import json
from datetime import datetime, time
from pathlib import Path
from typing import Any

import yaml

from central.hub import Hub

ORG = "/city"
ACTOR = "system:demo"
TEMPLATE = """\
key: demo-call
name: 演示电话 (demo call)
description: "The demo call task: one question, answered by speech or by key."
language: zh
start: confirm
nodes:
  - id: confirm
    prompt: "您好{name}，这里是城市大脑演示。您收到社区通知了吗？"
    question: received
    timeout_s: 5
    max_speech_s: 4
    max_retries: 1
    no_match_prompt: 抱歉，我没有听清。
    answers:
      - {intent: "yes", expr: "@yes | 收到", dtmf: "1", next: bye}
      - {intent: "no", expr: "@no", dtmf: "2", next: bye}
  - {id: bye, kind: end, prompt: 谢谢，再见。, outcome: completed}
"""
# phone -> (name, what the simulated callee does): each contact shows one way a call goes
CONTACTS: dict[str, tuple[str, dict[str, Any]]] = {
    "13800000001": ("张先生", {"turns": [{"say": "是的", "lang": "zh"}, {"dtmf": "1"}]}),  # speech
    "13800000002": ("李女士", {"turns": [{"dtmf": "1"}]}),  # keypad
    "13800000003": ("王先生", {"busy_first": 1, "turns": [{"dtmf": "1"}]}),  # busy, then answers the retry
}


def seed(hub: Hub, demo_dir: Path) -> list[str]:
    from central.dialer import service as svc
    from central.dialer.templates import Template

    tpl = Template.from_yaml(TEMPLATE)
    try:
        svc.get_template(hub, tpl.key)
    except svc.DialerError:
        svc.save_template(hub, tpl, ORG, ACTOR)
    sched = svc.Schedule(windows=[svc.Window(start=time(0), end=time(23, 59, 59))],  # any time of day
                         max_concurrent=3, calls_per_second=2, max_attempts=2,
                         retry_delay_s={"busy": 2, "no_answer": 2, "failed": 2})
    tid = svc.create_task(hub, svc.TaskIn(name=f"Demo call {datetime.now():%Y-%m-%d %H:%M:%S}", org=ORG,
                                          template_key=tpl.key, schedule=sched), ACTOR)
    csv = "phone,name\n" + "".join(f"{phone},{name}\n" for phone, (name, _) in CONTACTS.items())
    svc.import_contacts(hub, tid, "demo-contacts.csv", csv.encode(), ACTOR)
    svc.change_state(hub, tid, "start", ACTOR)

    work = demo_dir / "dialer"
    work.mkdir(parents=True, exist_ok=True)
    script = {"numbers": {phone: spec for phone, (_, spec) in CONTACTS.items()},
              "default": {"turns": [{"dtmf": "1"}]},  # a number the console adds: answers and presses 1
              "log": str(work / "callee.jsonl"), "work": str(work / "callee")}
    (work / "callee.yaml").write_text(yaml.safe_dump(script, allow_unicode=True, sort_keys=False),
                                      encoding="utf-8")
    (work / "demo.json").write_text(json.dumps({"task_id": tid}))
    lines = [f"Dialer:     call task {tid} ({len(CONTACTS)} contacts, template {tpl.key}), started "
             f"(GET /api/v1/dialer/tasks/{tid}; its CDRs: /api/v1/dialer/tasks/{tid}/cdrs)"]
    lines += [f"            note: {w}" for w in svc.task_warnings(hub, tpl) if w.startswith("template.language")]
    return lines
