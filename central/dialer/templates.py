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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from central.dialer.expr import ExprError, compile_expr

KEY_RE = r"^[a-z0-9][a-z0-9_-]{1,62}$"
RECORDING_RE = r"^[a-z0-9][a-z0-9_-]{0,62}$"
SEGMENT = re.compile(r"\[\[([^\[\]]*)\]\]")  # a recorded segment inside prompt text: [[name]]
NODE_ID_RE = r"^[A-Za-z0-9_-]{1,64}$"
# Bounds (issue 20): every text and list of a template is bounded, so nothing stored can make the engine,
# the TTS or the report exhaust memory or time.
MAX_PROMPT = 2000
MAX_NODES = 200
MAX_ANSWERS = 32
NodeRef = Annotated[str, StringConstraints(pattern=NODE_ID_RE)]
Phrase = Annotated[str, StringConstraints(min_length=1, max_length=100)]
SynonymName = Annotated[str, StringConstraints(pattern=r"^[\w-]{1,64}$")]
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
    # see central.dialer.expr (its parser bounds length and nesting, naming nodes[<id>].answers[<j>].expr)
    expr: str | None = None  # None = DTMF only
    dtmf: str = Field(default="", pattern=r"^[0-9*#]{0,12}$")  # digits selecting this answer
    dtmf_slot: str | None = Field(default=None, pattern=r"^\w{1,64}$")  # put the pressed digit (as int) here
    range: tuple[int, int] | None = None  # numeric slots must lie in [lo, hi] (e.g. a 1-5 score)
    next: NodeRef

    @field_validator("range")
    @classmethod
    def _range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] > v[1] or not all(-10**9 <= x <= 10**9 for x in v)):
            raise ValueError("range is [lo, hi] with lo <= hi, both within +-1e9")
        return v


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NODE_ID_RE)
    kind: Literal["ask", "say", "end", "handoff"] = "ask"
    prompt: str = Field(default="", max_length=MAX_PROMPT)
    audio: str | None = None  # the name of a recording in the template's store (see the module doc)
    question: str | None = Field(default=None, min_length=1, max_length=64)  # report column (default: node id)
    answers: list[Answer] = Field(default_factory=list, max_length=MAX_ANSWERS)
    next: NodeRef | None = None  # say nodes
    no_match_prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    silence_prompt: str | None = Field(default=None, max_length=MAX_PROMPT)
    max_retries: int = Field(default=2, ge=0, le=5)
    on_fail: NodeRef | None = None  # after retries; None = end the call with outcome no_input/no_match
    timeout_s: float = Field(default=5.0, gt=0, le=30)  # wait this long for the callee to start
    max_speech_s: float = Field(default=8.0, gt=0, le=60)
    outcome: str | None = Field(default=None, pattern=r"^[\w-]{1,64}$")  # end/handoff nodes (CJK is \w too)
    transfer_to: str | None = Field(default=None, pattern=r"^\S{1,256}$")  # handoff: SIP URI of the agent queue


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_RE)
    name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    language: Literal["zh", "en"] = "zh"
    voice: str | None = Field(default=None, pattern=r"^[\w+\-/]{1,64}$")  # espeak-ng voice id; default per language
    version: int = Field(default=1, ge=1, le=1_000_000)
    synonyms: dict[SynonymName, Annotated[list[Phrase], Field(min_length=1, max_length=200)]] = Field(
        default_factory=dict, max_length=64)
    global_answers: list[Answer] = Field(default_factory=list, max_length=MAX_ANSWERS)  # after a node's own
    start: NodeRef
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)
    # name -> language -> file: the template's recording store, kept by the server (module doc)
    recordings: dict[str, dict[Literal["zh", "en"], RecordingRef]] = Field(default_factory=dict)
    _media_root: Path | None = PrivateAttr(default=None)  # set where recordings are played (the engine)

    @model_validator(mode="after")
    def _graph(self) -> Template:
        """Graph rules, each error naming its field path (`start`, `nodes[ask1].next`,
        `nodes[ask1].answers[0].expr`): pydantic prefixes the location with the template's own."""
        problems = graph_problems(self)
        if problems:
            raise ValidationError.from_exception_data("Template", [
                InitErrorDetails(type=PydanticCustomError("template_graph", msg), loc=(where,), input=where)
                for where, msg in problems])
        return self

    @model_validator(mode="after")
    def _audio(self) -> Template:
        """Recordings are named, never paths: `audio` and `[[...]]` segments must be recording names."""
        problems: list[tuple[str, str]] = []
        for n in self.nodes:
            if n.audio is not None and not re.fullmatch(RECORDING_RE, n.audio):
                problems.append((f"nodes[{n.id}].audio", f"{n.audio[:80]!r} is not a recording name (a-z, 0-9, "
                                 "_ and -; upload the WAV to the template's recordings, then name it)"))
            for text in (n.prompt, n.no_match_prompt or "", n.silence_prompt or ""):
                for m in SEGMENT.finditer(text):
                    if not re.fullmatch(RECORDING_RE, m[1]):
                        problems.append((f"nodes[{n.id}].prompt", f"[[{m[1][:80]}]] is not a recording name"))
        problems += [(f"recordings.{name[:80]}", "not a recording name") for name in self.recordings
                     if not re.fullmatch(RECORDING_RE, name)]
        if problems:
            raise ValidationError.from_exception_data("Template", [
                InitErrorDetails(type=PydanticCustomError("template_audio", msg), loc=(where,), input=where)
                for where, msg in problems])
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


def graph_problems(t: Template) -> list[tuple[str, str]]:
    """(field path, message) of every rule the dialog graph breaks: duplicate or unknown node ids, node
    kinds with the wrong parts, answers without a way to match, bad expressions, say nodes that loop
    without a question, and a start from which no end or handoff node can be reached."""
    out: list[tuple[str, str]] = []
    ids = [n.id for n in t.nodes]
    seen: set[str] = set()
    for i, nid in enumerate(ids):
        if nid in seen:
            out.append((f"nodes[{i}].id", f"duplicate node id {nid!r}"))
        seen.add(nid)
    if t.start not in seen:
        out.append(("start", f"no node {t.start!r}"))

    def check(where: str, target: str | None) -> None:
        if target is not None and target not in seen:
            out.append((where, f"no node {target!r}"))

    def answer(where: str, a: Answer) -> None:
        if not a.expr and not a.dtmf:
            out.append((where, "needs an expr or dtmf digits"))
        if a.expr:
            try:
                compile_expr(a.expr, t.synonyms)
            except ExprError as e:
                out.append((f"{where}.expr", str(e)))

    for i, a in enumerate(t.global_answers):
        check(f"global_answers[{i}].next", a.next)
        answer(f"global_answers[{i}]", a)
    for n in t.nodes:
        where = f"nodes[{n.id}]"
        if n.kind == "ask" and not n.answers:
            out.append((f"{where}.answers", "an ask node needs at least one answer"))
        if n.kind == "say" and n.next is None:
            out.append((f"{where}.next", "a say node needs a next node"))
        if n.kind != "ask" and n.answers:
            out.append((f"{where}.answers", "only ask nodes take answers"))
        if not n.prompt and not n.audio and n.kind in ("ask", "say"):
            out.append((f"{where}.prompt", "needs prompt text or audio"))
        check(f"{where}.next", n.next)
        check(f"{where}.on_fail", n.on_fail)
        for j, a in enumerate(n.answers):
            check(f"{where}.answers[{j}].next", a.next)
            answer(f"{where}.answers[{j}]", a)
    if out:  # the walks below need a graph whose references hold
        return out
    return _loop_problems(t)


def _loop_problems(t: Template) -> list[tuple[str, str]]:
    """Say nodes whose `next` chain comes back to itself would talk forever without listening (the
    dialog only stops them at MAX_STEPS); and a start that reaches no end/handoff node never ends well."""
    by_id = {n.id: n for n in t.nodes}
    out: list[tuple[str, str]] = []
    reported: set[str] = set()
    for n in t.nodes:
        if n.kind != "say" or n.id in reported:
            continue
        chain = [n.id]
        cur = by_id[n.next] if n.next else None
        while cur is not None and cur.kind == "say" and cur.id not in chain:
            chain.append(cur.id)
            cur = by_id[cur.next] if cur.next else None
        if cur is not None and cur.kind == "say" and cur.id == n.id:
            reported.update(chain)
            path = " -> ".join([*chain, n.id])
            out.append((f"nodes[{n.id}].next", f"say nodes loop without a question: {path}"))
    reach: set[str] = set()
    todo = [t.start]
    while todo:
        nid = todo.pop()
        if nid in reach:
            continue
        reach.add(nid)
        node = by_id[nid]
        nxt = [node.next, node.on_fail, *(a.next for a in node.answers)]
        if node.kind == "ask":
            nxt += [a.next for a in t.global_answers]
        todo += [x for x in nxt if x is not None and node.kind in ("ask", "say")]
    if not any(by_id[x].kind in ("end", "handoff") for x in reach):
        out.append(("start", f"no end or handoff node can be reached from {t.start!r}"))
    return out
