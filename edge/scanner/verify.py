"""Offline verdict on one scanned code: `protocol.citycode.verify_offline` + the terminal's trust store,
the compact revoked-serial index and the single-use replay guard.

Verdict order follows verify_offline (forgery before policy): malformed -> unknown-key -> bad-signature
-> revoked -> wrong-system -> unfiled-url -> expired. A code that passes all of that is still not "valid"
when the terminal cannot know whether it was revoked (fail closed): `no-revocation-list` while no valid
list is held, `stale` when the list is older than scanner.max_list_age_s (on_stale "warn": valid, flagged
stale). Then `replayed` for a second use of a single-use code.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge.config import DeviceConfig
from edge.scanner.config import ScannerSection
from edge.scanner.replay import ReplayGuard
from edge.scanner.trust_store import TrustStore
from protocol import citycode
from protocol.messages import ScanRecord, Verdict
from protocol.trust import RevocationList

# Verdicts where the signature was checked and found good, so a serial revocation may override them.
_SIGNED_OK = {"valid", "expired", "wrong-system", "unfiled-url", "unknown-key"}


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    reason: str
    serial: str | None = None
    code_system: str | None = None
    dept: str | None = None
    kid: str | None = None
    identity_id: str | None = None
    expires_at: int | None = None
    single_use: bool = False
    stale: bool = False  # valid under on_stale "warn" with a revocation list past its maximum age

    @property
    def ok(self) -> bool:
        return self.verdict == "valid"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        if self.expires_at is not None:
            d["expires_at"] = datetime.fromtimestamp(self.expires_at, UTC).isoformat()
        return d

    def record(self, location: str | None, ts: datetime | None = None) -> ScanRecord:
        return ScanRecord(serial=self.serial, code_system=self.code_system, dept=self.dept, verdict=self.verdict,
                          reason=self.reason[:256], location=location, ts=ts or datetime.now(UTC))


def data_dir_for(cfg: DeviceConfig) -> Path:
    """Where the terminal keeps its trust lists and replay db: scanner.data_dir, else beside the outbox,
    so every device provisioned with its own outbox path gets its own store without extra config."""
    if cfg.scanner is not None and cfg.scanner.data_dir is not None:
        return cfg.scanner.data_dir
    return cfg.outbox.path.parent / "scanner"


class Verifier:
    def __init__(self, store: TrustStore, replay: ReplayGuard | None, skew_s: float = 300,
                 allowed_url_prefixes: list[str] | None = None, max_list_age_s: float = 86400,
                 on_stale: Literal["reject", "warn"] = "reject") -> None:
        self.store = store
        self.replay = replay
        self.skew_s = skew_s
        self.allowed_url_prefixes = allowed_url_prefixes
        self.max_list_age_s = max_list_age_s
        self.on_stale = on_stale

    @classmethod
    def from_config(cls, section: ScannerSection, data_dir: Path) -> Verifier:
        """`data_dir`: see `data_dir_for`."""
        d = data_dir
        store = TrustStore(section.root_key(), d)
        replay = ReplayGuard(d / "replay.sqlite", skew_s=section.clock_skew_s)
        return cls(store, replay, section.clock_skew_s, section.allowed_url_prefixes, section.max_list_age_s,
                   section.on_stale)

    def verify(self, text: str | bytes, now: float | None = None) -> Result:
        t = time.time() if now is None else now
        snap = self.store.snapshot
        if snap.trust is None:
            # No trust list ever received: nothing can be verified, but say so rather than "unknown-key".
            return Result("unknown-key", "trust: no trust list held yet (never synced)")
        verdict, reason, code = citycode.verify_offline(
            text, snap.trust, snap.revocations, t, self.skew_s, self.allowed_url_prefixes)
        if code is None:
            return Result(verdict, reason)
        tk = citycode.trusted_key(code, snap.trust)
        # The big serial list is kept out of verify_offline (it would build a 1M-entry frozenset);
        # check it here with the same precedence: after the signature, before the policy verdicts.
        if verdict in _SIGNED_OK and tk is not None and code.serial in snap.serials:
            verdict, reason = "revoked", f"serial: code {code.serial} revoked (list v{snap.revocation_version})"
        stale = False
        if verdict == "valid":
            verdict, reason, stale = self._freshness(snap.revocations, t)
        res = Result(verdict, reason, code.serial, code.code_system, tk.dept if tk else None, code.kid,
                     code.identity_id, code.expires_at, code.attribute.single_use, stale)
        if verdict == "valid" and code.attribute.single_use and self.replay is not None:
            first, seen_at = self.replay.first_use(code.kid, code.serial, code.expires_at, t)
            if not first:
                when = datetime.fromtimestamp(seen_at, UTC).isoformat(timespec="seconds")
                res = Result("replayed", f"serial: single-use code already accepted here at {when}", code.serial,
                             code.code_system, res.dept, code.kid, code.identity_id, code.expires_at, True, stale)
        return res

    def _freshness(self, rev: RevocationList | None, now: float) -> tuple[Verdict, str, bool]:
        """The verdict for a code that passed every check: valid only against a revocation list in force."""
        if rev is None:
            return "no-revocation-list", f"revocations: no valid list held ({self.store.revocations_problem})", False
        age = rev.age_s(now)
        if age <= self.max_list_age_s:
            return "valid", "ok", False
        why = f"revocations: list v{rev.version} is {age / 3600:.1f} h old (max {self.max_list_age_s / 3600:g} h)"
        if self.on_stale == "warn":
            return "valid", f"ok; stale {why}", True
        return "stale", why, False

    def close(self) -> None:
        if self.replay is not None:
            self.replay.close()
        self.store.close()
