"""Scene templates (场景模板): a dialog graph of nodes, answers and transitions, as pydantic models.

A node is one of:
- `ask`: say `prompt`, listen, pick the first `answers` entry whose expression matches the ASR text or
  whose `dtmf` holds the pressed digit, then go to its `next`. Silence/no-match replays the node with
  `silence_prompt`/`no_match_prompt` up to `max_retries` times, then goes to `on_fail`.
- `say`: say `prompt`, go to `next` without listening.
- `end` / `handoff`: say `prompt` and hang up with `outcome` (handoff: transfer to an agent).
Prompts may use `{name}`-style variables from the call-list row. Templates round-trip through YAML.

Recordings (real call centres record the fixed parts of a prompt; TTS speaks only what varies). Each
template key has its own recording store (`PUT /api/v1/dialer/templates/{key}/recordings/{name}?language=`,
a PCM WAV; `recordings` below is that store's index, kept by the server: a saved body's own `recordings`
is ignored). A recording has a name (`[a-z0-9][a-z0-9_-]*`) and one file per language; a template plays
the one of its own `language`. Two ways to use one, never a file path:
- `audio: greet`: the whole prompt is the recording `greet`; `prompt` is its transcript and is spoken by
  TTS when the store has no `greet` in the template's language.
- `[[name]]` inside `prompt` mixes recordings and TTS: `prompt: "[[hello]]{name}，[[notice-body]]"` plays
  the recording `hello`, speaks the callee's name, plays `notice-body`. Such a segment has no text to
  fall back on, so the store must hold it in the template's language.
Saving a template that names a recording its store does not hold answers 422 naming `nodes[<id>].audio`
(or `.prompt` for a segment). Copying a template copies its recordings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from central.dialer.expr import ExprError, compile_expr

KEY_RE = r"^[a-z0-9][a-z0-9_-]{1,62}$"
RECORDING_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SEGMENT = re.compile(r"\[\[([^\[\]]*)\]\]")  # a recorded segment inside prompt text: [[name]]
BUILTIN_DIR = Path(__file__).parent / "builtin"


class RecordingRef(BaseModel):
    """One recorded WAV in a template's store: a central.media key (kind `prompts`) and its checksum."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^prompts/\d{4}/\d{2}/\d{2}/[0-9a-f]{64}\.wav$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    duration_s: float = Field(ge=0)
    rate: int
    uploaded_at: str
    uploaded_by: str | None = None


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
    audio: str | None = None  # the name of a recording in the template's store (see the module doc)
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
    # name -> language -> file: the template's recording store, kept by the server (module doc)
    recordings: dict[str, dict[Literal["zh", "en"], RecordingRef]] = Field(default_factory=dict)
    _media_root: Path | None = PrivateAttr(default=None)  # set where recordings are played (the engine)

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

    @model_validator(mode="after")
    def _audio(self) -> Template:
        """Recordings are named, never paths: `audio` and `[[...]]` segments must be recording names."""
        for n in self.nodes:
            if n.audio is not None and not re.fullmatch(RECORDING_RE, n.audio):
                raise ValueError(f"nodes[{n.id}].audio: {n.audio[:80]!r} is not a recording name (a-z, 0-9, "
                                 "_ and -; upload the WAV to the template's recordings, then name it)")
            for text in (n.prompt, n.no_match_prompt or "", n.silence_prompt or ""):
                for m in SEGMENT.finditer(text):
                    if not re.fullmatch(RECORDING_RE, m[1]):
                        raise ValueError(f"nodes[{n.id}].prompt: [[{m[1][:80]}]] is not a recording name")
        for name in self.recordings:
            if not re.fullmatch(RECORDING_RE, name):
                raise ValueError(f"recordings.{name[:80]}: not a recording name")
        return self

    def missing_recordings(self) -> list[tuple[str, str]]:
        """(field, message) for each recording a node names that the store does not hold: `audio` with
        no file in any language and no prompt text, or a `[[name]]` segment without one in `language`."""
        out: list[tuple[str, str]] = []
        for n in self.nodes:
            if n.audio is not None:
                langs = self.recordings.get(n.audio, {})
                if not langs:
                    out.append((f"nodes[{n.id}].audio", f"the template's recordings hold no {n.audio!r}"))
                elif self.language not in langs and not n.prompt.strip():
                    out.append((f"nodes[{n.id}].audio", f"no {self.language} recording {n.audio!r} and no "
                                                        "prompt text to speak instead"))
            for text in (n.prompt, n.no_match_prompt or "", n.silence_prompt or ""):
                for m in SEGMENT.finditer(text):
                    if self.language not in self.recordings.get(m[1], {}):
                        out.append((f"nodes[{n.id}].prompt",
                                    f"[[{m[1]}]]: the template's recordings hold no {self.language} {m[1]!r}"))
        return out

    def bind_media(self, root: Path) -> Template:
        """Where this process finds the media store's files (recording_path answers paths under it)."""
        self._media_root = Path(root)
        return self

    def recording_path(self, name: str) -> str | None:
        """The file to play for recording `name` in the template's language (None: the store has none);
        an absolute path once bind_media was called, else the media key."""
        ref = self.recordings.get(name, {}).get(self.language)
        if ref is None:
            return None
        return str(self._media_root / ref.key) if self._media_root is not None else ref.key

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
