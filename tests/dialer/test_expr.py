from __future__ import annotations

from datetime import date

import pytest

from central.dialer.expr import ExprError, compile_expr, zh_number

TODAY = date(2025, 3, 10)


def m(expr: str, text: str, **syn: list[str]):  # type: ignore[no-untyped-def]
    return compile_expr(expr, syn or None).match(text, today=TODAY)


@pytest.mark.parametrize(
    ("expr", "text", "ok"),
    [
        ("满意", "我很满意", True),
        ("满意", "我不满意", False),  # negation guard
        ("满意", "不太满意", False),
        ("满意", "不是很满意", False),
        ("不满意", "我不满意", True),
        ("satisfied", "I am satisfied", True),
        ("satisfied", "I am not satisfied", False),
        ("satisfied", "not very satisfied", False),
        ('"not satisfied"', "I'm NOT satisfied at all", True),
        ("no", "I know", False),  # word boundary
        ("no", "no thanks", True),
        ("是|对|yes", "对的", True),
        ("是|对|yes", "Yes.", True),
        ("是|对|yes", "不是", False),
        ("没问题", "没问题", True),
        ("[我] 需要 帮助", "需要一些帮助", True),
        ("[我] 需要 帮助", "帮助 需要", False),  # sequence order matters
        ("need (help|assistance)", "I need some assistance", True),
        ("@yes !@no", "yes", True),
        ("@yes !@no", "yes no", False),
        ("@human", "转人工", True),
        ("@vip", "我是会员", True),
    ],
)
def test_match(expr: str, text: str, ok: bool) -> None:
    assert (m(expr, text, vip=["会员", "member"]) is not None) is ok


def test_number_slots() -> None:
    assert m("{score:number}", "打四分").slots == {"score": 4}  # type: ignore[union-attr]
    assert m("{score:number}", "给 5 分").slots == {"score": 5}  # type: ignore[union-attr]
    assert m("{n:number}", "twenty one people").slots == {"n": 21}  # type: ignore[union-attr]
    assert m("{number}", "一百零五").slots == {"number": 105}  # type: ignore[union-attr]
    assert m("{d:digit}", "three").slots == {"d": 3}  # type: ignore[union-attr]
    assert m("{d:digit}", "twelve") is None
    assert m("{number}", "nothing here") is None
    assert zh_number("十二") == 12 and zh_number("二十") == 20 and zh_number("一二三") == 123
    assert zh_number("三万五千") == 35000


def test_date_and_yesno_slots() -> None:
    assert m("{d:date}", "明天来").slots == {"d": "2025-03-11"}  # type: ignore[union-attr]
    assert m("{d:date}", "三月五日").slots == {"d": "2025-03-05"}  # type: ignore[union-attr]
    assert m("{d:date}", "on march 5th").slots == {"d": "2025-03-05"}  # type: ignore[union-attr]
    assert m("{d:date}", "2024-02-29").slots == {"d": "2024-02-29"}  # type: ignore[union-attr]
    assert m("{d:date}", "2月30日") is None
    assert m("{ok:yesno}", "不是").slots == {"ok": "no"}  # type: ignore[union-attr]
    assert m("{ok:yesno}", "是的").slots == {"ok": "yes"}  # type: ignore[union-attr]
    assert m("{ok:yesno}", "yeah sure").slots == {"ok": "yes"}  # type: ignore[union-attr]
    assert m("{ok:yesno}", "nope").slots == {"ok": "no"}  # type: ignore[union-attr]


def test_sequence_with_slot() -> None:
    r = m("(score|rate) [it] {s:number}", "I would rate it four")
    assert r is not None and r.slots == {"s": 4}


@pytest.mark.parametrize("bad", ["", "(a|b", "a|", "[x", "{score:money}", "@nosuch", '""', "a)"])
def test_syntax_errors_are_clear(bad: str) -> None:
    with pytest.raises(ExprError):
        compile_expr(bad)


def test_compiled_once_and_vocabulary() -> None:
    a = compile_expr("yes|yeah")
    assert compile_expr("yes|yeah") is a
    assert a.vocabulary() == ["yes", "yeah"]
    assert "not satisfied" in compile_expr('"not satisfied" | bad').vocabulary()


def test_negation_inside_a_sequence() -> None:
    assert m("不 满意", "我不太满意") is not None
    assert m("满意", "我不太满意") is None
    assert m('not satisfied', "not very satisfied") is not None
