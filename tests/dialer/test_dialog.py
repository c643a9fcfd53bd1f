from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from central.dialer.dialog import Dialog
from central.dialer.templates import Template, builtin_templates

ASSETS = Path(__file__).parent / "assets"


def en() -> Template:
    return Template.from_yaml((ASSETS / "survey_en.yaml").read_text())


def by_key(key: str) -> Template:
    return next(t for t in builtin_templates() if t.key == key)


def test_five_builtins_load_and_roundtrip_yaml() -> None:
    keys = {t.key for t in builtin_templates()}
    assert keys == {"return-visit", "satisfaction", "notice", "questionnaire", "epidemic-screening"}
    for t in builtin_templates():
        assert Template.from_yaml(t.to_yaml()) == t


def test_happy_path_asr_and_dtmf() -> None:
    d = Dialog(en(), {"name": "Alice"})
    s = d.start()
    assert s.prompts[0].text == "Hello Alice. Is this a good time? Say yes or no."
    assert s.listen and "yes" in s.listen.phrases and s.listen.dtmf == "12"
    s = d.feed("asr", "yes")
    assert s.listen and s.listen.node == "score"
    s = d.feed("dtmf", "4")
    assert s.end == "completed" and s.prompts[-1].text == "Thank you. Goodbye."
    assert d.answers["good_time"]["intent"] == "yes" and d.answers["good_time"]["via"] == "asr"
    assert d.answers["score"]["value"] == 4 and d.answers["score"]["via"] == "dtmf"


def test_retries_then_fail_and_range() -> None:
    d = Dialog(en())
    d.start()
    d.feed("asr", "yes")
    s = d.feed("asr", "nine")  # out of the 1-5 range: no match, one retry allowed
    assert s.listen and s.prompts[0].text.startswith("Sorry") and s.prompts[1].text.startswith("Please rate")
    s = d.feed("silence")
    assert s.end == "no_input" and d.outcome == "no_input"
    with pytest.raises(RuntimeError):
        d.feed("silence")


def test_chinese_satisfaction_negation() -> None:
    d = Dialog(by_key("satisfaction"), {"name": "王先生"})
    assert "王先生" in d.start().prompts[0].text
    d.feed("asr", "我不太满意")
    assert d.answers["score"]["intent"] == "dissatisfied"
    d = Dialog(by_key("satisfaction"))
    d.start()
    d.feed("asr", "打四分吧")
    assert d.answers["score"]["value"] == 4
    s = d.feed("asr", "希望办事大厅多开几个窗口")
    assert s.end == "completed" and d.answers["comment"]["value"] == "希望办事大厅多开几个窗口"


def test_global_refuse_and_say_chain() -> None:
    d = Dialog(by_key("return-visit"))
    d.start()
    assert d.feed("asr", "别打了 骚扰").end == "refused"
    d = Dialog(by_key("notice"), {"name": "李女士", "notice": "明天停水。"})
    s = d.start()
    assert [p.text for p in s.prompts][0] == "您好李女士，明天停水。" and s.listen
    s = d.feed("dtmf", "2")  # repeat: loops back through the say node
    assert "明天停水" in s.prompts[0].text
    assert d.feed("asr", "知道了").end == "completed"


def test_questionnaire_date_and_screening_handoff() -> None:
    d = Dialog(by_key("questionnaire"), today=date(2025, 3, 10))
    d.start()
    d.feed("asr", "有的")
    d.feed("asr", "两位")
    s = d.feed("asr", "后天可以")
    assert s.end == "completed"
    assert d.answers["elderly_count"]["value"] == 2 and d.answers["visit_date"]["value"] == "2025-03-12"
    d = Dialog(by_key("epidemic-screening"))
    d.start()
    assert d.feed("asr", "没有").listen is not None  # 没有 is no, not 有
    assert d.feed("asr", "去过").end == "handoff"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"start": "nope"}, "start"),
        ({"nodes": [{"id": "a", "prompt": "x", "answers": [{"intent": "i", "expr": "(", "next": "a"}]}],
          "start": "a"}, "nodes[a].answers[0].expr"),
        ({"nodes": [{"id": "a", "prompt": "x", "answers": [{"intent": "i", "expr": "y", "next": "zz"}]}],
          "start": "a"}, "nodes[a].answers[0].next"),
        ({"key": "Bad Key"}, "key"),
    ],
)
def test_invalid_templates_name_the_field(patch: dict, field: str) -> None:
    data = en().model_dump()
    data.update(patch)
    with pytest.raises(ValidationError) as e:
        Template.model_validate(data)
    assert field in str(e.value)
