"""Append-only, hash-chained audit log.

Row hash = digest(prev_hash || canonical(ts, actor, action, target, org, detail)) with SHA-256, or SM3
under the domestic-crypto profile (the algorithm is stored per row so a profile switch keeps old rows
verifiable). `seq` is deliberately outside the hash: re-ordered rows keep valid hashes but break the
links, which is what lets `verify` tell "re-ordered" from "changed". The latest (seq, hash) is also kept
in iam_meta as the head anchor, so deleting the newest rows is detected too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from protocol.signing import canonical, digest

GENESIS = "0" * 64
_ALG_OF_PROFILE = {"intl": "sha256", "gm": "sm3"}
_PROFILE_OF_ALG = {v: k for k, v in _ALG_OF_PROFILE.items()}


def set_profile(db: sqlite_utils.Database, profile: str) -> None:
    """Called by the iam service at hub start: record() has only a db handle, so the profile lives there."""
    db.conn.execute(
        "INSERT INTO iam_meta(key, value) VALUES ('crypto_profile', ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (profile,),
    )


def _profile(db: sqlite_utils.Database) -> str:
    row = db.conn.execute("SELECT value FROM iam_meta WHERE key = 'crypto_profile'").fetchone()
    return row[0] if row else "intl"


def row_hash(alg: str, prev_hash: str, ts: str, actor: str, action: str, target: str | None,
             org: str | None, detail: str) -> str:
    body = canonical({"ts": ts, "actor": actor, "action": action, "target": target, "org": org,
                      "detail": detail})
    return digest(prev_hash.encode() + body, _PROFILE_OF_ALG[alg]).hex()  # type: ignore[arg-type]


def record(db: sqlite_utils.Database, actor: str, action: str, target: str | None = None,
           org: str | None = None, detail: dict[str, Any] | None = None) -> int:
    """Append one audit row; returns its seq. Call inside the write's own transaction so the row and the
    change commit (or roll back) together; outside one, it opens its own."""
    conn = db.conn
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")  # the read of the chain head and the append must not interleave
    try:
        alg = _ALG_OF_PROFILE.get(_profile(db), "sha256")
        last = conn.execute("SELECT seq, hash FROM iam_audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev = last[1] if last else GENESIS
        seq = (last[0] if last else 0) + 1
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        det = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False, default=str)
        h = row_hash(alg, prev, ts, str(actor), action, target, org, det)
        conn.execute(
            "INSERT INTO iam_audit(seq, ts, actor, action, target, org, detail, alg, prev_hash, hash)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq, ts, str(actor), action, target, org, det, alg, prev, h),
        )
        conn.execute(
            "INSERT INTO iam_meta(key, value) VALUES ('audit_head', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (f"{seq}:{h}",),
        )
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    if own:
        conn.execute("COMMIT")
    return seq


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "problems": self.problems}


def verify(db: sqlite_utils.Database) -> VerifyResult:
    """Walk the chain in seq order and name each break: changed / deleted / re-ordered row."""
    rows = db.conn.execute(
        "SELECT seq, ts, actor, action, target, org, detail, alg, prev_hash, hash FROM iam_audit ORDER BY seq"
    ).fetchall()
    by_hash = {r[9]: r[0] for r in rows}
    problems: list[dict[str, Any]] = []
    prev_seq, prev_hash = 0, GENESIS
    for seq, ts, actor, action, target, org, detail, alg, stored_prev, stored in rows:
        if alg not in _PROFILE_OF_ALG:
            problems.append({"seq": seq, "kind": "changed", "why": f"unknown hash algorithm {alg!r}"})
        elif row_hash(alg, stored_prev, ts, actor, action, target, org, detail) != stored:
            problems.append({"seq": seq, "kind": "changed", "why": "row content does not match its hash"})
        if stored_prev != prev_hash:
            if seq != prev_seq + 1:
                problems.append({"seq": seq, "kind": "deleted",
                                 "why": f"rows {prev_seq + 1}..{seq - 1} are missing"})
            elif stored_prev in by_hash:
                problems.append({"seq": seq, "kind": "reordered",
                                 "why": f"row {seq} was chained after row {by_hash[stored_prev]}, "
                                        f"but now follows row {prev_seq}"})
            else:
                problems.append({"seq": seq, "kind": "deleted",
                                 "why": f"the row chained before row {seq} is gone"})
        elif seq != prev_seq + 1:
            problems.append({"seq": seq, "kind": "deleted", "why": f"rows {prev_seq + 1}..{seq - 1} missing"})
        prev_seq, prev_hash = seq, stored
    head = db.conn.execute("SELECT value FROM iam_meta WHERE key = 'audit_head'").fetchone()
    if head:
        head_seq, _, head_hash = head[0].partition(":")
        if int(head_seq) != prev_seq or head_hash != prev_hash:
            if int(head_seq) > prev_seq:
                problems.append({"seq": int(head_seq), "kind": "deleted",
                                 "why": f"the newest rows {prev_seq + 1}..{head_seq} are gone"})
            else:
                problems.append({"seq": prev_seq, "kind": "changed", "why": "the chain head does not match"})
    return VerifyResult(ok=not problems, rows=len(rows), problems=problems)
