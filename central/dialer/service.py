"""Dialer rules: template versions and copies, call tasks (call list import, schedule, state), the
scheduler's claim/finish protocol used by the SIP engine, reports, CSV export and webhooks.

No HTTP types here. Every time-dependent function takes `now` so the clock is injectable.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
import unicodedata
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from central import csvsafe
from central.dialer import store
from central.dialer.templates import KEY_RE, Template, builtin_templates
from central.errors import TEXT_SUSPECT, text_problem
from central.metrics import Sample
from central.problems import FieldProblem, HubError, Invalid
from central.webhooks import service as webhooks

if TYPE_CHECKING:
    from central.hub import Hub
    from central.media import MediaStore
    from central.store import Db

log = logging.getLogger("citybrain.dialer")

ROOT_ORG = "/city"  # built-in templates belong to the city and are visible to every department
ACTIVE = ("pending", "calling")
SIP_OUTCOMES = ("busy", "no_answer", "failed")
# Outcomes of a call that did not reach its end (issue 20: outcomes are facts). A prompt that could not be
# synthesised or a recording that is missing fails the same way at every attempt: never retried. An early
# hang-up is retried only when the task's retry_delay_s names it. A lost engine's attempt is re-dialled
# once (after retry_delay_s["engine_lost"], default at once) if attempts are left.
NEVER_RETRIED = ("prompt_failed", "audio_missing")
FAILED_OUTCOMES = (*SIP_OUTCOMES, *NEVER_RETRIED, "engine_lost")


class DialerError(HubError, ValueError):
    """A rule violation; `field` names the offending input, `status` the answer (400/404/409/413/422)."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}", status=status, field=field)


def utc(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


# --- schedule -------------------------------------------------------------------------------------
# Bounds (issue 20): a stored schedule is read by every engine on every tick and used in date arithmetic,
# so each value is refused at the API (422 naming the field) rather than found out by the engine (a
# retry delay of 10^12 s raised OverflowError in finish_attempt and brought the engine down).
MAX_RETRY_DELAY_S = 7 * 24 * 3600  # the API refuses more; the engine clamps what a stored schedule says
MAX_WINDOWS = 24
# Outcomes a retry delay may name (the keys of retry_delay_s): the SIP results and the dialog endings
# that leave the question open. An engine or dialog outcome added later that should be retryable is added
# to RetryOutcome below.


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: time
    end: time

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, v: time) -> time:
        if v.tzinfo is not None:  # compared with the task zone's local time: an offset here cannot hold
            raise ValueError("a local time without offset (the schedule's timezone applies)")
        return v

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.end <= self.start:
            raise ValueError("end must be after start (split windows that cross midnight)")
        return self


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _tz(v: str) -> str:
    # only names of the system's tz database: ZoneInfo() would also try paths and odd keys
    if v not in _zones():
        raise ValueError(f"unknown time zone {v[:64]!r} (an IANA name such as Asia/Shanghai)")
    return v


def _weekdays(v: list[int]) -> list[int]:
    if not v or any(d < 0 or d > 6 for d in v):
        raise ValueError("weekdays are 0 (Monday) .. 6 (Sunday), at least one")
    if len(set(v)) != len(v):
        raise ValueError("weekdays: each day once")
    return v


def _windows(v: list[Window]) -> list[Window]:
    spans = sorted((w.start, w.end) for w in v)
    for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False):
        if s2 < e1:
            raise ValueError(f"windows overlap at {s2.isoformat()}")
    return v


TimeZone = Annotated[str, Field(max_length=64), AfterValidator(_tz)]
Windows = Annotated[list[Window], Field(min_length=1, max_length=MAX_WINDOWS), AfterValidator(_windows)]
Weekdays = Annotated[list[int], Field(min_length=1, max_length=7), AfterValidator(_weekdays)]
MaxConcurrent = Annotated[int, Field(ge=1, le=500)]
CallsPerSecond = Annotated[float, Field(ge=0.01, le=100)]
MaxAttempts = Annotated[int, Field(ge=1, le=10)]
RetryOutcome = Literal["busy", "no_answer", "failed", "hangup", "no_input", "no_match", "engine_lost",
                       "early_hangup"]
RETRYABLE_OUTCOMES: tuple[str, ...] = get_args(RetryOutcome)
RetryDelays = Annotated[dict[RetryOutcome, Annotated[int, Field(ge=0, le=MAX_RETRY_DELAY_S)]],
                        Field(max_length=len(RETRYABLE_OUTCOMES))]


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: TimeZone = "Asia/Shanghai"
    windows: Windows = Field(
        default_factory=lambda: [Window(start=time(9), end=time(12)), Window(start=time(14), end=time(20))])
    weekdays: Weekdays = Field(default_factory=lambda: list(range(7)))  # 0 = Monday
    max_concurrent: MaxConcurrent = 10
    calls_per_second: CallsPerSecond = 2.0
    max_attempts: MaxAttempts = 3
    retry_delay_s: RetryDelays = Field(
        default_factory=lambda: {"busy": 300, "no_answer": 900, "failed": 1800})

    def open_at(self, now: datetime) -> bool:
        """Is `now` inside a call window (local time of the task's zone)?"""
        local = now.astimezone(ZoneInfo(self.timezone))
        t = local.time().replace(tzinfo=None)
        return local.weekday() in self.weekdays and any(w.start <= t < w.end for w in self.windows)

    def next_open(self, after: datetime) -> datetime | None:
        """The first instant at or after `after` inside a window (None if no window opens within 8 days:
        cannot happen with at least one weekday and window)."""
        if self.open_at(after):
            return after
        tz = ZoneInfo(self.timezone)
        local = after.astimezone(tz)
        for day in range(8):
            d = (local + timedelta(days=day)).date()
            if d.weekday() not in self.weekdays:
                continue
            for w in sorted(self.windows, key=lambda w: w.start):
                at = datetime.combine(d, w.start, tz)
                if at > local:
                    return at.astimezone(UTC)
        return None


class SchedulePatch(BaseModel):
    """A change of a task's windows and pacing (PATCH /tasks/{id}): the fields given replace the task's,
    with the bounds of a new task's schedule."""

    model_config = ConfigDict(extra="forbid")

    timezone: TimeZone | None = None
    windows: Windows | None = None
    weekdays: Weekdays | None = None
    max_concurrent: MaxConcurrent | None = None
    calls_per_second: CallsPerSecond | None = None
    max_attempts: MaxAttempts | None = None
    retry_delay_s: RetryDelays | None = None


class TaskPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: SchedulePatch


# --- phones ---------------------------------------------------------------------------------------
_PHONE_OK = [re.compile(r"1[3-9]\d{9}"), re.compile(r"0\d{9,11}"), re.compile(r"\+\d{8,15}")]


_PHONE_SEPARATORS = frozenset("()[].")


def _phone_chars(raw: str) -> str:
    """Every Unicode decimal digit as ASCII (full-width １, Arabic-Indic ١, Devanagari १ ...), full-width
    ＋（）－ as ASCII (NFKC), spaces, dashes and the usual separators dropped."""
    out = []
    for ch in unicodedata.normalize("NFKC", raw):
        if ch.isascii() and ch.isdigit() or ch == "+":
            out.append(ch)
        elif unicodedata.category(ch) == "Nd":
            out.append(str(unicodedata.decimal(ch)))
        elif ch in _PHONE_SEPARATORS or ch.isspace() or unicodedata.category(ch) in ("Pd", "Zs", "Cf"):
            continue  # spaces, every dash (- – — −), zero-width marks Excel and chat apps leave behind
        else:
            raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) is not part of a phone number")
    return "".join(out)


def normalize_phone(raw: str) -> str:
    """'+86 138-0013-8000' or '１３８００１３８０００' -> '13800138000'; raises ValueError with the reason."""
    text = str(raw or "")
    if len(text) > 64:
        raise ValueError(f"longer than 64 characters ({len(text)})")
    v = _phone_chars(text)
    if v.startswith("+86"):
        v = v[3:]
    elif v.startswith("0086"):
        v = v[4:]
    if not v:
        raise ValueError("empty")
    if not any(p.fullmatch(v) for p in _PHONE_OK):
        raise ValueError(f"{mask_phone(v)} is not a mobile (1xxxxxxxxxx), landline (0 + area + number) or +E.164")
    return v


def mask_phone(v: str) -> str:
    try:
        from central.iam.pii import mask_phone as m

        return m(v) or ""
    except ImportError:  # pragma: no cover - iam ships mask_phone; keep a local mask if it moves
        return v[:3] + "*" * max(0, len(v) - 7) + v[-4:] if len(v) > 7 else "*" * len(v)


def _cipher(hub: Hub):  # type: ignore[no-untyped-def]
    from central.iam.pii import pii_cipher

    return pii_cipher(hub)


# --- templates ------------------------------------------------------------------------------------
def _under(path: str, scope: str) -> bool:
    return path == scope or path.startswith(scope.rstrip("/") + "/")


def seed_builtins(hub: Hub) -> None:
    with hub.store.read() as db:
        have = store.template_keys(db)
    rows = [{"key": t.key, "version": t.version, "name": t.name, "org": ROOT_ORG, "language": t.language,
             "body": t.model_dump_json(), "builtin": 1, "created_by": "system", "created_at": iso(utc())}
            for t in builtin_templates() if t.key not in have]
    if rows:  # a write transaction only at the first start, not at every one
        with hub.store.tx() as db:
            store.insert_templates_ignore(db, rows)


def visible(org: str, scopes: list[str]) -> bool:
    """Templates of an ancestor org (city-wide) are visible below it; own-subtree ones too."""
    return any(_under(org, s) or _under(s, org) for s in scopes)


def list_templates(hub: Hub, scopes: list[str]) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        rows = store.latest_templates(db)
    return [{**r, "builtin": bool(r["builtin"])} for r in rows if visible(r["org"], scopes)]


def get_template(hub: Hub, key: str, version: int | None = None) -> tuple[Template, dict[str, Any]]:
    with hub.store.read() as db:
        row = store.get_template(db, key, version)
    if row is None:
        raise DialerError("template", f"no template {key!r}" + (f" version {version}" if version else ""), 404)
    body = row.pop("body")
    return Template.model_validate_json(body), {**row, "builtin": bool(row["builtin"])}


def template_versions(hub: Hub, key: str) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        return store.template_versions(db, key)


def save_template(hub: Hub, tpl: Template, org: str, actor: str, based_on: str | None = None,
                  recordings: dict[str, Any] | None = None) -> Template:
    """Store `tpl` as a new version of its key (version 1 for a new key). Older versions stay frozen.
    Its `recordings` are the key's recording store as stored (or `recordings`: a copy's, an upload's),
    never the body's; a node naming a recording the store lacks is refused (422, `nodes[<id>].audio`)."""
    from central.iam.audit import record

    with hub.store.tx() as db:
        owner = store.template_owner(db, tpl.key)
        if owner["version"] is not None and (owner["builtin"] or owner["org"] != org):
            raise DialerError("key", f"template {tpl.key!r} belongs to {owner['org']}; copy it under a new key", 409)
        tpl = Template.model_validate({**tpl.model_dump(), "version": (owner["version"] or 0) + 1,
                                       "recordings": _stored_recordings(db, tpl.key) if recordings is None
                                       else recordings})
        for where, problem in tpl.missing_recordings():
            raise DialerError(where, problem, 422)
        store.insert_template(db, {
            "key": tpl.key, "version": tpl.version, "name": tpl.name, "org": org, "language": tpl.language,
            "body": tpl.model_dump_json(), "based_on": based_on, "builtin": 0, "created_by": actor,
            "created_at": iso(utc()),
        })
        record(db, actor=actor, action="dialer.template.save", target=f"{tpl.key}@{tpl.version}", org=org,
               detail={"based_on": based_on})
    return tpl


def copy_template(hub: Hub, src_key: str, new_key: str, org: str, actor: str,
                  version: int | None = None, name: str | None = None) -> Template:
    src, meta = get_template(hub, src_key, version)
    data = src.model_dump()
    data.update(key=new_key, version=1, name=name or src.name)
    # the copy's store starts with the source's recordings (content-addressed: the same files)
    return save_template(hub, Template.model_validate(data), org, actor, based_on=f"{src_key}@{meta['version']}",
                         recordings=src.model_dump()["recordings"])


# --- tasks ----------------------------------------------------------------------------------------
class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=120)
    org: str = Field(pattern=r"^/[\w\-/]*$", max_length=200)
    template_key: str = Field(pattern=KEY_RE)
    template_version: int | None = Field(default=None, ge=1, le=1_000_000)  # None = latest, frozen at creation
    schedule: Schedule = Field(default_factory=Schedule)
    priority: int = Field(default=0, ge=-100, le=100)
    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2000)
    webhook_secret: str | None = Field(default=None, min_length=16, max_length=256)

    @field_validator("name")
    @classmethod
    def _text(cls, v: str) -> str:
        if (why := text_problem(v, multiline=False)) is not None:
            raise ValueError(why)
        return v


def task_warnings(hub: Hub, tpl: Template) -> list[str]:
    """What a task on `tpl` will not do as its author may expect: DTMF-only calls where the engines have
    no speech model for its language (settings.dialer.asr_languages), questions no key can answer, and
    characters the Mandarin voice cannot say (when espeak-ng is installed here)."""
    from central.dialer.dialog import dtmf_hint, tts_texts
    from central.dialer.voice import DEFAULT_VOICES, VoiceUnavailable, mandarin_coverage

    out: list[str] = []
    if tpl.language not in hub.settings.dialer.asr_languages:
        out.append(f"template.language: no speech recognition model for {tpl.language!r} is installed, so calls "
                   "are DTMF only: spoken answers are not attempted and prompts say which key to press")
        for n in tpl.nodes:
            digits = "".join(a.dtmf for a in [*n.answers, *tpl.global_answers])
            if n.kind == "ask" and not digits:
                out.append(f"nodes[{n.id}]: no answer has DTMF digits, so the question cannot be answered"
                           + (f" and is skipped to {n.on_fail!r}" if n.on_fail else " and the call ends no_input"))
            elif n.kind == "ask" and dtmf_hint(tpl, n):
                out.append(f"nodes[{n.id}].prompt: names no key; the calls append {dtmf_hint(tpl, n)!r}")
    if tpl.language == "zh":
        voice = tpl.voice or DEFAULT_VOICES["zh"]
        try:
            cov = mandarin_coverage(tts_texts(tpl, {"name": "王先生"}, dtmf_only=True), voice)
        except VoiceUnavailable as e:
            out.append(f"template.voice: not checked ({e})")
        else:
            if not cov.ok:
                bad = "".join(sorted(cov.unspoken))[:40]
                out.append(f"template.voice: {voice!r} speaks {cov.share:.0%} of the prompts' characters as "
                           f"Mandarin (not: {bad or 'language switches'})")
    return out


def create_task(hub: Hub, spec: TaskIn, actor: str) -> int:
    from central.iam.audit import record

    tpl, meta = get_template(hub, spec.template_key, spec.template_version)
    if not visible(meta["org"], [spec.org]):
        raise DialerError("template_key", f"template {spec.template_key!r} is outside org {spec.org}", 403)
    if spec.webhook_url and not spec.webhook_secret:
        raise DialerError("webhook_secret", "needed with webhook_url (deliveries are HMAC-signed)")
    with hub.store.tx() as db:
        tid = store.insert_task(db, {
            "name": spec.name, "org": spec.org, "template_key": tpl.key, "template_version": meta["version"],
            "template": tpl.model_dump_json(), "schedule": spec.schedule.model_dump_json(), "status": "draft",
            "priority": spec.priority, "webhook_url": spec.webhook_url, "webhook_secret": spec.webhook_secret,
            "created_by": actor, "created_at": iso(utc()),
        })
        record(db, actor=actor, action="dialer.task.create", target=f"task:{tid}", org=spec.org,
               detail={"template": f"{tpl.key}@{meta['version']}"})
    return tid


def get_task(hub: Hub, task_id: int) -> dict[str, Any]:
    with hub.store.read() as db:
        task = store.get_task(db, task_id)
    if task is None:
        raise DialerError("task_id", f"no task {task_id}", 404)
    task["schedule"] = json.loads(task["schedule"])
    task.pop("webhook_secret", None)
    return task


def list_tasks(hub: Hub, scopes: list[str]) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        rows = store.list_tasks(db)
    return [r for r in rows if any(_under(r["org"], s) for s in scopes)]


_PHONE_COLS = ("phone", "mobile", "tel", "number", "电话", "手机", "手机号", "号码")
_NAME_COLS = ("name", "姓名", "名字")
_PRIO_COLS = ("priority", "优先级")


def _rows_of(filename: str, data: bytes) -> list[list[str]]:
    if filename.lower().endswith((".xlsx", ".xlsm")):
        import openpyxl

        try:
            wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as e:  # noqa: BLE001  openpyxl raises many types for a broken file
            raise DialerError("file", f"not a readable XLSX workbook ({type(e).__name__})") from e
        ws = wb.worksheets[0]
        return [["" if c is None else str(c).strip() for c in row] for row in ws.iter_rows(values_only=True)]
    text = decode_text(data)
    try:
        return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text))]
    except csv.Error as e:  # a field over csv.field_size_limit, a NUL ...
        raise DialerError("file", f"not a readable CSV file ({e})") from e


_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_SAVE_AS = "save it as UTF-8 (Excel: CSV UTF-8) and import it again"


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 without a BOM, told by its NUL pattern: a call list is mostly ASCII (digits, commas, line
    ends), whose UTF-16 code units have a NUL high byte, so one byte position in each pair is mostly NUL."""
    sample = data[:4096]
    if len(sample) < 4 or len(sample) % 2:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd >= half * 0.3 and even <= half * 0.05:
        enc = "utf-16-le"
    elif even >= half * 0.3 and odd <= half * 0.05:
        enc = "utf-16-be"
    else:
        return None
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        raise DialerError("file", f"looks like {enc.upper()} but does not decode ({e.reason}); {_SAVE_AS}") from e


def _gb_plausible(text: str) -> bool:
    """Does a GB18030 reading look like Chinese? Any byte string of another double-byte encoding also
    decodes as GB18030, to characters no call list holds: Shift-JIS 山田太郎 reads as 嶳揷懢榊, none of them
    in GB2312 (the 6,763 common hanzi plus punctuation). Real lists keep their rare name characters (喆,
    堃) a minority, so at least half of the non-ASCII characters must be GB2312 ones."""
    wide = [c for c in text if ord(c) > 127]
    if not wide:
        return True
    common = 0
    for c in wide:
        try:
            c.encode("gb2312")
        except UnicodeEncodeError:
            if unicodedata.category(c) in ("Co", "Cn"):  # private-use or unassigned: a byte mix-up
                return False
        else:
            common += 1
    return common * 2 >= len(wide)


def _utf8_or_gb18030(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError as e:
        raise DialerError("file", f"neither UTF-8 nor GB18030 text; {_SAVE_AS}") from e
    if _gb_plausible(text):
        return text
    try:
        data.decode("shift_jis")
        hint = " (it reads as Shift-JIS, a Japanese encoding)"
    except UnicodeDecodeError:
        hint = ""
    raise DialerError("file", f"not UTF-8, and its GB18030 reading is not Chinese text{hint}; {_SAVE_AS}")


def decode_text(data: bytes) -> str:
    """A text file's content: BOM (UTF-8, UTF-16 LE/BE), then UTF-16 by its NUL pattern, strict UTF-8,
    then GB18030 (Excel in a Chinese locale saves CSV as GBK) when its reading is plausible. Anything else
    (Shift-JIS, UTF-16 that does not decode, binary, text already damaged into U+FFFD replacement
    characters) is refused with the reason, never imported as garbage."""
    text: str | None = None
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(enc)
            except UnicodeDecodeError as e:
                raise DialerError("file", f"starts with a {enc.upper()} byte-order mark but does not decode "
                                          f"({e.reason} at byte {e.start + len(bom)}); {_SAVE_AS}") from e
            break
    if text is None:
        text = _utf16_without_bom(data)
    if text is None:
        if b"\x00" in data:
            raise DialerError("file", "holds NUL bytes: not a text (CSV) file")
        text = _utf8_or_gb18030(data)
    if "\x00" in text:
        raise DialerError("file", "holds NUL characters: not a text (CSV) file")
    if "\ufffd" in text:
        n = text.count("\ufffd")
        raise DialerError("file", f"holds {n} U+FFFD replacement character(s): the text was damaged by an "
                                  "earlier conversion; export it again from its source")
    return text


MAX_IMPORT_COLUMNS = 64
MAX_NAME_CHARS = 100
MAX_CELL_CHARS = 1000


def _cell_problem(header: list[str], row: list[str], ncol: int | None) -> tuple[str, str] | None:
    """(column, reason) of the first cell of a row that cannot be stored as contact text, or None."""
    for i, v in enumerate(row):
        if not v:
            continue
        col = header[i] if i < len(header) and header[i] else f"column {i + 1}"
        limit = MAX_NAME_CHARS if i == ncol else MAX_CELL_CHARS
        if len(v) > limit:
            return col, f"longer than {limit} characters ({len(v)})"
        if TEXT_SUSPECT.search(v) and (why := text_problem(v)) is not None:
            return col, why
    return None


def import_contacts(hub: Hub, task_id: int, filename: str, data: bytes, actor: str) -> dict[str, Any]:
    """Load a call list (CSV or XLSX, header row). Bad rows are reported with row number and field and
    skipped; good rows are imported. Numbers on the do-not-call list are kept but marked skipped."""
    from central.iam.audit import record

    task = get_task(hub, task_id)
    if task["status"] not in ("draft", "paused", "running"):
        raise DialerError("task_id", f"task is {task['status']}; cannot add contacts", 409)
    rows = _rows_of(filename, data)
    if not rows:
        raise DialerError("file", "empty file")
    header = [h.strip().lower() for h in rows[0]]
    pcol = next((i for i, h in enumerate(header) if h in _PHONE_COLS), None)
    if pcol is None:
        raise DialerError("file", f"no phone column (one of {', '.join(_PHONE_COLS)}) in the header row")
    ncol = next((i for i, h in enumerate(header) if h in _NAME_COLS), None)
    prcol = next((i for i, h in enumerate(header) if h in _PRIO_COLS), None)
    if len(header) > MAX_IMPORT_COLUMNS:
        raise DialerError("file", f"more than {MAX_IMPORT_COLUMNS} columns in the header row")
    c = _cipher(hub)
    with hub.store.read() as db:
        dnc = _dnc_for(db, task["org"])
        existing = store.contact_phone_indexes(db, task_id)
    errors: list[dict[str, Any]] = []
    good: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    now = iso(utc())
    for n, row in enumerate(rows[1:], start=2):
        if not any(row):
            continue
        if (bad := _cell_problem(header, row, ncol)) is not None:
            errors.append({"row": n, "field": bad[0], "error": bad[1]})
            continue
        cell = row[pcol] if pcol < len(row) else ""
        try:
            phone = normalize_phone(cell)
        except ValueError as e:
            errors.append({"row": n, "field": header[pcol], "error": str(e)})
            continue
        idx = c.blind_index("phone", phone)
        if idx in seen or idx in existing:
            errors.append({"row": n, "field": header[pcol],
                           "error": f"duplicate of row {seen[idx]}" if idx in seen else "already in this task"})
            continue
        prio = 0
        if prcol is not None and prcol < len(row) and row[prcol]:
            try:
                prio = int(float(row[prcol]))
            except (ValueError, OverflowError):  # "abc", "nan", "1e309"
                errors.append({"row": n, "field": header[prcol], "error": f"not a number: {row[prcol][:40]!r}"})
                continue
            if not -100 <= prio <= 100:
                errors.append({"row": n, "field": header[prcol], "error": f"priority {prio} not in -100..100"})
                continue
        seen[idx] = n
        variables = {header[i]: v for i, v in enumerate(row) if i not in (pcol,) and i < len(header) and header[i]}
        is_dnc = idx in dnc
        good.append({
            "task_id": task_id, "row_no": n, "phone_enc": c.encrypt(phone), "phone_idx": idx,
            "phone_masked": mask_phone(phone), "name": row[ncol] if ncol is not None and ncol < len(row) else None,
            "vars": json.dumps(variables, ensure_ascii=False), "priority": prio,
            "status": "skipped" if is_dnc else "pending", "outcome": "dnc" if is_dnc else None,
            "attempts": 0, "updated_at": now,
        })
    with hub.store.tx() as db:
        # Row numbers continue the task's sequence, so the export's `row` is unique per task across imports:
        # the first import keeps the file's own row numbers (2 = the first row under the header), a later
        # one continues after the highest row so far (serialised per task: two imports at once do not overlap).
        offset = store.next_row_offset(db, task_id)
        for g in good:
            g["row_no"] += offset
        store.insert_contacts(db, good)
        record(db, actor=actor, action="dialer.contacts.import", target=f"task:{task_id}", org=task["org"],
               detail={"file": filename, "imported": len(good), "errors": len(errors)})
    return {"imported": len(good), "dnc_skipped": sum(1 for g in good if g["status"] == "skipped"),
            "errors": errors}


_TRANSITIONS: dict[str, dict[str, str]] = {
    "start": {"draft": "running"},
    "pause": {"running": "paused"},
    "resume": {"paused": "running"},
    "cancel": {"draft": "cancelled", "running": "cancelled", "paused": "cancelled"},
}


def change_state(hub: Hub, task_id: int, action: Literal["start", "pause", "resume", "cancel"], actor: str,
                 now: datetime | None = None) -> str:
    from central.iam.audit import record

    with hub.store.tx() as db:
        task = get_task(hub, task_id)
        new = _TRANSITIONS[action].get(task["status"])
        if new is None:
            raise DialerError("action", f"cannot {action} a {task['status']} task", 409)
        if action == "start" and not store.has_contacts(db, task_id):
            raise DialerError("task_id", "import a call list before starting", 409)
        upd: dict[str, Any] = {"status": new}
        if action == "start":
            upd["started_at"] = iso(utc(now))
        if new == "cancelled":
            upd["finished_at"] = iso(utc(now))
            store.cancel_pending(db, task_id, iso(utc(now)))
        store.update_task(db, task_id, upd)
        record(db, actor=actor, action=f"dialer.task.{action}", target=f"task:{task_id}", org=task["org"])
    return new


def progress(hub: Hub, task_id: int) -> dict[str, Any]:
    task = get_task(hub, task_id)
    with hub.store.read() as db:
        by_status = store.status_counts(db, task_id)
        cdr = store.cdr_counts(db, task_id)
    total = sum(by_status.values())
    done = by_status.get("done", 0) + by_status.get("failed", 0) + by_status.get("skipped", 0)
    return {
        "task_id": task_id, "status": task["status"], "total": total,
        "pending": by_status.get("pending", 0), "calling": by_status.get("calling", 0),
        "dialled": cdr["dialled"], "answered": cdr["answered"], "completed": cdr["completed"],
        "failed": by_status.get("failed", 0), "skipped": by_status.get("skipped", 0),
        "finished_contacts": done, "percent": round(100.0 * done / total, 1) if total else 0.0,
    }


# --- engine side: claim a due contact, record the attempt -----------------------------------------
def running_tasks(hub: Hub) -> list[dict[str, Any]]:
    """Running tasks for the engine. A task whose stored schedule or template no longer parses (e.g. after
    validation got stricter) is left out and logged: it must not stop the engine serving the others."""
    with hub.store.read() as db:
        rows = store.running_tasks(db)
    out = []
    for r in rows:
        try:
            out.append({"id": r["id"], "org": r["org"], "schedule": Schedule.model_validate_json(r["schedule"]),
                        "template": _playable(hub, Template.model_validate_json(r["template"])),
                        "priority": r["priority"]})
        except ValueError as e:
            log.error("task %s not dialled: its stored schedule/template is invalid: %s", r["id"], e)
    return out


def _playable(hub: Hub, tpl: Template) -> Template:
    """The template with its recordings resolved to this process's media store files (what the engine plays)."""
    if tpl.recordings and getattr(hub, "services", None) is not None:
        tpl.bind_media(media(hub).root)
    return tpl


def task_status(hub: Hub, task_id: int) -> str:
    with hub.store.read() as db:
        return store.task_status(db, task_id) or "missing"


def task_statuses(hub: Hub, task_ids: set[int]) -> dict[int, str]:
    """Status of each of these tasks (a missing task is left out)."""
    with hub.store.read() as db:
        return store.task_statuses(db, task_ids)


def active_calls(hub: Hub, task_id: int) -> int:
    """Calls in progress for a task across every engine process (max_concurrent is task-wide)."""
    with hub.store.read() as db:
        return store.active_calls(db, task_id)


def any_active_task(hub: Hub) -> bool:
    with hub.store.read() as db:
        return store.any_active_task(db)


def _dnc_for(db: Db, org: str) -> set[str]:
    """Blind indexes of the do-not-call entries that cover `org` (an entry of an org covers its subtree)."""
    return {idx for idx, o in store.dnc_entries(db) if _under(org, o)}


def claim_due(hub: Hub, task: dict[str, Any], now: datetime, limit: int,
              engine_id: str = "engine-1", lease_s: float = 120.0) -> list[dict[str, Any]]:
    """Atomically take up to `limit` due contacts of a running task (priority first), never more than
    the task's free slots (max_concurrent across every engine, counted in the claim's own transaction),
    skipping numbers put on the do-not-call list after import. Returns them with the decrypted phone."""
    if limit <= 0 or not task["schedule"].open_at(now):
        return []
    c = _cipher(hub)
    with hub.store.tx() as db:
        rows = store.claim_contacts(db, task["id"], iso(now), limit, task["schedule"].max_concurrent,
                                    _dnc_for(db, task["org"]), engine_id, lease_s)
    return [{"id": r["id"], "task_id": task["id"], "phone": c.decrypt(r["phone_enc"]), "name": r["name"],
             "vars": {**json.loads(r["vars"]), "name": r["name"] or ""}, "attempt": r["attempts"] + 1}
            for r in rows]


FEED_CDR_FIELDS = ("engine", "started_at", "answered_at", "ended_at", "sip_status", "outcome", "reason",
                   "end_node", "duration_s")


def retry_delay(sched: Schedule, outcome: str) -> float | None:
    """Seconds until the retry after `outcome` (None: not retried), clamped to MAX_RETRY_DELAY_S."""
    if outcome in NEVER_RETRIED:
        return None
    raw = sched.retry_delay_s.get(outcome, 0 if outcome == "engine_lost" else None)
    if raw is None:
        return None
    try:
        return float(min(max(0.0, float(raw)), MAX_RETRY_DELAY_S))
    except (TypeError, ValueError, OverflowError):
        return float(MAX_RETRY_DELAY_S)


def _insert_cdr(db: Db, task_id: int, contact_id: int, attempts: int, cdr: dict[str, Any]) -> None:
    store.insert_cdr(db, {
        **{k: (json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v)
           for k, v in cdr.items() if k in store.CDR_COLUMNS},
        "task_id": task_id, "contact_id": contact_id, "attempt": attempts,
    })


def finish_attempt(hub: Hub, contact_id: int, cdr: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Store the CDR, then retry (per the schedule's retry_delay_s and max_attempts; see NEVER_RETRIED and
    engine_lost above) or close the contact. Returns the contact row and whether it is final; completes
    the task when nothing is left to call. A CDR naming an engine that no longer holds the contact (its
    lease ran out and another engine released it) is stored as the fact it is, and the contact is left
    to whoever holds it now."""
    with hub.store.tx() as db:
        row = store.contact_for_finish(db, contact_id)
        if row is None:
            raise DialerError("contact_id", f"no contact {contact_id}", 404)
        task_id, attempts = row["task_id"], row["attempts"]
        outcome = cdr["outcome"]
        if cdr.get("engine") and (row["status"] != "calling" or row["claimed_by"] != cdr["engine"]):
            log.warning("contact %s: attempt by %s finished after its lease was released (%s)", contact_id,
                        cdr["engine"], outcome)
            _insert_cdr(db, task_id, contact_id, attempts, cdr)
            return {"task_id": task_id, "final": row["status"] not in ACTIVE, "status": row["status"],
                    "task_completed": False}
        sched = Schedule.model_validate_json(row["schedule"])
        _insert_cdr(db, task_id, contact_id, attempts, cdr)
        delay = retry_delay(sched, outcome) if attempts < sched.max_attempts else None
        if delay is not None and outcome == "engine_lost" and store.lost_attempts(db, contact_id) > 1:
            delay = None  # the CDR just stored is its second lost attempt: one re-dial only
        retry = delay is not None
        if retry:
            status, next_at = "pending", iso(now + timedelta(seconds=delay or 0))
        else:
            status, next_at = ("failed" if outcome in FAILED_OUTCOMES else "done"), None
        store.set_contact_result(db, contact_id, status, next_at, outcome,
                                 json.dumps(cdr.get("answers") or {}, ensure_ascii=False), iso(now),
                                 cdr.get("reason"))
        if not retry and (target := _webhook(db, task_id)) is not None:
            webhooks.enqueue(db, "contact.finished", {
                "event": "contact.finished", "task_id": task_id, "contact_id": contact_id, "outcome": outcome,
                "answers": cdr.get("answers"), "attempt": attempts}, target, ref=f"dialer.task:{task_id}")
        finished = maybe_complete(hub, task_id, now)
        # The feed (docs/FEEDS.md) commits with the CDR. No phone, ASR text or transcript: those stay behind
        # the dialer's own PII-checked routes.
        result = {"task_id": task_id, "contact_id": contact_id, "attempt": attempts,
                  **{k: cdr.get(k) for k in FEED_CDR_FIELDS}, "answers": cdr.get("answers") or {},
                  "recording_sha256": store.recording_sha256(cdr.get("recording")),
                  "contact_status": status, "final": not retry, "next_at": next_at}
        changes = [("call.result", result)] + ([("task.completed", {"task_id": task_id})] if finished else [])
        store.append_feed(db, [{"at": iso(utc()), "type": t, "org": row["org"],
                                "data": json.dumps(d, ensure_ascii=False, default=str)} for t, d in changes])
    return {"task_id": task_id, "final": not retry, "status": status, "task_completed": finished}


def maybe_complete(hub: Hub, task_id: int, now: datetime) -> bool:
    """Complete the task when nothing is left to call; its `task.completed` webhook (the report) is queued
    in the same transaction."""
    with hub.store.tx() as db:
        done = store.complete_task(db, task_id, iso(now))
        if done and (target := _webhook(db, task_id)) is not None:
            webhooks.enqueue(db, "task.completed", {"event": "task.completed", **report(hub, task_id)}, target,
                             ref=f"dialer.task:{task_id}")
        return done


def fail_contact(hub: Hub, contact_id: int, cdr: dict[str, Any], now: datetime) -> None:
    """Last resort when finish_attempt itself failed (e.g. a stored schedule that no longer parses): keep
    the CDR and close the contact as failed with the reason, so the engine goes on with the others."""
    with hub.store.tx() as db:
        row = store.contact_for_finish(db, contact_id)
        if row is None:
            return
        _insert_cdr(db, row["task_id"], contact_id, row["attempts"], cdr)
        store.set_contact_result(db, contact_id, "failed", None, cdr["outcome"],
                                 json.dumps(cdr.get("answers") or {}, ensure_ascii=False), iso(now),
                                 cdr.get("reason"))


def renew_leases(hub: Hub, engine_id: str, contact_ids: list[int], lease_s: float) -> set[int]:
    """Renew the leases of an engine's live calls; returns the contacts it lost (released by another)."""
    with hub.store.tx() as db:
        return store.renew_leases(db, engine_id, contact_ids, lease_s)


def release_lost(hub: Hub, now: datetime, by: str) -> int:
    """Contacts whose claim lease ran out (their engine died or hung) get a CDR `engine_lost` for the lost
    attempt, which counts, and go back for one re-dial under the task's rules (finish_attempt), in the
    transaction that found them expired: two releasers never release one contact twice. Any live engine
    runs this every heartbeat; `by` names it in the log."""
    with hub.store.tx() as db:
        rows = store.expired_leases(db)
        for r in rows:
            log.warning("contact %s: lease of engine %s ran out; released by %s", r["id"], r["claimed_by"], by)
            finish_attempt(hub, r["id"], {
                "engine": r["claimed_by"], "started_at": r["updated_at"], "ended_at": iso(now), "sip_status": 0,
                "outcome": "engine_lost",
                "reason": f"engine {r['claimed_by']} stopped renewing its lease (died); released by {by}"}, now)
    return len(rows)


# --- engines ---------------------------------------------------------------------------------------
ENGINE_STALE_S = 30.0  # an engine without a heartbeat for this long is not counted as live


def report_engine(hub: Hub, row: dict[str, Any]) -> None:
    """An engine's heartbeat: id, host, pid, state, started_at, capacity, calls, trunk, reg_*."""
    with hub.store.tx() as db:
        store.upsert_engine(db, row)


def claim_engine_id(hub: Hub, engine_id: str, host: str, pid: int, stale_s: float = ENGINE_STALE_S) -> None:
    """Refuse to start under an id a live engine of another process already reports (two engines with one
    id would renew each other's leases and finish each other's contacts)."""
    with hub.store.read() as db:
        row = store.get_engine(db, engine_id)
    if (row is not None and row["state"] == "running" and row["age_s"] < stale_s
            and (row["host"], row["pid"]) != (host, pid)):
        raise DialerError("engine_id", f"engine {engine_id!r} is already running on {row['host']} "
                                       f"(pid {row['pid']}); give each engine its own --engine-id", 409)


def engines(hub: Hub, stale_s: float = ENGINE_STALE_S) -> list[dict[str, Any]]:
    """Every engine that reported, with `live` (running and a heartbeat within `stale_s`)."""
    with hub.store.read() as db:
        rows = store.list_engines(db)
    return [{**r, "age_s": round(float(r["age_s"]), 1),
             "live": r["state"] == "running" and float(r["age_s"]) < stale_s} for r in rows]


def engine_capacity(hub: Hub, stale_s: float = ENGINE_STALE_S) -> int:
    """Calls the live engines can hold together (0: no engine is running). A task's max_concurrent above
    this is capped by the engines, not by the task (the status can say "engine capacity")."""
    with hub.store.read() as db:
        return store.engine_capacity(db, stale_s)


def live_engines(hub: Hub, stale_s: float = ENGINE_STALE_S) -> tuple[int, int]:
    """(live engines, calls they hold together)."""
    with hub.store.read() as db:
        return store.live_engines(db, stale_s)


def calls_wanted(hub: Hub) -> dict[int, int]:
    """Calls each running task could have up at once now: its max_concurrent, or fewer when fewer contacts
    are left (what an engine supervisor sizes its workers by). A task whose schedule no longer parses is
    left out (running_tasks logs it)."""
    with hub.store.read() as db:
        rows = store.calls_wanted(db)
    out: dict[int, int] = {}
    for r in rows:
        try:
            out[r["id"]] = min(Schedule.model_validate_json(r["schedule"]).max_concurrent, int(r["left"]))
        except ValueError:
            continue
    return out


def capacity_warning(hub: Hub, sched: Schedule) -> str | None:
    """A task's max_concurrent the engines running now cannot hold (None: they can, or none is running)."""
    _n, cap = live_engines(hub)
    if 0 < cap < sched.max_concurrent:
        return (f"schedule.max_concurrent: {sched.max_concurrent} calls at once, but the engines running now "
                f"hold {cap} together (4 per engine process): it dials at most {cap} until more engines run "
                f"(`citybrain hub dialer run --workers N` or `--max-workers N`)")
    return None


# --- do-not-call ------------------------------------------------------------------------------------
def add_dnc(hub: Hub, phone: str, org: str, actor: str, reason: str = "") -> None:
    from central.iam.audit import record

    try:
        p = normalize_phone(phone)
    except ValueError as e:
        raise DialerError("phone", str(e)) from e
    with hub.store.tx() as db:
        store.upsert_dnc(db, {"phone_idx": _cipher(hub).blind_index("phone", p), "org": org,
                              "phone_masked": mask_phone(p), "reason": reason, "added_at": iso(utc())})
        record(db, actor=actor, action="dialer.dnc.add", target=mask_phone(p), org=org, detail={"reason": reason})


def _covering(org: str) -> list[str]:
    """The orgs whose do-not-call entries cover `org`: itself and every org above it."""
    parts = org.strip("/").split("/")
    cands = {org, "/"} | {p for i in range(1, len(parts)) for p in ("/" + "/".join(parts[:i]),
                                                                    "/" + "/".join(parts[:i]) + "/")}
    return sorted(o for o in cands if _under(org, o))


def _dnc_out(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The store keeps only the masked number and the keyed index of a do-not-call entry, never the number
    # itself: answers are masked for every caller (a search's caller knows the number they typed).
    return [{"phone_masked": r["phone_masked"] or "", "org": r["org"], "reason": r["reason"] or "",
             "added_at": r["added_at"]} for r in rows]


def list_dnc(hub: Hub, scopes: list[str], org: str | None = None, phone: str | None = None,
             limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """A page of the do-not-call entries the caller's scopes see (their subtrees, and the entries of the
    orgs above them, which cover their tasks too), newest first; `phone` finds one number (normalised,
    exact)."""
    idx = None
    if phone is not None:
        try:
            idx = _cipher(hub).blind_index("phone", normalize_phone(phone))
        except ValueError as e:
            raise DialerError("phone", str(e), 422) from e
    ancestors = sorted({a for sc in scopes for a in _covering(sc)})
    with hub.store.read() as db:
        total, rows = store.dnc_page(db, scopes, ancestors, org, idx, limit, offset)
    return {"total": total, "items": _dnc_out(rows)}


def remove_dnc(hub: Hub, phone: str, org: str, actor: str, reason: str = "") -> dict[str, Any]:
    """Take a number off one org's do-not-call list (audited with the masked number and the reason).
    Contacts already closed as `dnc` stay closed; numbers imported later are called again."""
    from central.iam.audit import record

    try:
        p = normalize_phone(phone)
    except ValueError as e:
        raise DialerError("phone", str(e), 422) from e
    with hub.store.tx() as db:
        row = store.delete_dnc(db, _cipher(hub).blind_index("phone", p), org)
        if row is None:
            raise DialerError("phone", f"{mask_phone(p)} is not on the do-not-call list of {org}", 404)
        record(db, actor=actor, action="dialer.dnc.remove", target=mask_phone(p), org=org,
               detail={"reason": reason, "added_at": row["added_at"], "added_reason": row["reason"]})
    return _dnc_out([row])[0]


# --- task status reason and live changes -------------------------------------------------------------
def engine_capacity_of(db: Db) -> int:
    """Calls the live engines (state running, heartbeat within ENGINE_STALE_S) can hold at once."""
    return store.engine_capacity(db, ENGINE_STALE_S)


def _local(at: datetime, sched: Schedule, now: datetime) -> str:
    local = at.astimezone(ZoneInfo(sched.timezone))
    same_day = local.date() == now.astimezone(ZoneInfo(sched.timezone)).date()
    return f"{local:%H:%M}" + ("" if same_day else f" on {local:%a %Y-%m-%d}") + f" ({sched.timezone})"


def state_reason(hub: Hub, task_id: int, now: datetime | None = None) -> dict[str, Any]:
    """Why a task is or is not dialling now: {code, message, until (ISO UTC or None)}. Codes: draft,
    paused, cancelled, completed; for a running task no_contacts (nothing left, it completes), calling
    (the last calls are up), all_dnc, outside_window (until the next opening), waiting_retry (until the
    next retry can be dialled), no_engine, capacity_limited (max_concurrent above what the engines hold),
    at_max_concurrent, dialling."""
    now = utc(now)
    with hub.store.read() as db:
        row = store.get_task(db, task_id)
        if row is None:
            raise DialerError("task_id", f"no task {task_id}", 404)
        status = row["status"]
        if status != "running":
            return {"code": status, "message": {
                "draft": "not started", "paused": "paused: no new calls until it is resumed",
                "cancelled": "cancelled", "completed": "completed: every contact has its outcome",
            }.get(status, status), "until": None}
        sched = Schedule.model_validate_json(row["schedule"])
        n = store.dialling_counts(db, task_id, iso(now), _covering(row["org"]))
        capacity = engine_capacity_of(db)

    def out(code: str, message: str, until: datetime | None = None) -> dict[str, Any]:
        return {"code": code, "message": message, "until": iso(until) if until else None}

    if n["pending"] == 0:
        return (out("calling", f"{n['calling']} call(s) up, nobody left to dial") if n["calling"]
                else out("no_contacts", "nobody left to call: the task completes"))
    if n["callable"] == 0:
        return out("all_dnc", f"all {n['pending']} remaining contact(s) are on the do-not-call list")
    if not sched.open_at(now):
        at = sched.next_open(now)
        return out("outside_window", "outside the calling window" + (f" until {_local(at, sched, now)}" if at
                                                                     else ""), at)
    if n["due"] == 0:
        at = sched.next_open(max(now, datetime.fromisoformat(n["next_retry"])))
        return out("waiting_retry", "waiting for retries" + (f": next at {_local(at, sched, now)}" if at else ""),
                   at)
    if capacity is not None and capacity <= 0:
        return out("no_engine", "no dialler engine is running (none has reported)")
    if capacity is not None and capacity < sched.max_concurrent:
        return out("capacity_limited", f"dialling, at most {capacity} call(s) at once: max_concurrent "
                                       f"{sched.max_concurrent} is above the engines' capacity")
    if n["calling"] >= sched.max_concurrent:
        return out("at_max_concurrent", f"dialling: {n['calling']} call(s) up, max_concurrent reached")
    return out("dialling", f"dialling: {n['due']} contact(s) due, {n['calling']} call(s) up")


def patch_task(hub: Hub, task_id: int, patch: TaskPatch, actor: str) -> None:
    """Change a draft, running or paused task's windows and pacing: the given schedule fields replace the
    task's and the result is validated like a new task's. The engines read the schedule at every tick, so
    the next claim already follows it. Audited with each field's old and new value."""
    from central.iam.audit import record

    changes = patch.schedule.model_dump(mode="json", exclude_none=True)
    if not changes:
        raise DialerError("schedule", "nothing to change", 422)
    with hub.store.tx() as db:
        row = store.get_task(db, task_id)
        if row is None:
            raise DialerError("task_id", f"no task {task_id}", 404)
        if row["status"] not in ("draft", "running", "paused"):
            raise DialerError("task_id", f"task is {row['status']}; its schedule cannot change", 409)
        old = json.loads(row["schedule"])
        try:
            new = Schedule.model_validate({**old, **changes})
        except ValidationError as e:
            errors: list[FieldProblem] = [
                {"field": ".".join(["schedule", *map(str, x["loc"])]), "message": x["msg"]} for x in e.errors()]
            raise Invalid(f"{errors[0]['field']}: {errors[0]['message']}", errors=errors) from e
        store.update_task(db, task_id, {"schedule": new.model_dump_json()})
        record(db, actor=actor, action="dialer.task.update", target=f"task:{task_id}", org=row["org"],
               detail={"schedule": {k: {"from": old.get(k), "to": v} for k, v in changes.items()
                                    if old.get(k) != v}})


# --- results ----------------------------------------------------------------------------------------
def cdrs(hub: Hub, task_id: int) -> list[dict[str, Any]]:
    with hub.store.read() as db:
        rows = store.task_cdrs(db, task_id)
    out = []
    for d in rows:
        for k in ("answers", "transcript"):
            d[k] = json.loads(d[k]) if d[k] else None
        d["recording_sha256"] = store.recording_sha256(d["recording"])
        out.append(d)
    return out


# --- template recordings: each template key's own store of prompt WAVs (Template.recordings) -------------
PROMPT_KIND = "prompts"
PROMPT_RATE = 16000  # stored as 16-bit mono at this rate; pjmedia's conference bridge resamples to the call's
MAX_RECORDING_BYTES = 20 * 1024 * 1024
MAX_RECORDING_S = 60.0


def _stored_recordings(db: Db, key: str) -> dict[str, Any]:
    row = store.get_template(db, key, None)
    return Template.model_validate_json(row["body"]).model_dump()["recordings"] if row else {}


def normalise_wav(data: bytes) -> tuple[bytes, float]:
    """A real PCM WAV (8- or 16-bit, mono or stereo, 8-48 kHz, 0.2-60 s) as 16-bit mono PCM at PROMPT_RATE,
    with its duration; anything else is refused naming `body`. Pure Python: the hub has no numpy."""
    import array
    import wave

    if len(data) > MAX_RECORDING_BYTES:
        raise DialerError("body", f"a recording is at most {MAX_RECORDING_BYTES // 1024 // 1024} MB", 413)
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            ch, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            frames = w.readframes(n)
    except (wave.Error, EOFError, ValueError) as e:
        raise DialerError("body", f"not a PCM WAV file ({e})", 422) from e
    if ch not in (1, 2) or width not in (1, 2) or not 8000 <= rate <= 48000:
        raise DialerError("body", f"need 8- or 16-bit PCM, mono or stereo, 8-48 kHz (got {ch} channel(s), "
                                  f"{8 * width}-bit, {rate} Hz)", 422)
    n = len(frames) // (ch * width)
    if not 0.2 <= n / rate <= MAX_RECORDING_S:
        raise DialerError("body", f"a recording lasts 0.2 to {MAX_RECORDING_S:g} s (got {n / rate:.2f} s)", 422)
    if width == 1:  # 8-bit WAV is unsigned
        pcm = array.array("h", ((b - 128) << 8 for b in frames[: n * ch]))
    else:
        pcm = array.array("h")
        pcm.frombytes(frames[: n * ch * 2])
        if sys.byteorder == "big":
            pcm.byteswap()
    mono = [(a + b) >> 1 for a, b in zip(pcm[0::2], pcm[1::2], strict=False)] if ch == 2 else list(pcm)
    if rate != PROMPT_RATE:  # linear interpolation: plenty for telephone-band speech
        m = max(1, round(len(mono) * PROMPT_RATE / rate))
        step = (len(mono) - 1) / max(1, m - 1)
        last = len(mono) - 1
        mono = [int(mono[i] + (mono[min(i + 1, last)] - mono[i]) * (x - i))
                for x in (k * step for k in range(m)) for i in (int(x),)]
    out = array.array("h", mono)
    if sys.byteorder == "big":
        out.byteswap()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(PROMPT_RATE)
        w.writeframes(out.tobytes())
    return buf.getvalue(), round(len(out) / PROMPT_RATE, 3)


def list_recordings(hub: Hub, key: str) -> list[dict[str, Any]]:
    tpl, _meta = get_template(hub, key)
    return [{"name": name, "language": lang, **ref.model_dump()}
            for name, langs in sorted(tpl.recordings.items()) for lang, ref in sorted(langs.items())]


def recording_bytes(hub: Hub, key: str, name: str, language: str | None) -> bytes:
    tpl, _meta = get_template(hub, key)
    from central.media import MediaMissing

    ref = tpl.recordings.get(name, {}).get(_recording_language(tpl, language))  # type: ignore[call-overload]
    if ref is None:
        raise DialerError("name", f"template {key!r} has no {language} recording {name!r}", 404)
    try:
        return media(hub).get(ref.key, ref.sha256)
    except MediaMissing as e:
        raise DialerError("name", f"recording {name!r}: its file is missing or damaged", 410) from e


def _recording_language(tpl: Template, language: str | None) -> str:
    lang = language or tpl.language
    if lang not in ("zh", "en"):
        raise DialerError("language", f"unknown language {lang!r} (zh | en)", 422)
    return lang


def put_recording(hub: Hub, key: str, name: str, language: str | None, data: bytes, org: str,
                  actor: str) -> dict[str, Any]:
    """Store a recording in template `key`'s store (a new template version: a task keeps the recordings of
    the version it was created on). The WAV is checked and converted first; the file is durable before the
    version that names it commits."""
    import re as _re

    from central.dialer.templates import RECORDING_RE
    from central.iam.audit import record

    if not _re.fullmatch(RECORDING_RE, name):
        raise DialerError("name", "a recording name is a-z, 0-9, _ and - (at most 63)", 422)
    tpl, meta = get_template(hub, key)
    lang = _recording_language(tpl, language)
    wav, duration = normalise_wav(data)
    ref = media(hub).put(PROMPT_KIND, wav, "wav")
    entry = {"key": ref.key, "sha256": ref.sha256, "duration_s": duration, "rate": PROMPT_RATE,
             "uploaded_at": iso(utc()), "uploaded_by": actor}
    with hub.store.tx() as db:
        recs = _stored_recordings(db, key)
        recs.setdefault(name, {})[lang] = entry
        saved = save_template(hub, tpl, org, actor, based_on=meta["based_on"], recordings=recs)
        record(db, actor=actor, action="dialer.template.recording.put", target=f"{key}@{saved.version}", org=org,
               detail={"name": name, "language": lang, "sha256": ref.sha256, "duration_s": duration})
    return {"template_key": key, "version": saved.version, "name": name, "language": lang, **entry}


def delete_recording(hub: Hub, key: str, name: str, language: str | None, org: str, actor: str) -> int:
    """Drop a recording from the key's store (a new version); refused (409) while a node needs it. The file
    stays: older versions and their tasks still play it."""
    from central.iam.audit import record

    tpl, meta = get_template(hub, key)
    lang = _recording_language(tpl, language)
    with hub.store.tx() as db:
        recs = _stored_recordings(db, key)
        if lang not in recs.get(name, {}):
            raise DialerError("name", f"template {key!r} has no {lang} recording {name!r}", 404)
        del recs[name][lang]
        if not recs[name]:
            del recs[name]
        try:
            saved = save_template(hub, tpl, org, actor, based_on=meta["based_on"], recordings=recs)
        except DialerError as e:
            raise DialerError(e.field or "name", f"still used: {e}", 409) from e
        record(db, actor=actor, action="dialer.template.recording.delete", target=f"{key}@{saved.version}",
               org=org, detail={"name": name, "language": lang})
    return saved.version


# --- call recordings (files in the hub's media store; the CDR holds the key, which names the SHA-256) ------
def media(hub: Hub) -> MediaStore:
    """The hub's one MediaStore (central.media.media_of: settings.media_dir, default data_dir/media)."""
    from central.media import media_of

    return media_of(hub)


def store_recording(hub: Hub, path: Path, at: datetime) -> str | None:
    """Move a finished call's WAV from the engine's work_dir into the media store; returns its key (None
    when the file is gone: the CDR then has no recording rather than a dangling one)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        log.warning("recording %s unreadable: %s", path, e)
        return None
    key = media(hub).put(store.RECORDING_KIND, data, "wav", at=at).key
    path.unlink(missing_ok=True)
    return key


def move_legacy_recordings(hub: Hub, after_id: int = 0, limit: int = 200) -> tuple[int, int]:
    """Move recordings that older rows name by work_dir path into the media store, `limit` rows past
    `after_id` at a time; returns (last id looked at, rows moved). The row is updated before the old file
    is removed, so a crash between the two leaves a stray file, never a row without its recording. A path
    that cannot be read is left as it is (and logged)."""
    with hub.store.read() as db:
        rows = store.legacy_recordings(db, after_id, limit)
    moved = 0
    for r in rows:
        path = Path(r["recording"])
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("legacy recording of CDR %s not moved: %s", r["id"], e)
            continue
        key = media(hub).put(store.RECORDING_KIND, data, "wav", at=datetime.fromisoformat(r["started_at"])).key
        with hub.store.tx() as db:
            ok = store.set_recording(db, r["id"], r["recording"], key)
        if ok:
            moved += 1
            path.unlink(missing_ok=True)
    return (rows[-1]["id"] if rows else after_id), moved


class _LegacyMover:
    """Hub worker: moves legacy recordings once after start, then idles without querying again."""

    def __init__(self, hub: Hub) -> None:
        self.hub, self.after, self.done = hub, 0, False

    def step(self) -> bool:
        if self.done:
            return False
        last, _moved = move_legacy_recordings(self.hub, self.after)
        self.done = last == self.after
        self.after = last
        return not self.done


def report(hub: Hub, task_id: int) -> dict[str, Any]:
    task = get_task(hub, task_id)
    tpl = Template.model_validate_json(task["template"])
    with hub.store.read() as db:
        outcomes = store.outcome_counts(db, task_id)
        attempts = store.attempt_outcomes(db, task_id)
        raws = store.contact_answers(db, task_id)
    answers: dict[str, dict[str, int]] = {q: {} for q in tpl.questions()}
    for raw in raws:
        for q, a in (json.loads(raw) or {}).items():
            v = a.get("value")
            key = json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v)
            answers.setdefault(q, {})[key] = answers.setdefault(q, {}).get(key, 0) + 1
    return {"task": {k: task[k] for k in ("id", "name", "org", "template_key", "template_version", "status")},
            "progress": progress(hub, task_id), "outcomes": outcomes, "attempt_outcomes": attempts,
            "answers": answers}


def export_csv(hub: Hub, task_id: int, unmask: bool = False) -> str:
    task = get_task(hub, task_id)
    questions = Template.model_validate_json(task["template"]).questions()
    buf = io.StringIO()
    w = csvsafe.writer(buf)  # names and spoken answers are callee text: no formulas
    # `reason` last: the columns existing readers index stay where they were
    w.writerow(["row", "phone", "name", "status", "outcome", "attempts", *questions, "reason"])
    c = _cipher(hub) if unmask else None
    with hub.store.read() as db:
        rows = store.export_rows(db, task_id)
    for r in rows:
        a = json.loads(r["answers"]) if r["answers"] else {}
        w.writerow([r["row_no"], c.decrypt(r["phone_enc"]) if c else r["phone_masked"], r["name"] or "",
                    r["status"], r["outcome"] or "", r["attempts"],
                    *[("" if q not in a else a[q].get("value")) for q in questions], r["reason"] or ""])
    return buf.getvalue()


# --- webhook ------------------------------------------------------------------------------------------
# Results go through the hub's outbox (central/webhooks): queued in the transaction that stores them,
# delivered by the hub's `webhooks-deliver` worker (from any process), signed per Standard Webhooks with
# the task's secret (its UTF-8 bytes: receivers use `standardwebhooks.Webhook(secret.encode())`).
def webhook_target(hub: Hub, task_id: int) -> tuple[str, str] | None:
    with hub.store.read() as db:
        return store.webhook_target(db, task_id)


def _webhook(db: Db, task_id: int) -> webhooks.Target | None:
    got = store.webhook_target(db, task_id)
    if got is None:
        return None
    org = store.task_org(db, task_id) or "/"
    return webhooks.Target(f"dialer.task:{task_id}", org, got[0], got[1])


def metric_samples(hub: Hub, db: Db) -> list[Sample]:
    """The campaign as a work queue: contacts of running tasks per state, calls up, leases that ran out
    (an engine died holding them), and what the live engines can hold."""
    f = store.work_figures(db)
    k = {"kind": "dialer"}
    out = [Sample("queue_items", "Work items per kind and state", f["counts"].get(st, 0), {**k, "state": st})
           for st in sorted({"pending", "calling", "done", "failed", "skipped", *f["counts"]})]
    out += [Sample("dialer_calls_in_progress", "Calls up now, across every engine", f["counts"].get("calling", 0)),
            Sample("queue_expired_leases", "Items whose lease ran out while held, per kind", f["expired"], k),
            Sample("queue_oldest_expired_lease_seconds",
                   "How long ago the oldest lease still held ran out, per kind",
                   f["expired_age"], k),
            Sample("dialer_engine_capacity", "Calls the live engines can hold together",
                   store.engine_capacity(db, ENGINE_STALE_S))]
    return out


def setup(hub: Hub) -> None:
    from central.hub import LoopWorker

    hub.metrics.source("dialer", lambda db: metric_samples(hub, db))
    seed_builtins(hub)
    hub.services["dialer"] = sys.modules[__name__]
    media(hub)
    hub.add_worker(LoopWorker("dialer-recordings-move", _LegacyMover(hub).step, interval_s=3600))
