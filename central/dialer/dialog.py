"""The dialog engine: a pure state machine over a template, driven by (asr text | dtmf digit | silence).

No SIP, no audio, no clock: the SIP engine feeds inputs and performs the returned `Step` (play the
prompts, then listen or hang up). That keeps every dialog rule unit-testable.

Never guess an answer: an ASR result the recogniser did not accept (confidence under its threshold, see
central.dialer.asr.Recognition) is a no-match, and so is any speech in a `dtmf_only` dialog (no model
for the template's language). A DTMF-only dialog says which key to press: an ask prompt that does not
name a key gets a hint generated from its answers' digits ("请按1确认，按2否认。"), and an ask node no
key can answer goes straight to its `on_fail`.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from central.dialer.expr import compile_expr
from central.dialer.templates import SEGMENT, Answer, Node, Template

InputKind = Literal["asr", "dtmf", "silence"]
DEFAULT_RETRY = {"zh": ("抱歉，我没有听清。", "您还在吗？"), "en": ("Sorry, I did not catch that.", "Are you there?")}
MAX_STEPS = 50  # a graph cycle (e.g. "repeat" loops) cannot keep a call open forever


@dataclass(frozen=True)
class Prompt:
    text: str
    audio: str | None = None  # a recording from the template's store (a path once bound) instead of TTS


@dataclass(frozen=True)
class Listen:
    node: str
    timeout_s: float
    max_speech_s: float
    phrases: list[str]  # what answers can say: a grammar hint for the recogniser
    dtmf: str  # digits that mean something here


@dataclass
class Step:
    prompts: list[Prompt]
    listen: Listen | None = None
    end: str | None = None  # outcome when the call should end after the prompts
    transfer_to: str | None = None


class _Vars(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""  # an unknown {variable} in a prompt reads as nothing rather than failing the call


def render(text: str, variables: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(text, (), _Vars(variables))
    except (ValueError, IndexError):
        return text  # stray braces: say the text as written


@dataclass
class Dialog:
    template: Template
    variables: dict[str, Any] = field(default_factory=dict)
    today: date | None = None
    node_id: str = ""
    retries: int = 0
    steps: int = 0
    outcome: str | None = None
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # question -> answer record
    slots: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    dtmf_only: bool = False  # no recogniser for the template's language: keys only, and prompts say which

    def start(self) -> Step:
        return self._enter(self.template.start, [])

    @property
    def node(self) -> Node:
        return self.template.node(self.node_id)

    def feed(self, kind: InputKind, value: str = "") -> Step:
        if self.outcome is not None:
            raise RuntimeError("dialog already ended")
        node = self.node
        self.transcript.append({"node": node.id, "kind": kind, "value": value})
        if kind == "silence":
            return self._retry(node, "no_input", node.silence_prompt, 1)
        if kind == "asr" and (self.dtmf_only or not getattr(value, "accepted", True)):
            return self._retry(node, "no_match", node.no_match_prompt, 0)  # unsure or unheard: re-ask
        hit = self._match(node, kind, value)
        if hit is None:
            return self._retry(node, "no_match", node.no_match_prompt, 0)
        answer, slots = hit
        self.slots.update(slots)
        self.answers[node.question or node.id] = {
            "intent": answer.intent,
            "value": next(iter(slots.values())) if len(slots) == 1 else (slots or answer.intent),
            "text": value if kind == "asr" else "",
            "dtmf": value if kind == "dtmf" else "",
            "via": kind,
        }
        return self._enter(answer.next, [])

    # --- internals ---
    def _match(self, node: Node, kind: InputKind, value: str) -> tuple[Answer, dict[str, Any]] | None:
        for a in [*node.answers, *self.template.global_answers]:
            slots: dict[str, Any] | None = None
            if kind == "dtmf" and value and value in a.dtmf:
                slots = {a.dtmf_slot: int(value)} if a.dtmf_slot and value.isdigit() else {}
            elif kind == "asr" and a.expr:
                m = compile_expr(a.expr, self.template.synonyms).match(value, today=self.today)
                slots = dict(m.slots) if m else None
            if slots is None:
                continue
            if a.range and not all(
                isinstance(v, int | float) and a.range[0] <= v <= a.range[1] for v in slots.values()
            ):
                continue  # "打 9 分" on a 1-5 scale is not an answer
            return a, slots
        return None

    def _retry(self, node: Node, reason: str, prompt: str | None, which: int) -> Step:
        if self.retries >= node.max_retries:
            if node.on_fail:
                return self._enter(node.on_fail, [])
            self.outcome = reason
            return Step(prompts=[], end=reason)
        self.retries += 1
        text = prompt or DEFAULT_RETRY[self.template.language][which]
        return self._ask(node, self._speak(text), retry=True)

    def _enter(self, node_id: str, prompts: list[Prompt]) -> Step:
        while True:
            self.steps += 1
            if self.steps > MAX_STEPS:
                self.outcome = "loop"
                return Step(prompts=prompts, end="loop")
            node = self.template.node(node_id)
            self.node_id = node.id
            self.retries = 0
            if node.kind == "ask":
                if self.dtmf_only and node.on_fail and not self._digits(node):
                    node_id = node.on_fail  # no key answers it and speech is not attempted: skip it
                    continue
                return self._ask(node, prompts)
            prompts = [*prompts, *self._prompt(node)] if (node.prompt or node.audio) else prompts
            if node.kind == "say":
                node_id = node.next  # type: ignore[assignment]  # validated: say nodes have next
                continue
            self.outcome = node.outcome or ("handoff" if node.kind == "handoff" else "completed")
            return Step(prompts=prompts, end=self.outcome, transfer_to=node.transfer_to)

    def _prompt(self, node: Node) -> list[Prompt]:
        """The node's prompt as played: its recording (if the store has one in the template's language),
        else its text with [[name]] segments as recordings and the rest as TTS; plus the key hint of a
        DTMF-only ask node whose text does not say which key to press."""
        hint = dtmf_hint(self.template, node) if self.dtmf_only and node.kind == "ask" else ""
        path = self.template.recording_path(node.audio) if node.audio else None
        out = [Prompt(render(node.prompt, self.variables), verified(path))] if path else self._speak(node.prompt)
        return [*out, Prompt(hint)] if hint else out

    def every_prompt(self, node: Node) -> list[Prompt]:
        """Everything a caller may hear at `node`, as it would be played: its prompt (recordings resolved, key
        hint added) and, for an ask node, its no-match and silence prompts (the engine checks them all before
        it dials)."""
        out = self._prompt(node) if (node.prompt or node.audio) else []
        if node.kind == "ask":
            retry = DEFAULT_RETRY.get(self.template.language, DEFAULT_RETRY["en"])
            out += self._speak(node.no_match_prompt or retry[0]) + self._speak(node.silence_prompt or retry[1])
        return out

    def _speak(self, text: str) -> list[Prompt]:
        out: list[Prompt] = []
        pos = 0
        for m in SEGMENT.finditer(text):  # segments come from the template, never from a rendered variable
            if text[pos:m.start()].strip():
                out.append(Prompt(render(text[pos:m.start()], self.variables)))
            path = self.template.recording_path(m[1])
            out.append(Prompt(m[0], verified(path) if path else m[0]))  # unresolvable: the engine's audio_missing
            pos = m.end()
        if text[pos:].strip() or not out:
            out.append(Prompt(render(text[pos:], self.variables)))
        return out

    def _digits(self, node: Node) -> str:
        return "".join(a.dtmf for a in [*node.answers, *self.template.global_answers])

    def _ask(self, node: Node, prompts: list[Prompt], retry: bool = False) -> Step:
        phrases: list[str] = []
        digits = ""
        for a in [*node.answers, *self.template.global_answers]:
            if a.expr:
                phrases += compile_expr(a.expr, self.template.synonyms).vocabulary()
            digits += a.dtmf
        listen = Listen(node.id, node.timeout_s, node.max_speech_s, list(dict.fromkeys(phrases)),
                        "".join(dict.fromkeys(digits)))
        return Step(prompts=[*prompts, *self._prompt(node)], listen=listen)


# --- key hints for DTMF-only dialogs -----------------------------------------------------------------------
_SAYS_KEY = {"zh": re.compile(r"按\s*(?:键\s*)?[0-9０-９*#＊＃一二三四五六七八九零]"),
             "en": re.compile(r"\b(?:press|key|dial)\b", re.I)}
_LABELS = {"zh": {"yes": "确认", "no": "否认", "repeat": "重听", "human": "转人工服务", "refuse": "拒绝接听"},
           "en": {"yes": "yes", "no": "no", "repeat": "to hear this again", "human": "an agent",
                  "refuse": "no more calls"}}


def _range_text(digits: str, lo: int | None, hi: int | None, lang: str) -> str:
    ds = sorted({int(d) for d in digits if d.isdigit()})
    if lo is not None and hi is not None:
        ds = [d for d in ds if lo <= d <= hi]
    if ds and ds == list(range(ds[0], ds[-1] + 1)) and len(ds) > 2:
        return f"{ds[0]}到{ds[-1]}" if lang == "zh" else f"{ds[0]} to {ds[-1]}"
    return ("、" if lang == "zh" else ", ").join(map(str, ds))


def dtmf_hint(template: Template, node: Node) -> str:
    """The sentence telling which key answers `node` ("" when its prompt already names a key, or no
    answer has digits): "请按1确认，按2否认。" / "Press 1 for yes, press 2 for no."."""
    lang = template.language
    if _SAYS_KEY[lang].search(node.prompt):
        return ""
    parts: list[str] = []
    for a in [*node.answers, *template.global_answers]:
        if not a.dtmf:
            continue
        if a.dtmf_slot:
            lo, hi = (a.range if a.range else (None, None))
            r = _range_text(a.dtmf, lo, hi, lang)
            parts.append(f"按{r}的数字键" if lang == "zh" else f"press {r}")
            continue
        label = _LABELS[lang].get(a.intent, "")
        for d in a.dtmf:
            if lang == "zh":
                parts.append(f"按{d}{label}")
            else:
                parts.append(f"press {d} for {label}" if label else f"press {d}")
    if not parts:
        return ""
    if lang == "zh":
        return "请" + "，".join(parts) + "。"
    text = ", ".join(parts)
    return text[0].upper() + text[1:] + "."


def tts_texts(template: Template, variables: dict[str, Any] | None = None, dtmf_only: bool = False) -> list[str]:
    """Every text the dialog can hand to TTS for this template: each node's prompt (with its key hint when
    DTMF-only), no-match and silence prompts (or the default ones), minus recorded parts. What
    central.dialer.voice.mandarin_coverage measures."""
    d = Dialog(template, variables or {}, dtmf_only=dtmf_only)
    out: list[str] = []
    for n in template.nodes:
        texts = [*d._prompt(n)] if (n.prompt or n.audio) else []
        if n.kind == "ask":
            texts += d._speak(n.no_match_prompt or DEFAULT_RETRY[template.language][0])
            texts += d._speak(n.silence_prompt or DEFAULT_RETRY[template.language][1])
        out += [p.text for p in texts if p.audio is None and p.text.strip()]
    return list(dict.fromkeys(out))


# --- recordings: played only when their bytes still match the checksum the store recorded ------------------
_VERIFIED: dict[tuple[str, int, int], bool] = {}


def verified(path: str) -> str:
    """`path` when the file is there and its SHA-256 is the one its media key names; otherwise a path
    that does not exist (`<path>.unverified`), so the engine records the prompt's audio as missing
    rather than play a file that was changed or never arrived. Each file is hashed once per change."""
    from pathlib import Path

    p = Path(path)
    m = re.search(r"([0-9a-f]{64})\.wav$", p.name)
    if not p.is_absolute() or m is None:
        return path + ".unverified"
    try:
        st = p.stat()
        k = (path, st.st_size, st.st_mtime_ns)
        if k not in _VERIFIED:
            if len(_VERIFIED) > 1024:
                _VERIFIED.clear()
            _VERIFIED[k] = hashlib.sha256(p.read_bytes()).hexdigest() == m[1]
        return path if _VERIFIED[k] else path + ".unverified"
    except OSError:
        return path + ".unverified"
