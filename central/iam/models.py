"""Answer models of iam's HTTP surface (issue 16: the OpenAPI document is the contract). Times are UNIX
seconds (floats), as the store keeps them; audit timestamps are the chain's ISO text."""

from __future__ import annotations

from typing import Literal

from central.schema import Out

# --- output models ------------------------------------------------------------------------------------


class SessionOut(Out):
    """A new session: the bearer token (shown once) and what the console must do with it."""

    token: str
    must_change_password: bool
    idle_timeout_s: int


class MeBindingOut(Out):
    """One active binding of the caller, as /me lists it."""

    id: int
    role: str
    org: str


class MenuItemOut(Out):
    """A console menu entry the caller may open."""

    id: str
    title: str
    path: str


class MeOut(Out):
    """The caller: identity, effective permissions with their scopes, bindings and console menu."""

    id: str
    name: str
    kind: Literal["user", "apikey"]
    must_change_password: bool
    orgs: list[str]
    permissions: list[str]
    scopes: dict[str, list[str]]  # permission -> org paths where it is granted
    bindings: list[MeBindingOut]
    menu: list[MenuItemOut]


class OrgOut(Out):
    """An org of the tree (the root has no parent)."""

    path: str
    parent: str | None
    name: str
    created_at: float


class UserOut(Out):
    """A user account; phone and id_card masked unless unmasked with pii.read (null when not on file)."""

    id: int
    username: str
    org: str
    must_change_password: bool
    disabled: bool
    locked_until: float | None
    created_at: float
    phone: str | None
    id_card: str | None


class RoleOut(Out):
    """A role: its patterns, their expansion, and where it applies (scope null: built-in, anywhere)."""

    name: str
    description: str
    patterns: list[str]
    builtin: bool
    scope: str | None
    permissions: list[str]


class BindingOut(Out):
    """A binding of a role over an org to a user (username) or an API key (apikey_id); parent_id is the
    granter's binding it was delegated from."""

    id: int
    username: str | None
    apikey_id: int | None
    role: str
    org: str
    parent_id: int | None
    granted_by: str
    expires_at: float | None
    revoked_at: float | None
    created_at: float
    active: bool


class RevokedOut(Out):
    """The ids of the bindings a revocation ended (the binding and all delegated from it)."""

    revoked: list[int]


class ApiKeyOut(Out):
    """An API key as listed (never the key itself)."""

    id: int
    name: str
    role: str
    org: str
    created_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class ApiKeyCreatedOut(Out):
    """A new API key, with the key itself (shown only in this answer)."""

    id: int
    name: str
    role: str
    org: str
    expires_at: float | None
    key: str


class AuditRowOut(Out):
    """A row of the audit chain as stored (detail is the row's JSON text, hashed as is)."""

    seq: int
    ts: str
    actor: str
    action: str
    target: str | None
    org: str | None
    detail: str
    alg: str
    prev_hash: str
    hash: str


class AuditProblemOut(Out):
    """A break the verifier found, at row `seq` (through `last` for a run of rows)."""

    seq: int
    last: int | None = None
    kind: Literal["changed", "deleted", "reordered", "rechained", "cut", "emptied", "unverifiable", "checkpoint"]
    why: str


class CheckpointRefOut(Out):
    """The latest signed checkpoint the chain was checked against."""

    seq: int
    head: str
    ts: str
    source: Literal["file", "MQTT"]


class AuditVerifyOut(Out):
    """The verdict on the audit chain."""

    ok: bool
    rows: int
    problems: list[AuditProblemOut]
    checkpoint: CheckpointRefOut | None
    notes: list[str]
