"""Dialer API models. The input models stay beside their code (TaskIn and Schedule in service.py, the small
request bodies in routes.py); this module holds the answers of /api/v1/dialer (issue 16: each route says
what it returns, so a generated client works)."""

from __future__ import annotations

from typing import Literal

from central.dialer.dialog import InputKind
from central.dialer.service import Schedule
from central.dialer.templates import Template
from central.schema import Out

# --- Response models ------------------------------------------------------------------------------------
# Closed sets, from service._TRANSITIONS and store.complete_task (a task) and templates.Template.language.
TaskStatus = Literal["draft", "running", "paused", "cancelled", "completed"]
Language = Literal["zh", "en"]
# A slot's value (central.dialer.expr: number/digit -> int or float, date -> ISO text, yesno/any -> text).
SlotValue = int | float | str


class TemplateSummaryOut(Out):
    """One template key in the list: its newest version's name, owner org and origin."""

    key: str
    latest_version: int
    name: str
    org: str
    language: Language
    builtin: bool
    based_on: str | None  # "<key>@<version>" it was copied from


class TemplateVersionOut(Out):
    """One stored (frozen) version of a template key."""

    version: int
    created_at: str
    created_by: str | None
    based_on: str | None


class TemplateOut(Out):
    """A template version: who stored it, its dialog graph and every version of its key."""

    org: str
    version: int
    based_on: str | None
    builtin: bool
    created_at: str
    created_by: str | None
    template: Template
    versions: list[TemplateVersionOut]


class TemplateSavedOut(Out):
    """The version a save or a YAML import stored."""

    key: str
    version: int
    org: str


class TemplateCopiedOut(TemplateSavedOut):
    """The version a copy stored, with the key it was copied from."""

    based_on: str  # the source key (the stored template's based_on also names the source version)


class TaskSummaryOut(Out):
    """A call task in the list."""

    id: int
    name: str
    org: str
    template_key: str
    template_version: int
    status: TaskStatus
    created_at: str


class TaskOut(TaskSummaryOut):
    """A call task as created: its schedule, priority, webhook URL (never the secret) and times."""

    template: None  # the frozen dialog graph is left out (GET /templates/{key}?version= shows it)
    schedule: Schedule
    priority: int
    webhook_url: str | None
    created_by: str | None
    started_at: str | None
    finished_at: str | None


class TaskCreatedOut(TaskOut):
    """A task as created, with what it will not do as its author may expect (e.g. DTMF-only calls where no
    speech model covers the template's language, prompts the voice cannot say)."""

    warnings: list[str]


class RecordingOut(Out):
    """One recording in a template's store: its name and language, the media file and its checksum."""

    name: str
    language: Language
    key: str  # central.media key (kind `prompts`): the file is 16-bit mono PCM at `rate`
    sha256: str
    duration_s: float
    rate: int
    uploaded_at: str
    uploaded_by: str | None


class RecordingSavedOut(RecordingOut):
    """A stored recording and the template version that now names it."""

    template_key: str
    version: int


class RecordingDeletedOut(Out):
    """The template version stored without the recording."""

    template_key: str
    version: int


class ProgressOut(Out):
    """Where a task stands: contacts by status and call attempts dialled/answered/completed."""

    task_id: int
    status: TaskStatus
    total: int
    pending: int
    calling: int
    dialled: int
    answered: int
    completed: int
    failed: int
    skipped: int
    finished_contacts: int
    percent: float


StateReasonCode = Literal["draft", "paused", "cancelled", "completed", "no_contacts", "calling", "all_dnc",
                          "outside_window", "waiting_retry", "no_engine", "capacity_limited",
                          "at_max_concurrent", "dialling"]


class StateReasonOut(Out):
    """Why a task is or is not dialling now (service.state_reason): `until` is when that changes, as
    ISO-8601 UTC (the next window opening, the next retry that can be dialled), the message says it in
    the task's time zone."""

    code: StateReasonCode
    message: str
    until: str | None


class TaskDetailOut(TaskOut):
    """A call task with its progress and why it is (not) dialling."""

    progress: ProgressOut
    state_reason: StateReasonOut


class DncEntryOut(Out):
    """A do-not-call entry: the number masked (the store keeps no clear copy), the org whose tasks (and
    those of its subtree) never call it, why, and when it was added."""

    phone_masked: str
    org: str
    reason: str
    added_at: str


class DncPageOut(Out):
    """A page of do-not-call entries, newest first, and how many match in all."""

    total: int
    items: list[DncEntryOut]


class ImportRowErrorOut(Out):
    """A call-list row that was not imported: its row number (1 = header), column and reason."""

    row: int
    field: str
    error: str


class ContactImportOut(Out):
    """The result of a call-list import: rows imported (do-not-call numbers among them, kept as skipped)
    and the rows refused."""

    imported: int
    dnc_skipped: int
    errors: list[ImportRowErrorOut]


class TaskStateOut(Out):
    """A task's status after a start/pause/resume/cancel."""

    task_id: int
    status: TaskStatus


class TaskRefOut(Out):
    """The task a report is about."""

    id: int
    name: str
    org: str
    template_key: str
    template_version: int
    status: TaskStatus


class ReportOut(Out):
    """A task's report: progress, contacts by outcome, attempts by outcome and, per question, answer value
    -> count (values as text; a structured value as its JSON)."""

    task: TaskRefOut
    progress: ProgressOut
    outcomes: dict[str, int]  # final outcome (template-defined, so open), or status while there is none
    attempt_outcomes: dict[str, int]
    answers: dict[str, dict[str, int]]


class CallAnswerOut(Out):
    """The answer a callee gave to one question (central.dialer.dialog): the intent matched, its value
    (the one slot, the slots, or the intent) and what was said or pressed."""

    intent: str
    value: SlotValue | dict[str, SlotValue]
    text: str
    dtmf: str
    via: InputKind


class TranscriptStepOut(Out):
    """One input the dialog received at a node."""

    node: str
    kind: InputKind
    value: str


class CdrOut(Out):
    """A call detail record (one attempt) with the contact's masked phone and name."""

    id: int
    task_id: int
    contact_id: int
    attempt: int | None
    engine: str | None
    started_at: str
    answered_at: str | None
    ended_at: str | None
    sip_status: int | None
    # busy/no_answer/failed, early_hangup/prompt_failed/audio_missing/engine_lost (issue 20), timeout/
    # cancelled/engine_stopped/lease_lost, no_input/no_match/loop or a template end node's own (completed ...)
    outcome: str
    reason: str | None = None  # the outcome's cause in words (where the callee hung up, what failed)
    end_node: str | None = None  # the dialog node the call ended at
    answers: dict[str, CallAnswerOut] | None  # question -> answer
    asr_text: str | None
    transcript: list[TranscriptStepOut] | None
    recording: str | None  # media key of the WAV (a work_dir path in rows not yet moved)
    duration_s: float | None
    phone_masked: str
    name: str | None
    recording_sha256: str | None


class EngineOut(Out):
    """A SIP engine process as it last reported itself (GET /dialer/engines)."""

    id: str
    host: str
    pid: int
    state: Literal["running", "stopped"]
    live: bool  # running, and its heartbeat is recent: its capacity counts
    started_at: str
    heartbeat_at: float  # the database clock, UNIX seconds
    age_s: float  # seconds since its last heartbeat
    capacity: int  # calls it can hold (the pjsua2 build's PJSUA_MAX_CALLS); 0 once stopped
    calls: int  # calls it had up at its last heartbeat
    trunk: str | None  # its registrar URI; None when it dials direct URIs
    reg_state: Literal["none", "registering", "registered", "failed"] | None
    reg_status: int | None  # the registrar's last SIP status (200, 401, 403 ...)
    reg_error: str | None


class EnginesOut(Out):
    engines: list[EngineOut]
    capacity: int  # calls the live engines hold together
