"""The dialog engine: a pure state machine over a template, driven by (asr text | dtmf digit | silence).

No SIP, no audio, no clock: the SIP engine feeds inputs and performs the returned `Step` (play the
prompts, then listen or hang up). That keeps every dialog rule unit-testable.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from central.dialer.expr import compile_expr
from central.dialer.templates import Answer, Node, Template

InputKind = Literal["asr", "dtmf", "silence"]
DEFAULT_RETRY = {"zh": ("抱歉，我没有听清。", "您还在吗？"), "en": ("Sorry, I did not catch that.", "Are you there?")}
MAX_STEPS = 50  # a graph cycle (e.g. "repeat" loops) cannot keep a call open forever


@dataclass(frozen=True)
class Prompt:
    text: str
    audio: str | None = None  # recorded WAV instead of TTS


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
        return self._ask(node, [Prompt(render(text, self.variables))], retry=True)

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
                return self._ask(node, prompts)
            prompts = [*prompts, self._prompt(node)] if (node.prompt or node.audio) else prompts
            if node.kind == "say":
                node_id = node.next  # type: ignore[assignment]  # validated: say nodes have next
                continue
            self.outcome = node.outcome or ("handoff" if node.kind == "handoff" else "completed")
            return Step(prompts=prompts, end=self.outcome, transfer_to=node.transfer_to)

    def _prompt(self, node: Node) -> Prompt:
        return Prompt(render(node.prompt, self.variables), node.audio)

    def _ask(self, node: Node, prompts: list[Prompt], retry: bool = False) -> Step:
        phrases: list[str] = []
        digits = ""
        for a in [*node.answers, *self.template.global_answers]:
            if a.expr:
                phrases += compile_expr(a.expr, self.template.synonyms).vocabulary()
            digits += a.dtmf
        listen = Listen(node.id, node.timeout_s, node.max_speech_s, list(dict.fromkeys(phrases)),
                        "".join(dict.fromkeys(digits)))
        return Step(prompts=[*prompts, self._prompt(node)], listen=listen)
