"""Payload models (pydantic v2). Shape checks live here; rules that need the database or the entity type
(external-key check digits, the object link rule) are in service.py so their errors name the field."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from central.registry.ids import validate_geohash

EntityType = Literal["person", "enterprise", "object", "place"]
PHYSICAL = ("attached_to", "belongs_to", "contained_in")
BUSINESS = ("owned_by", "managed_by", "operated_by", "used_by")
Rel = Literal["attached_to", "belongs_to", "contained_in", "owned_by", "managed_by", "operated_by", "used_by"]
ORG_PATTERN = r"^(/[A-Za-z0-9_.-]{1,64}){1,12}$"
LOCAL_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
# Fields an approved usage application may grant (id, type, region, org and status are always shown).
GRANTABLE = ("name", "address", "grid", "valid_from", "valid_to", "attrs", "external_key")
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


class ApplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    applicant_org: str | None = Field(default=None, pattern=ORG_PATTERN)
    owner_org: str = Field(pattern=ORG_PATTERN)
    purpose: str = Field(min_length=4, max_length=500)
    fields: list[Literal["name", "address", "grid", "valid_from", "valid_to", "attrs", "external_key"]] = Field(
        min_length=1, max_length=len(GRANTABLE)
    )
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
