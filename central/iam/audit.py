"""Append-only audit log, chained with a keyed hash and anchored by signed checkpoints kept elsewhere.

Row hash = HMAC(chain key, prev_hash || canonical(ts, actor, action, target, org, detail)) with SHA-256,
or SM3 under the domestic-crypto profile; the algorithm is stored per row ("hmac-sha256" / "hmac-sm3"),
so a profile switch keeps old rows verifiable. The chain key lives in the hub's keys dir
(`audit-chain.key`, 0600, made on first use), never in the database: whoever can write the database file
can drop the append-only triggers and rewrite rows, but cannot make hashes that verify.

The key alone cannot show rows cut off the end or a table emptied: `central.iam.checkpoints` publishes
signed checkpoints (head seq + hash, and a short keyed tag of every row's content) to an append-only file
and a retained MQTT topic; `verify` checks the rows against them and names what was changed, deleted,
re-ordered, re-chained or cut.

`seq` is deliberately outside the hash: re-ordered rows keep valid hashes but break the links, which is
what lets `verify` tell "re-ordered" from "changed". The latest (seq, hash) is also kept in iam_meta.

Retention (`retention.audit_days`, unset = for ever): `purge` deletes only a prefix of the chain that is
older than the cutoff and vouched for by a signed checkpoint (and still as vouched for), and appends an
`audit.purge` row first, in the same transaction, naming from/to seq and the hash of the last row purged.
That keyed row is the chain's new anchor: `verify` accepts the rows missing up to its horizon and reports
every other missing row as before; a purge record written without the key is no anchor.

Upgrade: rows written before the chain was keyed (alg "sha256" / "sm3", a plain hash chain) stay as they
are. Binding a key to such a database appends one keyed row, `audit.chain.keyed`, whose hash covers the
last plain hash (so it seals the whole plain prefix as it stood, and says whether that prefix verified);
the key file records that boundary (`keyed_from`), so a plain row from there on is a downgrade. Re-keying
the old rows instead would have meant dropping the triggers and rewriting history in a migration.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central.iam import store as iam_store
from central.observe import request_id
from central.store import dialect
from protocol.signing import Profile, b64d, b64e, canonical, digest

if TYPE_CHECKING:
    from central.store import Db

log = logging.getLogger("citybrain.iam.audit")

GENESIS = "0" * 64
KEY_FILE = "audit-chain.key"
_LEGACY_ALG = {"intl": "sha256", "gm": "sm3"}  # the unkeyed chain written before keying
_KEYED_ALG = {"intl": "hmac-sha256", "gm": "hmac-sm3"}
_PROFILE_OF_LEGACY: dict[str, Profile] = {"sha256": "intl", "sm3": "gm"}
_PROFILE_OF_KEYED: dict[str, Profile] = {"hmac-sha256": "intl", "hmac-sm3": "gm"}
_BLOCK = 64  # HMAC block size: 64 bytes for both SHA-256 and SM3
TAG_HEX = 16  # a content tag in a checkpoint: 8 bytes of keyed hash
SERIAL = "iam_audit"  # the dialect.serialize name every appender takes before reading the head

_lock = threading.Lock()
_keys: dict[str, ChainKey] = {}  # key file path -> key (a key file never changes once made)
_bound: dict[str, Chain] = {}  # database file -> the chain bound to it by a hub in this process


class AuditKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class ChainKey:
    """The secret of the chain plus the first row it keyed (rows from there on must be keyed)."""

    key: bytes
    keyed_from: int
    path: Path
    _pads: tuple[bytes, bytes] = field(default=(b"", b""), repr=False, compare=False)

    def __post_init__(self) -> None:
        k = self.key.ljust(_BLOCK, b"\0")  # RFC 2104; keys are 32 bytes, shorter than a block
        object.__setattr__(self, "_pads", (bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)))

    def mac(self, data: bytes, profile: Profile) -> bytes:
        """HMAC over the profile's hash (protocol.signing.digest), so SM3 and SHA-256 share one path."""
        inner, outer = self._pads
        return digest(outer + digest(inner + data, profile), profile)

    def tag(self, body: bytes, profile: Profile) -> str:
        """Short keyed tag of a row's content alone (no seq, no link): survives re-numbering and
        re-chaining, which is how a checkpoint later names the rows that went missing."""
        return self.mac(b"tag\0" + body, profile).hex()[:TAG_HEX]

    @classmethod
    def load(cls, path: Path) -> ChainKey:
        ps = str(path)
        with _lock:
            hit = _keys.get(ps)
        if hit is not None:
            return hit
        try:
            d = json.loads(path.read_text())
            key = cls(key=b64d(d["key"]), keyed_from=int(d["keyed_from"]), path=path)
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise AuditKeyError(f"audit chain key {path} is unreadable: {e}") from e
        if len(key.key) < 32:
            raise AuditKeyError(f"audit chain key {path} is too short")
        with _lock:
            return _keys.setdefault(ps, key)

    @classmethod
    def create(cls, path: Path, keyed_from: int) -> ChainKey:
        """Make the key file (0600, O_EXCL: two processes racing on first use agree on one key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"v": 1, "key": b64e(os.urandom(32)), "keyed_from": keyed_from,
                "created": datetime.now(UTC).isoformat(timespec="seconds")}
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls.load(path)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        return cls.load(path)


@dataclass(frozen=True)
class Chain:
    """What a hub binds to its database: the key, the profile and where its checkpoints go."""

    key: ChainKey
    profile: Profile
    keys_dir: Path
    checkpoint_file: Path | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature was already checked (see central.iam.checkpoints)."""

    seq: int
    head: str
    ts: str
    prev_seq: int = 0
    tags: str | None = None  # TAG_HEX hex per row prev_seq+1..seq, when the source carries them
    source: str = "file"
    profile: Profile = "intl"  # the hash its tags were made with

    def tag_of(self) -> dict[int, str]:
        if not self.tags:
            return {}
        return {self.prev_seq + 1 + i: self.tags[i * TAG_HEX:(i + 1) * TAG_HEX]
                for i in range(len(self.tags) // TAG_HEX)}


def _db_key(db: Db) -> str:
    """Which database `db` is, as the key hubs bind chains under (the resolved file for SQLite)."""
    path = db.store.path  # set for SQLite only
    if path is not None:
        return "" if str(path) == ":memory:" else str(path.resolve())
    return db.store.url.render_as_string(hide_password=True)


def bound_chain(db: Db) -> Chain | None:
    """The chain a hub in this process bound to this database (authoritative: from its settings)."""
    f = _db_key(db)
    with _lock:
        return _bound.get(f) if f else None


def set_profile(db: Db, profile: str) -> None:
    """Called by the iam service at hub start: record() has only a db handle, so the profile lives there."""
    iam_store.set_meta(db, "crypto_profile", profile)


def bind(db: Db, keys_dir: Path, profile: Profile, checkpoint_file: Path | None = None) -> Chain:
    """Key this database's chain (hub setup): load or make the key, note its file in iam_meta so every
    process writing here (e.g. the bulk-import writer) keys its rows too, and seal a plain prefix.
    The key's boundary is read and written in one transaction, serialised with the appenders."""
    path = keys_dir / KEY_FILE
    with db.store.tx() as d:
        dialect.serialize(d, SERIAL)
        last = iam_store.audit_head(d)
        try:
            key, made = ChainKey.load(path), False
        except FileNotFoundError:
            key, made = ChainKey.create(path, keyed_from=(last[0] if last else 0) + 1), True
        iam_store.set_meta(d, "audit_key", str(path))
        iam_store.set_meta(d, "crypto_profile", profile)
        # Only when this call made the key: a plain last row under an existing key is a downgrade for
        # verify to name, not a prefix to seal.
        if made and last is not None and last[2] not in _PROFILE_OF_KEYED:
            plain = verify_rows(fetch_rows(d), None)
            # The boundary row: its keyed hash covers the last plain hash, so the plain prefix is sealed.
            record(d, actor="system", action="audit.chain.keyed", target=f"audit:{last[0] + 1}",
                   detail={"legacy_rows": last[0], "legacy_verified": not plain,
                           "legacy_problems": [[p["seq"], p["kind"]] for p in plain[:20]],
                           "keyed_from": key.keyed_from})
    chain = Chain(key=key, profile=profile, keys_dir=keys_dir, checkpoint_file=checkpoint_file)
    f = _db_key(db)
    if f:
        with _lock:
            _bound[f] = chain
    return chain


def _chain_of(meta: dict[str, str]) -> tuple[Profile, ChainKey | None]:
    # One query, as before keying (the profile was read per row then too): the key file named in
    # iam_meta. A forged path there only makes this writer's rows fail to verify; it cannot forge any.
    profile: Profile = "gm" if meta.get("crypto_profile") == "gm" else "intl"
    path = meta.get("audit_key")
    if not path:
        return profile, None  # a store no hub ever bound: the legacy plain chain
    hit = _keys.get(path)  # hot path: no lock or Path() per row (a dict read is atomic)
    if hit is not None:
        return profile, hit
    try:
        return profile, ChainKey.load(Path(path))
    except FileNotFoundError as e:
        raise AuditKeyError(f"audit chain key {path} is missing: refusing to write an unkeyed row") from e


def row_body(ts: str, actor: str, action: str, target: str | None, org: str | None, detail: str) -> bytes:
    return canonical({"ts": ts, "actor": actor, "action": action, "target": target, "org": org,
                      "detail": detail})


def row_hash(alg: str, prev_hash: str, body: bytes, key: ChainKey | None) -> str | None:
    """The hash a row with this algorithm must carry; None when it cannot be computed (no key)."""
    data = prev_hash.encode() + body
    if alg in _PROFILE_OF_KEYED:
        return key.mac(data, _PROFILE_OF_KEYED[alg]).hex() if key is not None else None
    if alg in _PROFILE_OF_LEGACY:
        return digest(data, _PROFILE_OF_LEGACY[alg]).hex()
    return None


def profile_of_alg(alg: str) -> Profile | None:
    return _PROFILE_OF_KEYED.get(alg) or _PROFILE_OF_LEGACY.get(alg)


def record(db: Db, actor: str, action: str, target: str | None = None,
           org: str | None = None, detail: dict[str, Any] | None = None) -> int:
    """Append one audit row; returns its seq. Call inside the write's own transaction so the row and the
    change commit (or roll back) together; outside one, it opens its own. Appends are serialised (the
    read of the chain head and the append never interleave with another writer's): the chain never forks.
    Written while serving an HTTP request, the row's detail carries that request's id (central.observe)."""
    body = dict(detail or {})
    if (rid := request_id()) is not None:
        body.setdefault("request_id", rid)

    def make_row(meta: dict[str, str], last: tuple[int, str, str] | None) -> tuple[Any, ...]:
        profile, key = _chain_of(meta)
        alg = _KEYED_ALG[profile] if key is not None else _LEGACY_ALG[profile]
        prev = last[1] if last else GENESIS
        seq = (last[0] if last else 0) + 1
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        det = json.dumps(body, sort_keys=True, ensure_ascii=False, default=str)
        h = row_hash(alg, prev, row_body(ts, str(actor), action, target, org, det), key)
        return (seq, ts, str(actor), action, target, org, det, alg, prev, h)

    with db.store.tx() as d:
        dialect.serialize(d, SERIAL)
        return int(iam_store.append_chained(d, make_row)[0])


# --- verification ------------------------------------------------------------------------------------

Row = tuple[int, str, str, str, str | None, str | None, str, str, str, str]


def fetch_rows(db: Db, after: int = 0, upto: int | None = None) -> list[Row]:
    return iam_store.audit_rows(db, after, upto)  # type: ignore[return-value]


def _body(r: Row) -> bytes:
    return row_body(r[1], r[2], r[3], r[4], r[5], r[6])


def content_tag(r: Row, key: ChainKey, profile: Profile) -> str:
    return key.tag(_body(r), profile)


def verify_rows(rows: Iterable[Row], key: ChainKey | None, prev_seq: int = 0,
                prev_hash: str = GENESIS) -> list[dict[str, Any]]:
    """Check each row's hash and its link to the row before (from `prev_seq`/`prev_hash` on); names each
    break: changed / deleted / re-ordered. Used by `verify` and before a checkpoint vouches for rows."""
    rows = list(rows)
    by_hash = {r[9]: r[0] for r in rows}
    problems: list[dict[str, Any]] = []
    keyed_from = key.keyed_from if key is not None else None
    no_key: list[int] = []
    for r in rows:
        seq, alg, stored_prev, stored = r[0], r[7], r[8], r[9]
        want = row_hash(alg, stored_prev, _body(r), key)
        if profile_of_alg(alg) is None:
            problems.append({"seq": seq, "kind": "changed", "why": f"unknown hash algorithm {alg!r}"})
        elif want is None:
            no_key.append(seq)
        elif want != stored:
            why = ("its content or hash does not match its keyed hash" if alg in _PROFILE_OF_KEYED
                   else "row content does not match its hash")
            problems.append({"seq": seq, "kind": "changed", "why": why, "hash_check": True})
        elif alg in _PROFILE_OF_LEGACY and keyed_from is not None and seq >= keyed_from:
            problems.append({"seq": seq, "kind": "changed", "hash_check": True,
                             "why": f"an unkeyed hash after the chain was keyed at row {keyed_from}"
                                    " (re-chained without the key)"})
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
    if no_key:
        problems.append({"seq": no_key[0], "last": no_key[-1], "kind": "unverifiable",
                         "why": "keyed rows, but the audit chain key is not available here"})
    return problems


@dataclass
class VerifyResult:
    ok: bool
    rows: int
    problems: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None  # the latest checkpoint the rows were checked against
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "problems": self.problems, "checkpoint": self.checkpoint,
                "notes": self.notes}


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _span(kind: str, a: int, b: int, why: str) -> dict[str, Any]:
    p: dict[str, Any] = {"seq": a, "kind": kind, "why": why}
    if b != a:
        p["last"] = b
    return p


def _rows_text(a: int, b: int) -> str:
    return f"row {a}" if a == b else f"rows {a}..{b}"


def against_checkpoints(rows: list[Row], key: ChainKey | None, checkpoints: list[Checkpoint],
                        horizon: tuple[int, str] = (0, GENESIS)) -> tuple[list[dict[str, Any]], set[int]]:
    """Compare the rows with what signed checkpoints vouched for: the head (seq, hash) of the latest,
    and, where the checkpoints carry content tags, every row up to it, so that rows deleted, cut or
    re-numbered are named by the seq they had when they were vouched for. Also returns the present seqs
    whose content is as vouched for (wherever they stand now): a bad hash there means "re-chained".
    Rows up to `horizon` (seq, hash of that row: see `purge_horizon`) were purged by retention: they are
    not asked for, and a checkpoint ending there must agree with the hash the purge recorded."""
    if not checkpoints:
        return [], set()
    latest = max(checkpoints, key=lambda c: c.seq)
    h_seq, h_hash = horizon
    if h_seq and latest.seq <= h_seq:
        if latest.seq < h_seq:
            return [{"seq": latest.seq, "kind": "checkpoint",
                     "why": f"a purge record says rows up to {h_seq} were purged, but the latest checkpoint "
                            f"({latest.ts}) ends at row {latest.seq}: checkpoints are missing"}], set()
        if latest.head != h_hash:
            return [{"seq": h_seq, "kind": "changed",
                     "why": f"the purge record's hash of row {h_seq} differs from the checkpoint of {latest.ts}"}
                    ], set()
        return [], set()
    if not rows:
        if latest.seq == 0:
            return [], set()
        return [_span("emptied", 1, latest.seq, f"the audit table is empty, but the checkpoint of {latest.ts}"
                      f" vouches for {latest.seq} rows")], set()
    vouched: dict[int, tuple[Profile, str]] = {}
    for c in sorted(checkpoints, key=lambda c: c.seq):
        vouched.update((s, (c.profile, t)) for s, t in c.tag_of().items())
    tagged = [c for c in checkpoints if c.tags]
    upto = max(tagged, key=lambda c: c.seq) if tagged else None
    problems: list[dict[str, Any]] = []
    intact: set[int] = set()
    if key is not None and upto is not None and all(s in vouched for s in range(h_seq + 1, upto.seq + 1)):
        problems, intact = _diff(rows, key, upto, vouched, h_seq)
    else:
        upto = None
    if upto is None or latest.seq > upto.seq:
        problems += _check_head(rows, latest)  # e.g. the retained MQTT one, newer than the file
    return problems, intact


def _check_head(rows: list[Row], latest: Checkpoint) -> list[dict[str, Any]]:
    when = f"the {latest.source} checkpoint of {latest.ts}"
    present = {r[0]: r for r in rows}
    top = rows[-1][0]
    if top < latest.seq:
        return [_span("cut", top + 1, latest.seq, f"the newest {_rows_text(top + 1, latest.seq)} were cut: the"
                      f" head moved back from {latest.seq} ({when}) to {top}")]
    if latest.seq not in present:
        return [{"seq": latest.seq, "kind": "deleted", "why": f"the row {when} ends at is gone"}]
    if present[latest.seq][9] != latest.head:
        return [{"seq": latest.seq, "kind": "changed", "why": f"its hash differs from {when}"}]
    return []


def _diff(rows: list[Row], key: ChainKey, latest: Checkpoint, vouched: dict[int, tuple[Profile, str]],
          purged_upto: int = 0) -> tuple[list[dict[str, Any]], set[int]]:
    when = f"the checkpoint of {latest.ts}"
    problems: list[dict[str, Any]] = []
    present = {r[0]: r for r in rows}
    top = rows[-1][0]
    # Tags are compared per profile (a profile switch changes the hash new checkpoints tag with).
    tag_now: dict[int, tuple[Profile, str]] = {}
    where: dict[tuple[Profile, str], int] = {}
    for profile in sorted({p for p, _t in vouched.values()}):
        for s in sorted(present, reverse=True):
            t = (profile, content_tag(present[s], key, profile))
            where[t] = s  # the first position a content stands at now
            if s in vouched and vouched[s][0] == profile:
                tag_now[s] = t
    vouched_tags = set(vouched.values())
    intact = {s for t, s in where.items() if t in vouched_tags}
    intact |= {s for s, t in tag_now.items() if t in vouched_tags}
    gone: list[int] = []
    moved: list[tuple[int, int]] = []  # (vouched seq, seq now)
    changed: list[int] = []
    for s in range(purged_upto + 1, latest.seq + 1):
        t = vouched[s]
        if tag_now.get(s) == t:
            continue
        now = where.get(t)
        if now is not None:
            moved.append((s, now))
        elif s in present and s not in intact:
            changed.append(s)  # the row at s was replaced in place
        else:
            gone.append(s)
    gone_set = set(gone)
    last_alive = next((s for s in range(latest.seq, purged_upto, -1) if s not in gone_set), purged_upto)
    for a, b in _ranges([s for s in gone if s < last_alive]):
        problems.append(_span("deleted", a, b, f"gone, though {when} vouched for {'it' if a == b else 'them'}"))
    cut = [s for s in gone if s > last_alive]
    if cut:
        problems.append(_span("cut", cut[0], cut[-1],
                              f"the newest {_rows_text(cut[0], cut[-1])} were cut: the head moved back from "
                              f"{latest.seq} ({when}) to {top}"))
    for a, b in _ranges(changed):
        problems.append(_span("changed", a, b, f"content differs from what {when} vouched for"))
    # Moved rows in runs with one offset: "rows 8..20 now stand at 7..19" (what a deletion and
    # re-numbering leaves), or single rows for a swap.
    runs: list[list[tuple[int, int]]] = []
    for s, now in moved:
        if runs and s == runs[-1][-1][0] + 1 and now - s == runs[-1][-1][1] - runs[-1][-1][0]:
            runs[-1].append((s, now))
        else:
            runs.append([(s, now)])
    for run in runs:
        (a, na), (b, nb) = run[0], run[-1]
        problems.append(_span("reordered", a, b, f"vouched for as {_rows_text(a, b)}, now stand"
                                                 f"{'s' if a == b else ''} at {na if a == b else f'{na}..{nb}'}"))
    return problems, intact


def verify(db: Db, chain: Chain | None = None, checkpoints: list[Checkpoint] | None = None,
           checkpoint_problems: list[dict[str, Any]] | None = None, notes: list[str] | None = None) -> VerifyResult:
    """Walk the chain in seq order and name each break, then check it against the signed checkpoints.
    Without `chain`, the one a hub in this process bound to this database is used, with its checkpoint
    file (`checkpoints.verify_hub` adds the retained MQTT one); with no chain, keyed rows are reported
    as unverifiable."""
    chain = chain or bound_chain(db)
    key = chain.key if chain else None
    notes = list(notes or [])
    cp_problems = list(checkpoint_problems or [])
    if checkpoints is None and chain is not None and chain.checkpoint_file is not None:
        from central.iam.checkpoints import read_file

        checkpoints, more, file_notes = read_file(chain)
        cp_problems += more
        notes += file_notes
    rows = fetch_rows(db)
    horizon = purge_horizon(rows, key)
    if horizon[0]:
        left = sum(1 for r in rows if r[0] <= horizon[0])
        rows = [r for r in rows if r[0] > horizon[0]]
        notes.append(f"rows 1..{horizon[0]} were purged by retention (the purge is recorded in the chain)"
                     + (f"; {left} of them are still stored and were not checked" if left else ""))
    problems = verify_rows(rows, key, *horizon)
    head = iam_store.get_meta(db, "audit_head").get("audit_head")
    last_seq, last_hash = (rows[-1][0], rows[-1][9]) if rows else (0, GENESIS)
    if head:
        head_seq, _, head_hash = head.partition(":")
        if int(head_seq) != last_seq or head_hash != last_hash:
            if int(head_seq) > last_seq:
                problems.append({"seq": int(head_seq), "kind": "deleted",
                                 "why": f"the newest rows {last_seq + 1}..{head_seq} are gone"})
            else:
                problems.append({"seq": last_seq, "kind": "changed", "why": "the chain head does not match"})
    elif rows:
        problems.append({"seq": last_seq, "kind": "changed", "why": "the head marker in iam_meta is missing"})
    vouched, intact = against_checkpoints(rows, key, checkpoints or [], horizon)
    # A row whose content is as vouched for but whose hash fails was re-chained, not edited.
    problems = [{"seq": p["seq"], "kind": "rechained",
                 "why": "(numbered as stored now) content as vouched for, but the hash was rewritten"
                        " without the chain key"}
                if p["kind"] == "changed" and p.get("hash_check") and p["seq"] in intact else p
                for p in problems]
    problems = _compact(problems + vouched + cp_problems)
    latest = max(checkpoints, key=lambda c: c.seq) if checkpoints else None
    if latest is None and rows:
        notes.append("no checkpoint yet: rows cut from the end or an emptied table cannot be detected")
    return VerifyResult(ok=not problems, rows=len(rows), problems=problems, notes=notes,
                        checkpoint=None if latest is None else {"seq": latest.seq, "head": latest.head,
                                                                "ts": latest.ts, "source": latest.source})


def _compact(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sorted by seq, duplicates dropped, and runs of consecutive rows with the same finding merged
    (a re-chained table is one line, not one per row)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for p in sorted(problems, key=lambda p: (p["seq"], p["kind"])):
        p = {k: v for k, v in p.items() if k != "hash_check"}
        k = (p["seq"], p.get("last"), p["kind"], p["why"])
        if k in seen:
            continue
        seen.add(k)
        run = runs.get((p["kind"], p["why"]))
        if run is not None and "last" not in p and p["seq"] == run.get("last", run["seq"]) + 1:
            run["last"] = p["seq"]
            continue
        runs[(p["kind"], p["why"])] = p
        out.append(p)
    return out


# --- retention ----------------------------------------------------------------------------------------
PURGE_ACTION = "audit.purge"
PURGE_META = "audit_purge"  # iam_meta: seq of the latest purge record (a pointer; the row itself is checked)


def _purge_record(r: Row, key: ChainKey | None) -> tuple[int, str] | None:
    """(to_seq, hash of row to_seq) of a genuine purge record: keyed, its hash made with the chain key
    (nobody without the key can write one that passes), and about rows before itself."""
    if r[3] != PURGE_ACTION or r[7] not in _PROFILE_OF_KEYED or key is None:
        return None
    if row_hash(r[7], r[8], _body(r), key) != r[9]:
        return None
    try:
        d = json.loads(r[6])
        to_seq, last_hash = int(d["to_seq"]), str(d["last_hash"])
    except (ValueError, KeyError, TypeError):
        return None
    return (to_seq, last_hash) if 0 < to_seq < r[0] else None


def purge_horizon(rows: Iterable[Row], key: ChainKey | None) -> tuple[int, str]:
    """(seq, hash) of the last row retention purged, from the genuine purge records among `rows`, or
    (0, GENESIS): the chain must start right after it, linked to that hash. Rows missing beyond it are
    reported as ever; a forged record is not one (and its own hash is reported as changed)."""
    best = (0, GENESIS)
    for r in rows:
        rec = _purge_record(r, key)
        if rec is not None and rec[0] > best[0]:
            best = rec
    return best


def _anchor(db: Db, key: ChainKey) -> tuple[int, str] | None:
    """Where the stored chain must start, from the latest purge record; None when the pointer to it is
    not a genuine purge record (then nothing is purged until someone looks)."""
    at = iam_store.get_meta(db, PURGE_META).get(PURGE_META)
    if at is None:
        return 0, GENESIS
    r = iam_store.audit_row(db, int(at))
    return None if r is None else _purge_record(r, key)  # type: ignore[arg-type]


def purge(db: Db, cutoff: datetime, limit: int) -> int:
    """Retention of audit rows (`retention.audit_days`, at least 180): delete the oldest rows, at most
    `limit`, that are strictly older than `cutoff` AND vouched for by the latest signed checkpoint, after
    checking they still are exactly what it vouched for (a purge must never destroy evidence of an edit).
    The purge is itself an audit row in the same transaction (from/to seq and the hash of the last row
    purged), keyed like every row: verification accepts the missing prefix up to that horizon and no
    further. Returns the rows deleted; 0 (and an error logged) when anything does not check out."""
    from central.iam.checkpoints import read_file

    chain = bound_chain(db)
    if chain is None or chain.checkpoint_file is None:
        return 0  # no key or no checkpoints here: nothing can vouch for what would be deleted
    key = chain.key
    with db.store.tx() as d:
        dialect.serialize(d, SERIAL)
        first = iam_store.audit_first(d)
        anchor = _anchor(d, key)
        if first is None:
            return 0
        if anchor is None or first != (anchor[0] + 1, anchor[1]):
            _refuse("the stored chain does not start where the last purge record says it must")
            return 0
        cps, cp_problems, _notes = read_file(chain)
        if cp_problems:
            _refuse(f"the checkpoint file has problems ({cp_problems[0]['why']})")
            return 0
        if not cps:
            return 0
        latest = max(cps, key=lambda c: c.seq)
        before = cutoff.astimezone(UTC).isoformat(timespec="microseconds")
        upto = min(latest.seq, first[0] + limit - 1, iam_store.audit_older_prefix_end(d, first[0], before))
        if upto < first[0]:
            return 0
        rows: list[Row] = fetch_rows(d, after=first[0] - 1, upto=upto + 1)  # + the row that links to the cut
        problems = verify_rows(rows, key, anchor[0], anchor[1])
        vouched: dict[int, tuple[Profile, str]] = {}
        for c in sorted(cps, key=lambda c: c.seq):
            vouched.update((s, (c.profile, t)) for s, t in c.tag_of().items())
        for r in rows:
            if r[0] <= upto and (r[0] not in vouched or
                                 vouched[r[0]][1] != content_tag(r, key, vouched[r[0]][0])):
                problems.append({"seq": r[0], "kind": "changed", "why": "not as the checkpoints vouched for it"})
        last = next((r for r in rows if r[0] == upto), None)
        if problems or last is None:
            p = problems[0] if problems else {"seq": upto, "kind": "deleted", "why": "the row is missing"}
            _refuse(f"row {p['seq']}: {p['kind']}: {p['why']}")
            return 0
        # The record first: appended after the head, it links to the newest row, which a purge of the
        # whole checkpointed table would otherwise take with it (the next row would restart at seq 1).
        seq = record(d, actor="system", action=PURGE_ACTION, target=f"audit:{first[0]}..{upto}",
                     detail={"from_seq": first[0], "to_seq": upto, "last_hash": last[9],
                             "rows": upto - first[0] + 1, "cutoff": before, "checkpoint_seq": latest.seq})
        iam_store.set_meta(d, PURGE_META, str(seq))
        n = iam_store.delete_audit_prefix(d, upto)
    return n


def _refuse(why: str) -> None:
    log.error("audit purge refused: %s; run `citybrain hub audit verify`", why)
