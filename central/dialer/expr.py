"""Semantic expressions: a tiny language for matching a callee's answer (ASR text) in Chinese or English.

Grammar (whitespace separates sequence items; Chinese needs no spaces inside a word)::

    expr     := seq ("|" seq)*            alternatives: any one of them
    seq      := item+                     sequence: items occur in this order, gaps allowed
    item     := "!" atom                  negation: zero-width, succeeds only if atom does NOT occur
                                          anywhere after this point (e.g. `!不 满意`)
              | atom
    atom     := "(" expr ")"              grouping
              | "[" expr "]"              optional part
              | "@" name                  synonym list (template-defined or built-in: @yes @no @refuse ...)
              | "{" [name ":"] type "}"   slot; type ∈ number | digit | date | yesno | any;
                                          the captured value goes into slots[name or type]
              | '"' words '"'             a quoted phrase (spaces kept, e.g. "not at all")
              | word                      a literal: CJK text matches as a substring, Latin words on word
                                          boundaries; case-insensitive

Negation guard: a literal never matches when it is directly preceded by a negator (不 没 没有 别 非 未 /
not no never don't ..., optionally plus a degree word: 不太, 不是很, not very), unless the literal itself
starts with one or the negator was matched by an earlier item of the same sequence (`不 满意` matches
"不太满意"). So `满意` does not match "不满意",
`satisfied` does not match "not satisfied", while `不满意` and `"not satisfied"` match them. Use `!x`
for explicit exclusions.

Examples::

    是|对|好的|可以|yes|yeah|sure          a yes
    [我] 不满意 | 很差 | "not satisfied"    dissatisfied
    {score:number}                          "打 4 分" / "four" -> slots["score"] = 4
    @yes !@no                               a yes with no "no" after it

`compile_expr(text, synonyms)` parses once (cached); `Expr.match(utterance)` returns a `Match` or None.
`Expr.vocabulary()` lists the phrases the expression can match: a hint list for grammar-based ASR.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any


class ExprError(ValueError):
    """A syntax error in an expression; the message names the position."""


# --- built-in synonym lists -------------------------------------------------------------------------
BUILTIN_SYNONYMS: dict[str, list[str]] = {
    "yes": ["是", "是的", "对", "对的", "好", "好的", "可以", "行", "嗯", "确认", "同意", "没问题", "有",
            "yes", "yeah", "yep", "sure", "okay", "ok", "right", "correct", "confirm", "i do"],
    "no": ["不", "不是", "不对", "不要", "不用", "不行", "不可以", "没有", "否", "不同意", "不需要",
           "no", "nope", "not", "never", "don't", "negative"],
    "refuse": ["别打", "不要再打", "骚扰", "没空", "不方便", "do not call", "stop calling", "busy", "not now"],
    "repeat": ["再说一遍", "重复", "没听清", "什么", "repeat", "again", "pardon", "sorry what"],
    "human": ["人工", "转人工", "客服", "operator", "agent", "human", "person"],
}

NEGATORS_ZH = ("没有", "不", "没", "别", "非", "未", "无")
NEGATORS_EN = ("not", "no", "never", "don't", "dont", "didn't", "isn't", "wasn't", "aren't", "won't",
               "can't", "cannot")

_CJK = re.compile(r"[\u3400-\u9fff]")
_WORD = re.compile(r"[a-z0-9']+")


def normalize(text: str) -> str:
    """Lowercase, full-width to half-width, punctuation to spaces, collapse spaces."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:  # full-width ASCII (ＡＢＣ１２３) from Chinese ASR / IME
            ch = chr(code - 0xFEE0)
        out.append(ch)
    t = "".join(out).lower()
    t = re.sub(r"[，。！？、；：,.!?;:~\"“”‘’()（）\[\]【】]", " ", t)
    return " ".join(t.split())


# --- numbers and dates ------------------------------------------------------------------------------
_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "幺": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6,
              "七": 7, "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_EN_NUM = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
           "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
           "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
           "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
           "ninety": 90}
_ZH_NUM_RE = re.compile(r"[零〇一幺二两三四五六七八九十百千万]+")
_EN_ALT = "|".join(_EN_NUM)
_EN_NUM_RE = re.compile(rf"\b(?:(?:{_EN_ALT})(?:[ -](?:hundred|{_EN_ALT}))*)\b")
_ARABIC_RE = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


def zh_number(s: str) -> int:
    """Chinese numerals: 五 -> 5, 十二 -> 12, 二十 -> 20, 一百零五 -> 105, 一二三 -> 123 (digit string)."""
    if not any(c in _ZH_UNITS for c in s):
        return int("".join(str(_ZH_DIGITS[c]) for c in s))
    total, section, digit = 0, 0, 0
    for c in s:
        if c in _ZH_DIGITS:
            digit = _ZH_DIGITS[c]
        elif c == "万":
            total += (section + digit) * 10000
            section, digit = 0, 0
        else:
            section += (digit or 1) * _ZH_UNITS[c]  # 十二: a leading unit means one ten
            digit = 0
    return total + section + digit


def en_number(s: str) -> int:
    total = 0
    for w in re.split(r"[ -]", s):
        if w == "hundred":
            total = (total or 1) * 100
        else:
            total += _EN_NUM[w]
    return total


def _numbers(text: str, start: int) -> Iterator[tuple[int, int, Any]]:
    for rx, conv in ((_ARABIC_RE, lambda s: float(s) if "." in s else int(s)), (_ZH_NUM_RE, zh_number),
                     (_EN_NUM_RE, en_number)):
        for m in rx.finditer(text, start):
            yield m.start(), m.end(), conv(m.group())


_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
           "october", "november", "december"]
_REL_DAYS = {"今天": 0, "明天": 1, "后天": 2, "昨天": -1, "today": 0, "tomorrow": 1, "yesterday": -1}
_DATE_RES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(\d{4})[-/年](\d{1,2})[-/月](\d{1,2})[日号]?"), "ymd"),
    (re.compile(r"(\d{1,2}|[一二三四五六七八九十]+)月(\d{1,2}|[一二三四五六七八九十]+)[日号]"), "md"),
    (re.compile(r"\b(" + "|".join(_MONTHS) + r") (\d{1,2})(?:st|nd|rd|th)?\b"), "en_md"),
    (re.compile("|".join(_REL_DAYS)), "rel"),
]


def _dates(text: str, start: int, today: date) -> Iterator[tuple[int, int, Any]]:
    def num(s: str) -> int:
        return int(s) if s.isdigit() else zh_number(s)

    for rx, kind in _DATE_RES:
        for m in rx.finditer(text, start):
            try:
                if kind == "ymd":
                    d = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                elif kind == "md":
                    d = date(today.year, num(m.group(1)), num(m.group(2)))
                elif kind == "en_md":
                    d = date(today.year, _MONTHS.index(m.group(1)) + 1, int(m.group(2)))
                else:
                    d = today + timedelta(days=_REL_DAYS[m.group()])
            except ValueError:  # 2月30日: not a date
                continue
            yield m.start(), m.end(), d.isoformat()


# --- AST ----------------------------------------------------------------------------------------------
Slots = dict[str, Any]
Hit = tuple[int, Slots]  # (end position, captured slots)


@dataclass
class Ctx:
    text: str
    today: date


class Node:
    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        """Every way this node can match somewhere in text[pos:], as (end, slots)."""
        raise NotImplementedError

    def vocab(self) -> list[str]:
        return []


_NEG_ZH_TAIL = re.compile(r"(?:没有|不|没|别|非|未|无)(?:是|太|很|怎么|大|够|算|特别|十分|非常|是很|是太|是特别)?\s*$")
_DEGREE_EN = ("very", "really", "too", "so", "that", "quite", "at", "all")


def _negated(text: str, start: int, pos: int) -> bool:
    """Is the match at `start` inside a negation (不满意, 不太满意, not satisfied, not very happy)?
    Only text after `pos` counts: in the sequence `不 满意` the 不 was consumed by the first item."""
    before = text[max(pos, start - 8):start]
    if _NEG_ZH_TAIL.search(before):
        return True
    words = _WORD.findall(text[max(pos, start - 40):start])
    if words and words[-1] in NEGATORS_EN:
        return True
    return len(words) >= 2 and words[-2] in NEGATORS_EN and words[-1] in _DEGREE_EN


@dataclass
class Lit(Node):
    word: str
    rx: re.Pattern[str] = field(init=False)
    guard: bool = field(init=False)

    def __post_init__(self) -> None:
        w = normalize(self.word)
        self.word = w
        body = re.escape(w).replace(r"\ ", r"\s+")
        # Latin words match whole words only ("no" must not match inside "know").
        left = r"(?<![a-z0-9'])" if re.match(r"[a-z0-9]", w) else ""
        right = r"(?![a-z0-9'])" if re.search(r"[a-z0-9]$", w) else ""
        self.rx = re.compile(left + body + right)
        self.guard = not w.startswith(NEGATORS_ZH) and w.split(" ")[0] not in NEGATORS_EN

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        return [(m.end(), {}) for m in self.rx.finditer(ctx.text, pos)
                if not (self.guard and _negated(ctx.text, m.start(), pos))]

    def vocab(self) -> list[str]:
        return [self.word]


@dataclass
class Alt(Node):
    options: list[Node]

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        return [h for o in self.options for h in o.hits(ctx, pos)]

    def vocab(self) -> list[str]:
        return [v for o in self.options for v in o.vocab()]


@dataclass
class Seq(Node):
    items: list[Node]

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        frontier: list[Hit] = [(pos, {})]
        for item in self.items:
            nxt: dict[int, Slots] = {}
            for p, slots in frontier:
                for end, s in item.hits(ctx, p):
                    nxt.setdefault(end, {**slots, **s})  # first (leftmost-path) capture wins
            frontier = sorted(nxt.items())
            if not frontier:
                return []
        return frontier

    def vocab(self) -> list[str]:
        # A sequence's phrase: the cross product would explode; join each item's first phrase.
        parts = [v[0] for i in self.items if (v := i.vocab())]
        joiner = "" if all(_CJK.search(p) for p in parts) else " "
        return [joiner.join(parts)] if parts else []


@dataclass
class Opt(Node):
    inner: Node

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        return [(pos, {}), *self.inner.hits(ctx, pos)]

    def vocab(self) -> list[str]:
        return self.inner.vocab()


@dataclass
class Not(Node):
    inner: Node

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        return [] if self.inner.hits(ctx, pos) else [(pos, {})]


SLOT_TYPES = ("number", "digit", "date", "yesno", "any")


@dataclass
class Slot(Node):
    name: str
    type: str

    def hits(self, ctx: Ctx, pos: int) -> list[Hit]:
        t = ctx.text
        if self.type == "number":
            return [(e, {self.name: v}) for s, e, v in _numbers(t, pos)]
        if self.type == "digit":
            return [(e, {self.name: v}) for s, e, v in _numbers(t, pos) if isinstance(v, int) and 0 <= v <= 9]
        if self.type == "date":
            return [(e, {self.name: v}) for s, e, v in _dates(t, pos, ctx.today)]
        if self.type == "yesno":
            out: list[Hit] = []
            for value in ("no", "yes"):  # "no" first: "不是" must not be read as 是
                for word in BUILTIN_SYNONYMS[value]:
                    out += [(e, {self.name: value}) for e, _ in _lit(word).hits(ctx, pos)]
            return out
        rest = t[pos:].strip()
        return [(len(t), {self.name: rest})] if rest else []

    def vocab(self) -> list[str]:
        if self.type in ("number", "digit"):
            return ["one", "two", "three", "four", "five", "一", "二", "三", "四", "五"]
        if self.type == "yesno":
            return BUILTIN_SYNONYMS["yes"] + BUILTIN_SYNONYMS["no"]
        return []


@lru_cache(maxsize=4096)
def _lit(word: str) -> Lit:
    return Lit(word)


# --- parser ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:(?P<op>[|()\[\]!])|"(?P<quoted>[^"]*)"|\{(?P<slot>[^}]*)\}|@(?P<syn>[\w-]+)'
                    r'|(?P<word>[^\s|()\[\]!"{}@]+))')


# Bounds (issue 20): the parser recurses per group, so nesting must stay far below the interpreter's
# recursion limit (3,000 parentheses answered 500); a real answer expression is a few dozen characters.
MAX_EXPR_CHARS = 2000
MAX_EXPR_DEPTH = 16
MAX_EXPR_TOKENS = 400


class _Parser:
    def __init__(self, text: str, synonyms: Mapping[str, list[str]]) -> None:
        if len(text) > MAX_EXPR_CHARS:
            raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters ({len(text)})")
        self.text = text
        self.synonyms = synonyms
        self.toks: list[tuple[str, str, int]] = []
        depth = 0
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ExprError(f"unexpected character {text[pos:].strip()[:1]!r} at {pos} in {text!r}")
            kind = m.lastgroup or "word"
            self.toks.append((kind, m.group(kind), m.start(kind)))
            if len(self.toks) > MAX_EXPR_TOKENS:
                raise ExprError(f"expression has more than {MAX_EXPR_TOKENS} items")
            if kind == "op" and m.group(kind) in "([":
                depth += 1
                if depth > MAX_EXPR_DEPTH:
                    raise ExprError(f"groups nested deeper than {MAX_EXPR_DEPTH} at {m.start(kind)}")
            elif kind == "op" and m.group(kind) in ")]":
                depth = max(0, depth - 1)  # an unbalanced one is the parser's error, with its position
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def expect(self, op: str) -> None:
        t = self.peek()
        if t is None or t[:2] != ("op", op):
            where = f"at {t[2]}" if t else "at the end"
            raise ExprError(f"expected {op!r} {where} in {self.text!r}")
        self.i += 1

    def parse(self) -> Node:
        if not self.toks:
            raise ExprError("empty expression")
        node = self.expr()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r} at {self.peek()[2]} in {self.text!r}")  # type: ignore[index]
        return node

    def expr(self) -> Node:
        options = [self.seq()]
        while (t := self.peek()) and t[:2] == ("op", "|"):
            self.i += 1
            options.append(self.seq())
        return options[0] if len(options) == 1 else Alt(options)

    def seq(self) -> Node:
        items: list[Node] = []
        while (t := self.peek()) and not (t[0] == "op" and t[1] in "|)]"):
            items.append(self.item())
        if not items:
            t = self.peek()
            raise ExprError(f"empty alternative {'at ' + str(t[2]) if t else 'at the end'} in {self.text!r}")
        return items[0] if len(items) == 1 else Seq(items)

    def item(self) -> Node:
        t = self.peek()
        if t and t[:2] == ("op", "!"):
            self.i += 1
            return Not(self.atom())
        return self.atom()

    def atom(self) -> Node:
        t = self.peek()
        if t is None:
            raise ExprError(f"expression ends too early: {self.text!r}")
        kind, val, pos = t
        self.i += 1
        if kind == "op" and val == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "op" and val == "[":
            node = self.expr()
            self.expect("]")
            return Opt(node)
        if kind == "op":
            raise ExprError(f"unexpected {val!r} at {pos} in {self.text!r}")
        if kind == "syn":
            words = self.synonyms.get(val, BUILTIN_SYNONYMS.get(val))
            if not words:
                raise ExprError(f"unknown synonym list @{val} at {pos}")
            return Alt([_lit(w) for w in words])
        if kind == "slot":
            name, _, typ = val.strip().rpartition(":")
            typ = typ.strip()
            if typ not in SLOT_TYPES:
                raise ExprError(f"unknown slot type {typ!r} at {pos}; use one of {', '.join(SLOT_TYPES)}")
            return Slot(name.strip() or typ, typ)
        if kind == "quoted" and not val.strip():
            raise ExprError(f"empty quoted phrase at {pos}")
        return _lit(val)


@dataclass(frozen=True)
class Match:
    slots: Slots
    end: int


class Expr:
    """A compiled expression. Thread-safe (immutable after compile)."""

    def __init__(self, source: str, root: Node) -> None:
        self.source = source
        self.root = root

    def match(self, utterance: str, today: date | None = None) -> Match | None:
        ctx = Ctx(normalize(utterance), today or date.today())
        hits = self.root.hits(ctx, 0)
        if not hits:
            return None
        end, slots = min(hits, key=lambda h: h[0])  # the earliest-ending reading
        return Match(slots=slots, end=end)

    def vocabulary(self) -> list[str]:
        return list(dict.fromkeys(self.root.vocab()))

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"


def compile_expr(source: str, synonyms: Mapping[str, list[str]] | None = None) -> Expr:
    """Parse once; identical (source, synonyms) pairs share the compiled object."""
    key = tuple(sorted((k, tuple(v)) for k, v in (synonyms or {}).items()))
    return _compile(source, key)


@lru_cache(maxsize=2048)
def _compile(source: str, syn_key: tuple[tuple[str, tuple[str, ...]], ...]) -> Expr:
    return Expr(source, _Parser(source, {k: list(v) for k, v in syn_key}).parse())
