"""Identifier arithmetic: the unified base identifier (统一基础标识) with its ISO 7064 MOD 37,36 check
character, the ID-card number (GB 11643) and unified social credit code (GB 32100) check characters,
and geohash grid cells. Pure functions, no I/O: the same checks run in routes, bulk import and the CLI.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from typing import Literal

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VAL = {c: i for i, c in enumerate(ALNUM)}

EntityType = Literal["person", "enterprise", "object", "place"]
TYPE_CODE: dict[str, str] = {"person": "P", "enterprise": "E", "object": "O", "place": "L"}
CODE_TYPE: dict[str, str] = {v: k for k, v in TYPE_CODE.items()}
SERIAL_DIGITS = 10
ID_LEN = 1 + 6 + SERIAL_DIGITS + 1
# type letter, 6-digit GB/T 2260 region, decimal serial, check char
_ID_RE = re.compile(rf"^([PEOL])([0-9]{{6}})([0-9]{{{SERIAL_DIGITS}}})([0-9A-Z])$")  # [0-9]: \d takes any Unicode digit
REGION_RE = re.compile(r"^[0-9]{6}$")


# The hybrid system is a state machine over p in 1..36: _STEP[p][ch] is the next p. A table lookup per char
# instead of two modulos, and make_id starts from the cached state after its (type, region) prefix.
_STEP: list[dict[str, int]] = [
    {ch: (((p + v) % 36 or 36) * 2) % 37 for ch, v in _VAL.items()} if p else {} for p in range(37)
]


def _run(p: int, body: str) -> int:
    step = _STEP
    for ch in body:
        p = step[p][ch]
    return p


def mod37_36_check(body: str) -> str:
    """ISO/IEC 7064 MOD 37,36 (hybrid system): one alphanumeric check char over an alphanumeric body.

    It catches every single-character substitution and every adjacent transposition, which is what
    a person retyping an id gets wrong."""
    return ALNUM[(37 - _run(36, body)) % 36]


def mod37_36_valid(value: str) -> bool:
    if len(value) < 2 or any(c not in _VAL for c in value):
        return False
    return mod37_36_check(value[:-1]) == value[-1]


@lru_cache(maxsize=1024)
def _prefix_state(prefix: str) -> int:
    return _run(36, prefix)


def make_id(etype: str, region: str, serial: int) -> str:
    prefix = TYPE_CODE[etype] + region
    digits = f"{serial:0{SERIAL_DIGITS}d}"
    return prefix + digits + ALNUM[(37 - _run(_prefix_state(prefix), digits)) % 36]


class IdError(ValueError):
    pass


def parse_id(value: str) -> tuple[str, str, int]:
    """-> (type, region, serial); raises IdError saying what is wrong (format or check character)."""
    v = value.strip().upper()
    m = _ID_RE.match(v)
    if not m:
        raise IdError(
            f"{value!r} is not a base identifier (type letter P/E/O/L, 6-digit region, "
            f"{SERIAL_DIGITS}-digit serial, check char; {ID_LEN} chars)"
        )
    if mod37_36_check(v[:-1]) != v[-1]:
        raise IdError(f"{value!r} has a bad check character (expected ISO 7064 MOD 37,36)")
    return CODE_TYPE[m.group(1)], m.group(2), int(m.group(3))


def normalize_id(value: str) -> str:
    parse_id(value)
    return value.strip().upper()


# --- GB 11643-1999 citizen ID number (公民身份号码) ---
_IDC_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_IDC_MAP = "10X98765432"
_IDC_RE = re.compile(r"^[0-9]{17}[0-9X]$")


def id_card_check(first17: str) -> str:
    return _IDC_MAP[sum(int(c) * w for c, w in zip(first17, _IDC_W, strict=True)) % 11]


def validate_id_card(value: str) -> str:
    v = value.strip().upper()
    if not _IDC_RE.match(v):
        raise ValueError("ID-card number must be 17 digits plus a digit or X")
    try:
        date(int(v[6:10]), int(v[10:12]), int(v[12:14]))
    except ValueError:
        raise ValueError("ID-card number has an impossible birth date") from None
    if id_card_check(v[:17]) != v[17]:
        raise ValueError("ID-card number has a bad check digit (GB 11643)")
    return v


# --- GB 32100-2015 unified social credit code (统一社会信用代码) ---
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # no I, O, S, V, Z
_USCC_VAL = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_W = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check(first17: str) -> str:
    s = sum(_USCC_VAL[c] * w for c, w in zip(first17, _USCC_W, strict=True))
    return USCC_ALPHABET[(31 - s % 31) % 31]


def validate_uscc(value: str) -> str:
    v = value.strip().upper()
    if len(v) != 18 or any(c not in _USCC_VAL for c in v):
        raise ValueError(f"unified social credit code must be 18 chars of {USCC_ALPHABET}")
    if uscc_check(v[:17]) != v[17]:
        raise ValueError("unified social credit code has a bad check character (GB 32100)")
    return v


# --- geohash grid cells (the spatial half of a spatio-temporal identifier) ---
GEOHASH_ALPHABET = "0123456789bcdefghjkmnpqrstuvwxyz"
GEOHASH_RE = re.compile(rf"^[{GEOHASH_ALPHABET}]{{1,12}}$")


def validate_geohash(value: str) -> str:
    v = value.strip().lower()
    if not GEOHASH_RE.match(v):
        raise ValueError(f"grid must be a geohash of 1-12 chars from {GEOHASH_ALPHABET!r}")
    return v


def geohash_encode(lat: float, lon: float, precision: int = 8) -> str:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("lat/lon out of range")
    lat_r, lon_r = [-90.0, 90.0], [-180.0, 180.0]
    bits, bit, ch, even, out = (16, 8, 4, 2, 1), 0, 0, True, []
    while len(out) < precision:
        rng, val = (lon_r, lon) if even else (lat_r, lat)
        mid = (rng[0] + rng[1]) / 2
        if val >= mid:
            ch |= bits[bit]
            rng[0] = mid
        else:
            rng[1] = mid
        even = not even
        bit += 1
        if bit == 5:
            out.append(GEOHASH_ALPHABET[ch])
            bit, ch = 0, 0
    return "".join(out)
