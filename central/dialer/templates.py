"""Scene templates (场景模板): a dialog graph of nodes, answers and transitions, as pydantic models.

A node is one of:
- `ask`: say `prompt`, listen, pick the first `answers` entry whose expression matches the ASR text or
  whose `dtmf` holds the pressed digit, then go to its `next`. Silence/no-match replays the node with
  `silence_prompt`/`no_match_prompt` up to `max_retries` times, then goes to `on_fail`.
- `say`: say `prompt`, go to `next` without listening.
- `end` / `handoff`: say `prompt` and hang up with `outcome` (handoff: transfer to an agent).
Prompts may use `{name}`-style variables from the call-list row. Templates round-trip through YAML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from central.dialer.expr import ExprError, compile_expr

KEY_RE = r"^[a-z0-9][a-z0-9_-]{1,62}$"
BUILTIN_DIR = Path(__file__).parent / "builtin"


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    intent: str = Field(min_length=1, max_length=64)
    expr: str | None = None  # semantic expression (see central.dialer.expr); None = DTMF only
    dtmf: str = Field(default="", pattern=r"^[0-9*#]*$")  # digits selecting this answer
    dtmf_slot: str | None = None  # put the pressed digit (as int) into this slot
    range: tuple[int, int] | None = None  # numeric slots must lie in [lo, hi] (e.g. a 1-5 score)
    next: str


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kind: Literal["ask", "say", "end", "handoff"] = "ask"
    prompt: str = ""
    audio: str | None = None  # a recorded WAV played instead of TTS
    question: str | None = None  # report column for this answer (default: node id)
    answers: list[Answer] = Field(default_factory=list)
    next: str | None = None  # say nodes
    no_match_prompt: str | None = None
    silence_prompt: str | None = None
    max_retries: int = Field(default=2, ge=0, le=5)
    on_fail: str | None = None  # after retries; None = end the call with outcome no_input/no_match
    timeout_s: float = Field(default=5.0, gt=0, le=30)  # wait this long for the callee to start
    max_speech_s: float = Field(default=8.0, gt=0, le=60)
    outcome: str | None = None  # end/handoff nodes
    transfer_to: str | None = None  # handoff: SIP URI of the agent queue


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_RE)
    name: str = Field(min_length=1, max_length=120)
    description: str = ""
    language: Literal["zh", "en"] = "zh"
    voice: str | None = None  # espeak-ng voice id; default per language
    version: int = Field(default=1, ge=1)
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    global_answers: list[Answer] = Field(default_factory=list)  # checked after a node's own answers
    start: str
    nodes: list[Node] = Field(min_length=1)

    @field_validator("synonyms")
    @classmethod
    def _syn(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, words in v.items():
            if not re.fullmatch(r"[\w-]+", name) or not words:
                raise ValueError(f"synonyms.{name}: needs a word-like name and at least one phrase")
        return v

    @model_validator(mode="after")
    def _graph(self) -> Template:
        ids = [n.id for n in self.nodes]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"nodes: duplicate id(s) {sorted(dup)}")
        known = set(ids)
        if self.start not in known:
            raise ValueError(f"start: no node {self.start!r}")

        def check(where: str, target: str | None) -> None:
            if target is not None and target not in known:
                raise ValueError(f"{where}: no node {target!r}")

        for i, a in enumerate(self.global_answers):
            check(f"global_answers[{i}].next", a.next)
            self._check_answer(f"global_answers[{i}]", a)
        for n in self.nodes:
            where = f"nodes[{n.id}]"
            if n.kind == "ask" and not n.answers:
                raise ValueError(f"{where}.answers: an ask node needs at least one answer")
            if n.kind == "say" and n.next is None:
                raise ValueError(f"{where}.next: a say node needs a next node")
            if n.kind != "ask" and n.answers:
                raise ValueError(f"{where}.answers: only ask nodes take answers")
            if not n.prompt and not n.audio and n.kind in ("ask", "say"):
                raise ValueError(f"{where}.prompt: needs prompt text or audio")
            check(f"{where}.next", n.next)
            check(f"{where}.on_fail", n.on_fail)
            for j, a in enumerate(n.answers):
                check(f"{where}.answers[{j}].next", a.next)
                self._check_answer(f"{where}.answers[{j}]", a)
        return self

    def _check_answer(self, where: str, a: Answer) -> None:
        if not a.expr and not a.dtmf:
            raise ValueError(f"{where}: needs an expr or dtmf digits")
        if a.expr:
            try:
                compile_expr(a.expr, self.synonyms)
            except ExprError as e:
                raise ValueError(f"{where}.expr: {e}") from e

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def questions(self) -> list[str]:
        return [n.question or n.id for n in self.nodes if n.kind == "ask"]

    # --- YAML ---
    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True)
        data = {"key": self.key, "name": self.name, **data}  # always written, and first
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Template:
        try:
            data: Any = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"yaml: {e}") from e
        if not isinstance(data, dict):
            raise ValueError("yaml: the document must be a mapping")
        return cls.model_validate(data)


def builtin_templates() -> list[Template]:
    """Return visit, satisfaction survey (1-5), notice with confirmation, questionnaire, epidemic screening."""
    return [Template.from_yaml(p.read_text(encoding="utf-8")) for p in sorted(BUILTIN_DIR.glob("*.yaml"))]
