"""Issue 20, point 5: every task and template setting is bounded and a bad one answers 422 naming its
field; nothing a task accepts can reach the engine as a value it cannot compute with."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from central.dialer import service as svc
from central.hub import Hub
from tests.helpers import auth, token_for

API = "/api/v1/dialer"
ORG = "/city/district-a"


def _admin(hub: Hub) -> dict[str, str]:
    return auth(token_for(hub, "ann", role="district_admin", org=ORG))


def _fields(r: Any) -> list[str]:
    return [e["field"] for e in r.json().get("errors", [])]


def _template(nodes: list[dict[str, Any]], start: str = "ask1", key: str = "ops-t") -> dict[str, Any]:
    return {"org": ORG, "template": {"key": key, "name": "t", "start": start, "nodes": nodes}}


ASK = {"id": "ask1", "prompt": "是吗", "answers": [{"intent": "yes", "expr": "是", "next": "bye"}]}
BYE = {"id": "bye", "kind": "end", "prompt": "再见", "outcome": "completed"}


def test_huge_retry_delay_is_refused_naming_the_outcome(client: TestClient, hub: Hub) -> None:
    h = _admin(hub)
    r = client.post(f"{API}/tasks", headers=h, json={"name": "t", "org": ORG, "template_key": "notice",
                                                     "schedule": {"retry_delay_s": {"busy": 1000000000000}}})
    assert r.status_code == 422, r.text
    assert "schedule.retry_delay_s.busy" in _fields(r)
    # a key that is no outcome the engine retries names that key
    r = client.post(f"{API}/tasks", headers=h, json={"name": "t", "org": ORG, "template_key": "notice",
                                                     "schedule": {"retry_delay_s": {"completed": 5}}})
    assert r.status_code == 422 and any(f.startswith("schedule.retry_delay_s.completed") for f in _fields(r))
    # the largest allowed delay still computes a retry time
    ok = svc.Schedule(retry_delay_s={"busy": svc.MAX_RETRY_DELAY_S})
    assert ok.retry_delay_s["busy"] == 7 * 24 * 3600


@pytest.mark.parametrize(("schedule", "field"), [
    ({"windows": [{"start": "09:00+08:00", "end": "10:00"}]}, "schedule.windows.0.start"),
    ({"windows": [{"start": "10:00", "end": "09:00"}]}, "schedule.windows.0"),
    ({"windows": [{"start": "09:00", "end": "12:00"}, {"start": "11:00", "end": "13:00"}]}, "schedule.windows"),
    ({"windows": []}, "schedule.windows"),
    ({"windows": [{"start": f"{h:02d}:00", "end": f"{h:02d}:30"} for h in range(25)]}, "schedule.windows"),
    ({"weekdays": [1, 1]}, "schedule.weekdays"),
    ({"weekdays": [7]}, "schedule.weekdays"),
    ({"timezone": "../../etc/passwd"}, "schedule.timezone"),
    ({"timezone": "Mars/Olympus"}, "schedule.timezone"),
    ({"max_attempts": 11}, "schedule.max_attempts"),
    ({"max_concurrent": 501}, "schedule.max_concurrent"),
    ({"calls_per_second": 0.001}, "schedule.calls_per_second"),
    ({"calls_per_second": 1000}, "schedule.calls_per_second"),
    ({"retry_delay_s": {"busy": -1}}, "schedule.retry_delay_s.busy"),
])
def test_bad_schedule_fields_answer_422_naming_them(client: TestClient, hub: Hub, schedule: dict[str, Any],
                                                    field: str) -> None:
    r = client.post(f"{API}/tasks", headers=_admin(hub),
                    json={"name": "t", "org": ORG, "template_key": "notice", "schedule": schedule})
    assert r.status_code == 422, r.text
    assert field in _fields(r), _fields(r)


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x" * 121}, "name"),
    ({"name": "a\x01b"}, "name"),
    ({"template_key": "K" * 500}, "template_key"),
    ({"webhook_url": "https://" + "a" * 3000, "webhook_secret": "s" * 16}, "webhook_url"),
    ({"webhook_secret": "s" * 300}, "webhook_secret"),
    ({"org": "/" + "a" * 300}, "org"),
])
def test_bad_task_fields_answer_422_naming_them(client: TestClient, hub: Hub, body: dict[str, Any],
                                                field: str) -> None:
    r = client.post(f"{API}/tasks", headers=_admin(hub),
                    json={"name": "t", "org": ORG, "template_key": "notice", **body})
    assert r.status_code == 422, r.text
    assert field in _fields(r)


def test_expression_3000_parentheses_deep_is_422_and_the_server_keeps_answering(
        client: TestClient, hub: Hub) -> None:
    h = _admin(hub)
    for expr in ("(" * 3000 + "是" + ")" * 3000, "(" * 40 + "是" + ")" * 40, "是 " * 1500):
        ask = {**ASK, "answers": [{"intent": "yes", "expr": expr, "next": "bye"}]}
        r = client.post(f"{API}/templates", headers=h, json=_template([ask, BYE]))
        assert r.status_code == 422, r.text
        assert "template.nodes[ask1].answers[0].expr" in _fields(r), _fields(r)
    # the same connection and server still answer, and a sane nesting is accepted
    assert client.get(f"{API}/templates", headers=h).status_code == 200
    ask = {**ASK, "answers": [{"intent": "yes", "expr": "(" * 10 + "是" + ")" * 10, "next": "bye"}]}
    assert client.post(f"{API}/templates", headers=h, json=_template([ask, BYE])).status_code == 201


def test_graph_errors_name_their_field(client: TestClient, hub: Hub) -> None:
    h = _admin(hub)
    cases = [
        (_template([ASK, BYE], start="nope"), "template.start"),
        (_template([{**ASK, "answers": [{"intent": "y", "expr": "是", "next": "gone"}]}, BYE]),
         "template.nodes[ask1].answers[0].next"),
        (_template([ASK, BYE, {"id": "s", "kind": "say", "prompt": "x"}]), "template.nodes[s].next"),
        (_template([{**ASK, "answers": []}, BYE]), "template.nodes[ask1].answers"),
        (_template([ASK, BYE, {**BYE, "prompt": "又见"}]), "template.nodes[2].id"),
    ]
    for body, field in cases:
        r = client.post(f"{API}/templates", headers=h, json=body)
        assert r.status_code == 422, r.text
        assert field in _fields(r), (field, _fields(r))
        assert "" not in _fields(r)
    # the YAML import names the same path (it was "" there)
    r = client.post(f"{API}/templates/import?org={ORG}", headers={**h, "Content-Type": "application/yaml"},
                    content="key: ops-y\nname: n\nstart: ask1\nnodes:\n"
                            "  - {id: ask1, prompt: 是吗, on_fail: nowhere, answers: [{intent: y, dtmf: '1', "
                            "next: bye}]}\n  - {id: bye, kind: end, prompt: 再见}\n")
    assert r.status_code == 422 and _fields(r) == ["nodes[ask1].on_fail"], r.text


def test_say_nodes_that_loop_without_a_question_are_refused(client: TestClient, hub: Hub) -> None:
    h = _admin(hub)
    loop = [{"id": "a", "kind": "say", "prompt": "一", "next": "b"},
            {"id": "b", "kind": "say", "prompt": "二", "next": "a"}, BYE]
    r = client.post(f"{API}/templates", headers=h, json=_template(loop, start="a"))
    assert r.status_code == 422, r.text
    assert "template.nodes[a].next" in _fields(r)
    assert "a -> b -> a" in r.text
    # no end or handoff reachable from start: refused naming start
    no_end = [{**ASK, "answers": [{"intent": "y", "expr": "是", "next": "ask1"}]},
              {"id": "bye", "kind": "end", "prompt": "再见"}]
    r = client.post(f"{API}/templates", headers=h, json=_template(no_end))
    assert r.status_code == 422 and "template.start" in _fields(r), r.text
    # a say chain that ends in a question or an end node is fine
    fine = [{"id": "a", "kind": "say", "prompt": "一", "next": "ask1"}, ASK, BYE]
    assert client.post(f"{API}/templates", headers=h, json=_template(fine, start="a")).status_code == 201


@pytest.mark.parametrize(("node", "field"), [
    ({**ASK, "prompt": "长" * 2001}, "template.nodes.0.prompt"),
    ({**ASK, "answers": [{"intent": "y", "dtmf": "1", "next": "bye"}] * 33}, "template.nodes.0.answers"),
    ({**ASK, "answers": [{"intent": "y", "dtmf": "1" * 13, "next": "bye"}]}, "template.nodes.0.answers.0.dtmf"),
    ({**ASK, "answers": [{"intent": "y", "dtmf": "1", "next": "bye", "range": [5, 1]}]},
     "template.nodes.0.answers.0.range"),
    ({**ASK, "question": "q" * 65}, "template.nodes.0.question"),
])
def test_template_sizes_are_bounded(client: TestClient, hub: Hub, node: dict[str, Any], field: str) -> None:
    r = client.post(f"{API}/templates", headers=_admin(hub), json=_template([node, BYE]))
    assert r.status_code == 422, r.text
    assert field in _fields(r), _fields(r)


def test_template_counts_and_synonyms_are_bounded(client: TestClient, hub: Hub) -> None:
    h = _admin(hub)
    many = [ASK, BYE] + [{**BYE, "id": f"e{i}"} for i in range(200)]
    r = client.post(f"{API}/templates", headers=h, json=_template(many))
    assert r.status_code == 422 and "template.nodes" in _fields(r)
    body = _template([ASK, BYE])
    body["template"]["synonyms"] = {"yes2": ["是"] * 201}
    r = client.post(f"{API}/templates", headers=h, json=body)
    assert r.status_code == 422 and "template.synonyms.yes2" in _fields(r), r.text
    body["template"]["synonyms"] = {"yes2": ["x" * 101]}
    r = client.post(f"{API}/templates", headers=h, json=body)
    assert r.status_code == 422 and "template.synonyms.yes2.0" in _fields(r), r.text
