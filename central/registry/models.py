"""Payload models (pydantic v2). Shape checks live here; rules that need the database or the entity type
(external-key check digits, the object link rule) are in service.py so their errors name the field."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from central.registry.ids import validate_geohash
from central.schema import Out

EntityType = Literal["person", "enterprise", "object", "place"]
PHYSICAL = ("attached_to", "belongs_to", "contained_in")
BUSINESS = ("owned_by", "managed_by", "operated_by", "used_by")
Rel = Literal["attached_to", "belongs_to", "contained_in", "owned_by", "managed_by", "operated_by", "used_by"]
ORG_PATTERN = r"^(/[A-Za-z0-9_.-]{1,64}){1,12}$"
LOCAL_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# Fields an approved usage application may grant (id, type, region, org and status are always shown).
GRANTABLE = ("name", "address", "grid", "valid_from", "valid_to", "attrs", "external_key")
Grantable = Literal["name", "address", "grid", "valid_from", "valid_to", "attrs", "external_key"]
AttrValue = str | int | float | bool | None


@lru_cache(maxsize=4096)  # bulk files repeat the same few dates
def iso(dt: datetime | None) -> str | None:
    """One fixed UTC format, so validity spans compare correctly as strings in SQL."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    rel: Rel
    # a base identifier, or "@<local id>" of the registering department (an alias, e.g. a row
    # earlier in the same import file)
    target: str = Field(min_length=2, max_length=65)


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    type: EntityType
    region: str = Field(pattern=r"^[0-9]{6}$", description="GB/T 2260 region code of the issuing region")
    name: str = Field(min_length=1, max_length=200)
    address: str | None = Field(default=None, max_length=500)
    # person: ID-card number; enterprise: unified social credit code; object/place: the pushing
    # system's own key ("system:key"). Used for idempotent push and blind-index lookup.
    external_key: str | None = Field(default=None, min_length=1, max_length=128)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9]{5,20}$")
    grid: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    attrs: dict[str, AttrValue] = Field(default_factory=dict, max_length=32)
    links: list[LinkIn] = Field(default_factory=list, max_length=32)
    local_id: str | None = Field(default=None, pattern=LOCAL_ID_PATTERN)
    org: str | None = Field(default=None, pattern=ORG_PATTERN)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: str | None) -> str | None:
        return None if v is None else validate_geohash(v)


class EntityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    address: str | None = Field(default=None, max_length=500)
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9]{5,20}$")
    grid: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    attrs: dict[str, AttrValue] | None = Field(default=None, max_length=32)
    status: Literal["active", "retired"] | None = None

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: str | None) -> str | None:
        return None if v is None else validate_geohash(v)


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    src: str = Field(min_length=1, max_length=64)
    rel: Rel
    dst: str = Field(min_length=1, max_length=64)


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    org: str | None = Field(default=None, pattern=ORG_PATTERN)
    local_id: str = Field(pattern=LOCAL_ID_PATTERN)
    base_id: str = Field(min_length=1, max_length=64)


class UsageApplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    applicant_org: str | None = Field(default=None, pattern=ORG_PATTERN)
    owner_org: str = Field(pattern=ORG_PATTERN)
    purpose: str = Field(min_length=4, max_length=500)
    fields: list[Grantable] = Field(min_length=1, max_length=len(GRANTABLE))
    valid_from: datetime
    valid_to: datetime


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    reason: str | None = Field(default=None, max_length=500)


class PushIn(BaseModel):
    """Real-time automatic registration from a business system (HTTP body or MQTT payload)."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(default="push", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    org: str | None = Field(default=None, pattern=ORG_PATTERN)
    records: list[dict[str, object]] = Field(min_length=1, max_length=1000)


# ---------------------------------------------------------------- answers (response models)
# Timestamps are the fixed UTC strings of `iso`. Keys a route may leave out (fields an approved usage
# application does not grant, a name the caller may not see) default to None; those routes answer with
# `response_model_exclude_unset=True`, so an absent key stays absent rather than turning into null.

ExtKind = Literal["id_card", "uscc", "registry.source"]
EntityStatus = Literal["active", "retired"]


class EntitySummaryOut(Out):
    """An entity as a search lists it (never decrypted). Through a usage application only id, type,
    region, org, status and the granted fields are present, and `access` is "grant"."""

    id: str
    type: EntityType
    region: str
    org: str
    status: EntityStatus
    name: str | None = None
    address: str | None = None
    external_key_kind: ExtKind | None = None
    external_key: str | None = Field(default=None, description="masked for a person unless pii.read")
    grid: str | None = None
    valid_from: str | None = None
    valid_to: str | None = None
    spacetime_id: str | None = Field(default=None, description="grid/valid_from/valid_to, for places and objects")
    attrs: dict[str, AttrValue] | None = None
    access: Literal["grant"] | None = Field(default=None, description="present when read through a grant")


class EntityOut(EntitySummaryOut):
    """One entity as the caller may see it (get, register, update, lookup by external key)."""

    has_phone: bool | None = None
    created_at: str | None = None
    updated_at: str | None = None


class EntitySearchOut(Out):
    """A page of search hits."""

    items: list[EntitySummaryOut]
    count: int


class WalkItemOut(Out):
    """An entity met on a walk along physical links; `name` only where the caller may read names."""

    id: str
    type: EntityType
    depth: int
    org: str
    name: str | None = None


class WalkOut(Out):
    """Ancestors or descendants of `id`, nearest first; `truncated` when the limit was reached."""

    id: str
    depth: int
    items: list[WalkItemOut]
    truncated: bool


class LinkedItemOut(WalkItemOut):
    """An object/place linked to a person or enterprise; `via` is the relation of its nearest path."""

    via: Rel


class LinkedOut(Out):
    """What a person or enterprise is linked to (business links, then what lies under those)."""

    id: str
    depth: int
    items: list[LinkedItemOut]
    truncated: bool


class LinkOut(Out):
    """A link between two entities (created, removed, or listed)."""

    id: int
    src: str
    rel: Rel
    dst: str
    category: Literal["physical", "business"]


class EntityLinksOut(Out):
    """An entity's direct links: outgoing (its parents/owners) and incoming (its children/holdings)."""

    id: str
    outgoing: list[LinkOut]
    incoming: list[LinkOut]


class AliasOut(Out):
    """A department's local id and the base id it stands for."""

    org: str
    local_id: str
    base_id: str


class LocalIdOut(Out):
    """A local id a department gave an entity."""

    org: str
    local_id: str


class EntityAliasesOut(Out):
    """The local ids departments in the caller's scope gave `base_id`."""

    base_id: str
    aliases: list[LocalIdOut]


class RowErrorOut(Out):
    """A refused row of an import or push: its index, the failing field and why."""

    row: int
    field: str
    error: str


class RowIdOut(Out):
    """An accepted row of an import or push and its base id (`created` false: an existing one)."""

    row: int
    id: str
    created: bool


class ImportReportOut(Out):
    """What an import or push did; `ids` is left out of an import of more than 10,000 rows."""

    total: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    errors: list[RowErrorOut]
    ids: list[RowIdOut] | None = None


class FeedRecordOut(Out):
    """One change record (entity, link, alias; codes issuance); `data` is the change itself."""

    seq: int
    ts: str
    kind: str = Field(description="entity.create, entity.update, link.create, link.delete, alias.set, codes' kinds")
    entity_id: str | None
    org: str | None
    data: dict[str, Any]


class FeedPageOut(Out):
    """Change records after the cursor; `next` is the cursor to ask with next time."""

    items: list[FeedRecordOut]
    next: int


class UsageApplicationOut(Out):
    """A usage application: a department asks to read fields of another org's entities for a period."""

    id: int
    applicant: str
    applicant_org: str
    owner_org: str
    purpose: str
    fields: list[Grantable]
    valid_from: str
    valid_to: str
    status: Literal["pending", "approved", "rejected"]
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    created_at: str


class UsageApplicationListOut(Out):
    """Applications the caller filed or may decide, newest first."""

    items: list[UsageApplicationOut]
