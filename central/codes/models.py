"""Answer models of the city code API (/api/v1/codes): the shapes central/codes/service returns, key for key
(issue 16). Timestamps are the strings the store keeps (ISO 8601) unless a field says epoch seconds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from central.schema import Out

# ---- output models -------------------------------------------------------------------------------------

CodeType = Literal["static", "dynamic"]
EntityType = Literal["person", "enterprise", "object", "place"]
Validity = Literal["M", "H", "D", "Y", "L"]  # protocol.citycode.VALIDITY_CLASSES
Decision = Literal["pending", "approved", "rejected"]
Verdict = Literal[
    "valid", "expired", "revoked", "unknown-key", "bad-signature", "malformed", "wrong-system", "unfiled-url"
]  # protocol.citycode.Verdict
Alg = Literal["ed25519", "sm2"]  # protocol.signing.Algorithm


class DepartmentOut(Out):
    """A department that may apply for scenes and issue codes."""

    id: str
    name: str
    org: str
    webhook_url: str | None
    created_at: str


class DepartmentCreatedOut(DepartmentOut):
    """A department just registered: its first issuing key and its webhook secret (shown once)."""

    kid: str
    webhook_secret: str


class WebhookOut(Out):
    """A department's webhook after a change; the new signing secret is shown once."""

    dept_id: str
    url: str | None
    secret: str


class KeyRotationOut(Out):
    """A department key rotation: the new active key and the keys it retired."""

    dept_id: str
    kid: str
    retired: list[str]


class DutyOut(Out):
    """A row of the duty catalogue: a scene type a department's duties cover."""

    dept_id: str
    scene_type: str
    description: str


class DutiesImportedOut(Out):
    """How many duty rows an import loaded."""

    imported: int


class SegmentsOut(Out):
    """Who fills which segment of a city code."""

    guide: str
    city: list[str]
    city_assigned: list[str]
    department: list[str]


class RulesOut(Out):
    """The code rules: the configurable ones (defaults overlaid by the stored values) and the fixed format."""

    dept_data_max: int
    static_classes: list[Validity]
    dynamic_classes: list[Validity]
    default_lifetime_s: dict[Validity, int]
    segments: SegmentsOut
    validity_classes: dict[Validity, int] = Field(description="each validity class's longest lifetime, seconds")


class CheckOut(Out):
    """One approval check: whether it passes, and why."""

    ok: bool
    detail: str


class ChecksOut(Out):
    """The three approval checks of an application (frozen at the decision, live while pending)."""

    duty: CheckOut
    duplicate: CheckOut
    sharing: CheckOut


class ApplicationOut(Out):
    """An issuance application (a scene) with its department and its three checks."""

    id: int
    dept_id: str
    dept_name: str
    org: str = Field(description="the department's org path")
    applicant: str
    scene_name: str
    scene_type: str
    code_type: CodeType
    entity_type: EntityType
    purpose: str
    share_commitment: bool
    validity: Validity
    single_use: bool
    status: Decision
    checks: ChecksOut
    code_system: str | None = Field(description="assigned on approval")
    auth_id: str | None = Field(description="assigned on approval")
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    created_at: str


class AppKeyOut(Out):
    """A business subsystem's app key (its secret is never shown again)."""

    id: int
    app_id: int
    name: str
    created_by: str
    created_at: str
    revoked_at: str | None


class SceneOut(ApplicationOut):
    """An approved scene of a department, with its app keys."""

    app_keys: list[AppKeyOut]


class AppKeyCreatedOut(Out):
    """A new app key: `key` is shown this once (send it as X-App-Key)."""

    id: int
    application_id: int
    name: str
    key: str


class UrlOut(Out):
    """A filed guide URL and its audit state."""

    id: int
    dept_id: str | None
    url: str
    status: Decision
    filed_by: str
    decided_by: str | None
    reason: str | None
    created_at: str


class UrlFilingOut(UrlOut):
    """A guide URL just filed or decided, with its department's org (None: a filing of no department)."""

    org: str | None


class UrlsOut(Out):
    """The hub's own resolver (always filed) and the filed guide URLs in the caller's scope."""

    hub_resolver: str
    filed: list[UrlOut]


class IssuedCodeOut(Out):
    """A code just issued; the QR image keys are present only when an image was asked for."""

    serial: str
    text: str
    identity_id: str
    issued_at: int = Field(description="epoch seconds")
    expires_at: int = Field(description="epoch seconds")
    code_system: str
    auth_id: str
    attribute: str
    kid: str
    png_b64: str | None = Field(default=None, description="QR image, PNG base64 (image=png)")
    svg: str | None = Field(default=None, description="QR image, SVG (image=svg)")
    qr_version: str | None = Field(default=None, description="QR symbol version (with an image)")


class IssuedBatchOut(Out):
    """A batch issue: every code or none."""

    count: int
    codes: list[IssuedCodeOut]


class IssuedItemOut(Out):
    """An issued code in the listing."""

    serial: str
    app_id: int
    dept_id: str
    identity_id: str
    status: Literal["active", "revoked"]
    issued_at: int = Field(description="epoch seconds")
    expires_at: int = Field(description="epoch seconds")
    text: str
    scene_name: str
    org: str


class IssuedPageOut(Out):
    """A page of issued codes, newest first, with the total in scope."""

    total: int
    items: list[IssuedItemOut]


class CodeRecordOut(Out):
    """The issuance record of one code, with its scene and department."""

    serial: str
    app_id: int
    dept_id: str
    dept_name: str
    org: str
    scene_name: str
    scene_type: str
    code_system: str
    identity_id: str
    kid: str
    issued_at: int = Field(description="epoch seconds")
    expires_at: int = Field(description="epoch seconds")
    text: str
    status: Literal["active", "revoked"]
    revoked_at: int | None = Field(description="epoch seconds")
    scans: int
    last_scan_at: int | None = Field(description="epoch seconds")


class EntityPublicOut(Out):
    """What anyone may learn of the entity a code identifies; only `id` when no registry is installed."""

    id: str
    type: EntityType | None = None
    name: str | None = Field(default=None, description="masked for a person")
    status: Literal["active", "retired"] | None = None


class VerifyOut(Out):
    """An online verdict with its reason. The code's segments are absent for a malformed code; its scene
    only when the code is on record; `entity` only for a valid one."""

    verdict: Verdict
    reason: str
    serial: str | None = None
    code_system: str | None = None
    identity_id: str | None = None
    attribute: str | None = None
    single_use: bool | None = None
    issued_at: str | None = None
    expires_at: str | None = None
    dept_id: str | None = None
    scene: str | None = None
    scene_type: str | None = None
    application_id: int | None = None
    entity: EntityPublicOut | None = Field(default=None, description="null: not in the registry")


class RevokedCodeOut(Out):
    """One code revoked; the revocation list version that carries it."""

    revoked: Literal["serial"]
    serial: str
    revocation_version: int


class RevokedIdentityOut(Out):
    """Every code of an entity revoked (and its future ones); `codes` were active until now."""

    revoked: Literal["identity"]
    identity_id: str
    codes: int
    revocation_version: int


class RevokedKeyOut(Out):
    """A department key revoked; `replacement` is the new active key when the revoked one was active."""

    revoked: Literal["key"]
    kid: str
    replacement: str | None
    revocation_version: int


RevokeOut = Annotated[RevokedCodeOut | RevokedIdentityOut | RevokedKeyOut, Field(discriminator="revoked")]


class TrustedKeyOut(Out):
    """A department key on the trust list and the code systems it may sign ("-": none yet)."""

    schema_version: int
    kid: str
    alg: Alg
    pub: str
    dept: str
    code_systems: list[str]
    not_before: str
    not_after: str


class SignedListOut(Out):
    """What both signed lists carry (protocol.trust). Timestamps stay strings: signed material passes
    through as stored."""

    schema_version: int
    version: int
    issued_at: str
    signer_kid: str
    signature: str


class TrustListOut(SignedListOut):
    """The trust list signed by the city root: the department keys."""

    keys: list[TrustedKeyOut]


class RevocationListOut(SignedListOut):
    """The revocation list signed by the city root: revoked serials, identities and key ids."""

    serials: list[str]
    identities: list[str]
    kids: list[str]


class RootKeyOut(Out):
    """The city root public key that devices pin."""

    alg: Alg
    kid: str
    pub: str


class TrendDayOut(Out):
    """One day of a scene's trend."""

    day: str
    issued: int
    scanned: int


class SupervisionRowOut(Out):
    """A scene's supervision figures over the window."""

    dept_id: str
    application_id: int
    scene: str
    scene_type: str
    issued: int
    active: int
    revoked: int
    scanned: int
    scanned_codes: int
    verified: int
    failed: int
    duplicates: int
    zombies: int
    verdicts: dict[str, int]
    trend: list[TrendDayOut]


class SupervisionOut(Out):
    """Supervision statistics of the approved scenes in the caller's scope."""

    generated_at: str
    days: int
    zombie_days: int
    rows: list[SupervisionRowOut]
