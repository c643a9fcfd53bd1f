"""The terminal's trust store: pinned city root, last good trust list and revocation list, on disk.

A list is applied only through `protocol.trust.accept` (signed by the pinned root AND newer). A forged or
rolled-back list is refused, counted and logged, and the last good one stays in force. Applied lists are
written as the exact signed JSON received (atomic rename), and re-verified against the pinned root at
boot, so a reboot without network still verifies and a tampered file on the SD card is not trusted.

Rollback floor: the highest version (and fingerprint) of each list ever applied is kept apart from the
list, in `floor.json` (atomic rename) and mirrored in the replay db, so deleting or corrupting a list
file cannot re-open the door to an older genuine list; only the exact list the floor remembers, or a
newer one, is taken again. While no valid revocation list is held `revocations_problem` says why, and
the verifier refuses to call anything valid (fail closed).

Revoked serials live in a sorted fixed-width numpy bytes array (exact binary search, no false
positives): ~16-32 bytes per serial instead of ~100 for a Python frozenset of str.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from protocol import signing
from protocol.trust import RevocationList, TrustList, accept

log = logging.getLogger(__name__)

ListKind = Literal["trust", "revocations"]
# A revocation list with a million serials is ~20 MB of JSON; refuse anything absurd before parsing.
MAX_LIST_BYTES = 128 * 1024 * 1024


class RevocationIndex:
    """Exact membership of revoked serials with O(log n) lookup on a compact sorted array."""

    def __init__(self, serials: Iterable[str]) -> None:
        # Codes carry uppercase serials; normalise so a list written in lowercase still matches.
        encoded = [s.upper().encode("ascii", "replace") for s in serials]
        width = max((len(s) for s in encoded), default=1)
        arr = np.array(encoded, dtype=f"S{width}") if encoded else np.empty(0, dtype="S1")
        arr.sort()
        self._arr = arr
        self._width = width

    def __contains__(self, serial: str) -> bool:
        key = serial.encode("ascii", "replace")
        if len(key) > self._width or not len(self._arr):
            return False
        # numpy pads S-arrays with NULs; a shorter key compares equal to its padded form.
        i = int(np.searchsorted(self._arr, key))
        return i < len(self._arr) and self._arr[i] == key

    def __len__(self) -> int:
        return len(self._arr)

    @property
    def nbytes(self) -> int:
        return int(self._arr.nbytes)


@dataclass(frozen=True)
class Snapshot:
    """One consistent view for a verification: swapped as a whole so a scan never sees half an update."""

    trust: TrustList | None
    # The revocation list minus its serials (ids and kids are few; serials go to `serials`).
    revocations: RevocationList | None
    serials: RevocationIndex
    trust_version: int | None
    revocation_version: int | None


@dataclass
class Refusal:
    kind: ListKind
    reason: str
    version: int | None
    ts: float = field(default_factory=time.time)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a power cut must leave either the old or the new list, never half
    os.replace(tmp, path)


Floor = tuple[int, str]  # (version, fingerprint) of the highest list of a kind ever applied


class _FloorStore:
    """The rollback floor in two places: `floor.json` (atomic) and a table in the replay db. Reading takes
    the higher of the two, so losing or corrupting either one keeps the floor."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "floor.json"
        self._db = sqlite3.connect(str(data_dir / "replay.sqlite"), check_same_thread=False, isolation_level=None,
                                   timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS list_floor (kind TEXT PRIMARY KEY, version INTEGER NOT NULL,"
                         " fingerprint TEXT NOT NULL)")

    def read(self) -> dict[str, Floor]:
        out: dict[str, Floor] = {}
        try:
            data = json.loads(self.path.read_bytes())
            for kind, (version, fp) in data.items():
                out[str(kind)] = (int(version), str(fp))
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, AttributeError, OSError) as e:
            log.error("rollback floor file %s unreadable (%s); using its copy in the replay db", self.path, e)
        for kind, version, fp in self._db.execute("SELECT kind, version, fingerprint FROM list_floor"):
            if kind not in out or int(version) > out[kind][0]:
                out[kind] = (int(version), str(fp))
        return out

    def write(self, floors: dict[str, Floor]) -> None:
        _atomic_write(self.path, json.dumps({k: list(v) for k, v in floors.items()}).encode())
        self._db.executemany("INSERT OR REPLACE INTO list_floor (kind, version, fingerprint) VALUES (?, ?, ?)",
                             [(k, v, fp) for k, (v, fp) in floors.items()])

    def close(self) -> None:
        self._db.close()


class TrustStore:
    def __init__(self, root: signing.PublicKey, data_dir: Path) -> None:
        self.root = root
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._snap = Snapshot(None, None, RevocationIndex([]), None, None)
        self.refusals: deque[Refusal] = deque(maxlen=50)
        self.refused_count: dict[ListKind, int] = {"trust": 0, "revocations": 0}
        self._floor_store = _FloorStore(data_dir)
        self.floors: dict[str, Floor] = self._floor_store.read()
        # Why no revocation list is in force (None while one is): "never synced", or what was refused.
        self.revocations_problem: str | None = "never synced"
        self._load()

    # -- persistence ------------------------------------------------------------------------------
    def _path(self, kind: ListKind) -> Path:
        return self.data_dir / f"{kind}.json"

    def _load(self) -> None:
        for kind in ("trust", "revocations"):
            path = self._path(kind)  # type: ignore[arg-type]
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                if kind == "revocations" and "revocations" in self.floors:
                    self.revocations_problem = (f"stored list missing (had v{self.floors['revocations'][0]});"
                                                " waiting for the hub's")
                continue
            except OSError as e:
                raw = b""
                log.error("stored %s list unreadable: %s", kind, e)
            ok, reason = self.apply_bytes(kind, raw, persist=False)  # type: ignore[arg-type]
            if not ok:
                log.error("stored %s list refused at boot: %s", kind, reason)
                if kind == "revocations":
                    self.revocations_problem = f"stored list refused at boot ({reason[:80]}); waiting for the hub's"

    # -- applying ---------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    @property
    def trust_version(self) -> int | None:
        return self._snap.trust_version

    @property
    def revocation_version(self) -> int | None:
        return self._snap.revocation_version

    def _refuse(self, kind: ListKind, reason: str, version: int | None) -> tuple[bool, str]:
        self.refusals.append(Refusal(kind, reason, version))
        self.refused_count[kind] += 1
        log.warning("refused %s list v%s: %s", kind, version, reason)
        return False, reason

    def apply_bytes(self, kind: ListKind, raw: bytes, persist: bool = True) -> tuple[bool, str]:
        """Parse, check and apply a list as received on the wire (or read from disk)."""
        if len(raw) > MAX_LIST_BYTES:
            return self._refuse(kind, f"oversize: {len(raw)} bytes", None)
        model = TrustList if kind == "trust" else RevocationList
        try:
            new = model.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "payload"
            return self._refuse(kind, f"malformed: {loc}: {first.get('msg')}", None)
        return self._apply(kind, new, raw if persist else None)

    def apply(self, new: TrustList | RevocationList) -> tuple[bool, str]:
        kind: ListKind = "trust" if isinstance(new, TrustList) else "revocations"
        return self._apply(kind, new, new.model_dump_json().encode())

    def _apply(self, kind: ListKind, new: TrustList | RevocationList, raw: bytes | None) -> tuple[bool, str]:
        with self._lock:
            snap = self._snap
            held = snap.trust if kind == "trust" else snap.revocations
            held_version = snap.trust_version if kind == "trust" else snap.revocation_version
            # The retained message comes again on every reconnect: the same signed list is not an attack.
            if held is not None and new.version == held_version and new.signature == held.signature:
                return False, "duplicate: already held"
            ok, reason = accept(held_version, new, self.root, self.floors.get(kind))
            if not ok:
                return self._refuse(kind, reason, new.version)
            if isinstance(new, TrustList):
                snap = Snapshot(new, snap.revocations, snap.serials, new.version, snap.revocation_version)
            else:
                index = RevocationIndex(new.serials)
                # Keep the signature fields so `held.signature` still identifies the list; drop the big list.
                slim = new.model_copy(update={"serials": []})
                snap = Snapshot(snap.trust, slim, index, snap.trust_version, new.version)
            if raw is not None:
                _atomic_write(self._path(kind), raw)
            floor = self.floors.get(kind)
            if floor is None or new.version > floor[0]:
                self.floors[kind] = (new.version, new.fingerprint())
                self._floor_store.write(self.floors)
            self._snap = snap
            if kind == "revocations":
                self.revocations_problem = None
            log.info("applied %s list v%s", kind, new.version)
            return True, "ok"

    def revocation_age_s(self, now: float | None = None) -> float | None:
        """Age of the revocation list in force (by its signed issue time), None when none is held."""
        rev = self._snap.revocations
        return None if rev is None else rev.age_s(time.time() if now is None else now)

    def close(self) -> None:
        self._floor_store.close()

    def stats(self) -> dict[str, int | float | str | None]:
        snap = self._snap
        last = self.refusals[-1] if self.refusals else None
        age = self.revocation_age_s()
        return {
            "trust_version": snap.trust_version,
            "revocation_version": snap.revocation_version,
            "revocation_age_s": None if age is None else round(age, 1),
            "revocation_floor": self.floors.get("revocations", (None,))[0],
            "revocations_problem": self.revocations_problem,
            "revoked_serials": len(snap.serials),
            "revocation_index_bytes": snap.serials.nbytes,
            "trust_refused": self.refused_count["trust"],
            "revocations_refused": self.refused_count["revocations"],
            "last_refusal": f"{last.kind} v{last.version}: {last.reason}"[:120] if last else None,
        }
