"""Signed checkpoints of the audit chain, kept where the database cannot reach them.

A checkpoint says "the chain had `seq` rows ending in hash `head` at `ts`", plus a short keyed tag of the
content of every row since the previous one; it is signed with the hub's checkpoint key (profile
algorithm, `keys_dir/audit-checkpoint-<profile>.json`, 0600). Each one is appended as one JSON line to
`data_dir/audit/checkpoints.jsonl` (fsync'd; never rewritten) and published retained on
`protocol.topics.AUDIT_CHECKPOINT` (without the tags), so someone who rewrites the database can neither
cut rows off the end nor empty the table unseen: `audit verify` compares the rows with the latest
checkpoint and names what went missing.

Checkpoints are made by a hub worker (every `EVERY_S` seconds when rows were added, at once after
`EVERY_ROWS` rows, and when the hub stops) and by `citybrain hub audit checkpoint`. A checkpoint is only
made after the rows since the previous one verified (keyed hashes and links): a broken chain is never
vouched for, and a head that moved back is refused, not accepted.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from central.iam import audit
from central.iam import store as iam_store
from central.iam.audit import GENESIS, Chain, Checkpoint, VerifyResult
from protocol import signing, topics

if TYPE_CHECKING:
    from central.hub import Hub
    from central.settings import MqttSettings, Settings
    from central.store import Db

log = logging.getLogger("citybrain.iam.checkpoints")

EVERY_S = 60.0  # a checkpoint at most this long after a row was added
EVERY_ROWS = 1000  # ... or as soon as this many rows were added
CHECK_S = 5.0  # how often the worker looks at the head
MAX_TAGS = 4096  # rows per checkpoint line: a large backlog becomes several lines of bounded size
WORKER = "audit-checkpoints"
_write_lock = threading.Lock()  # flock() serializes processes; this serializes threads of one process


class CheckpointWithheld(RuntimeError):
    """The chain since the previous checkpoint does not verify (or moved back): nothing was vouched for."""


def checkpoint_file(settings: Settings) -> Path:
    return settings.data_dir / "audit" / "checkpoints.jsonl"


def signing_key(keys_dir: Path, profile: signing.Profile) -> signing.PrivateKey:
    """The hub's checkpoint-signing key for this profile, made on first use (0600, O_EXCL)."""
    path = keys_dir / f"audit-checkpoint-{profile}.json"
    try:
        return signing.PrivateKey.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        pass
    key = signing.generate_for_profile(profile)
    keys_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return signing.PrivateKey.from_dict(json.loads(path.read_text()))
    with os.fdopen(fd, "w") as f:
        json.dump(key.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    return key


def key_ring(keys_dir: Path) -> signing.KeyRing:
    """Every checkpoint key the hub has held (one per profile it ran under)."""
    ring = signing.KeyRing()
    for p in sorted(keys_dir.glob("audit-checkpoint-*.json")):
        try:
            ring.add(signing.PrivateKey.from_dict(json.loads(p.read_text())).public)
        except (ValueError, KeyError, OSError) as e:
            log.warning("checkpoint key %s unreadable: %s", p, e)
    return ring


def bind(hub: Hub) -> Chain:
    s = hub.settings
    with hub.store.read() as db:
        return audit.bind(db, s.keys_dir, s.security.crypto_profile, checkpoint_file(s))


# --- the checkpoint record --------------------------------------------------------------------------

_SIGNED = ("v", "seq", "head", "prev_seq", "ts", "profile", "tags_digest", "kid")


def _sign(key: signing.PrivateKey, profile: signing.Profile, seq: int, head: str, prev_seq: int,
          tags: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1, "seq": seq, "head": head, "prev_seq": prev_seq,
        "ts": datetime.now(UTC).isoformat(timespec="microseconds"), "profile": profile,
        "tags_digest": signing.digest(tags.encode(), profile).hex(), "kid": key.kid,
    }
    body["sig"] = signing.b64e(key.sign(signing.canonical(body)))
    return body


def parse(obj: Any, ring: signing.KeyRing, source: str) -> Checkpoint:
    """A checkpoint from a file line or an MQTT payload; ValueError says what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    try:
        body = {k: obj[k] for k in _SIGNED}
        sig = signing.b64d(str(obj["sig"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"missing or bad field {e}") from e
    if not ring.verify(str(body["kid"]), signing.canonical(body), sig):
        raise ValueError(f"signature does not verify (key {body['kid']!r}): forged or altered")
    tags = obj.get("tags")
    if tags is not None:
        if body["profile"] not in signing.PROFILE_ALG or not isinstance(tags, str):
            raise ValueError("bad tags")
        if signing.digest(tags.encode(), body["profile"]).hex() != body["tags_digest"]:
            raise ValueError("its row tags do not match its signed digest")
    seq, prev_seq = int(body["seq"]), int(body["prev_seq"])
    if tags is not None and len(tags) != (seq - prev_seq) * audit.TAG_HEX:
        raise ValueError("its row tags do not cover its rows")
    profile: signing.Profile = "gm" if body["profile"] == "gm" else "intl"
    return Checkpoint(seq=seq, head=str(body["head"]), ts=str(body["ts"]), prev_seq=prev_seq, tags=tags,
                      source=source, profile=profile)


def read_file(chain: Chain) -> tuple[list[Checkpoint], list[dict[str, Any]], list[str]]:
    """Every valid checkpoint of the file, the problems found in it (forged, altered, missing or out of
    order lines) and notes."""
    path = chain.checkpoint_file
    cps: list[Checkpoint] = []
    problems: list[dict[str, Any]] = []
    notes: list[str] = []
    if path is None or not path.exists():
        return cps, problems, notes
    ring = key_ring(chain.keys_dir)
    top = 0
    for n, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            # An interrupted append (the next one starts a fresh line). Ignoring it loses nothing: only
            # signed lines vouch for rows, and a line removed shows as a gap below.
            notes.append(f"{path}: line {n} is not JSON (an interrupted append?): ignored")
            continue
        try:
            cp = parse(obj, ring, "file")
        except ValueError as e:
            problems.append({"seq": 0, "kind": "checkpoint", "why": f"{path} line {n}: {e}"})
            continue
        if cp.prev_seq != top:
            problems.append({"seq": cp.seq, "kind": "checkpoint",
                             "why": f"{path} line {n} starts after row {cp.prev_seq}, but the line before it "
                                    f"ends at row {top}: lines are missing or out of order"})
        top = max(top, cp.seq)
        cps.append(cp)
    return cps, problems, notes


def _last_line(f: IO[bytes]) -> dict[str, Any] | None:
    """The last complete line of the file (read backwards: the file only grows)."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    pos, buf = end, b""
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        lines = buf.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            for line in reversed(lines):
                try:
                    return json.loads(line)
                except ValueError:
                    continue  # a torn line: the one before it counts
            return None
    return None


def make(db: Db, chain: Chain) -> dict[str, Any] | None:
    """Append a checkpoint for the rows added since the last one; returns it (without its tags) for
    publishing, or None when nothing was added. Raises CheckpointWithheld when those rows do not verify
    or the head moved back."""
    path = chain.checkpoint_file
    if path is None:
        raise CheckpointWithheld("no checkpoint file configured")
    key = signing_key(chain.keys_dir, chain.profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _write_lock, open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # other hub processes append here too
        last = _last_line(f)
        last_seq, last_head = (int(last["seq"]), str(last["head"])) if last else (0, GENESIS)
        head = iam_store.audit_head(db)
        if head is None:
            if last_seq:
                raise CheckpointWithheld(f"the audit table is empty, but {last_seq} rows were checkpointed")
            return None
        if head[0] < last_seq:
            raise CheckpointWithheld(f"the audit head moved back from {last_seq} to {head[0]}")
        if head[0] == last_seq:
            if head[1] != last_head:
                raise CheckpointWithheld(f"row {last_seq} no longer has the checkpointed hash")
            return None
        rows = audit.fetch_rows(db, after=last_seq, upto=head[0])
        problems = audit.verify_rows(rows, chain.key, last_seq, last_head)
        if problems:
            p = problems[0]
            raise CheckpointWithheld(f"the chain since row {last_seq} does not verify: row {p['seq']}: "
                                     f"{p['kind']}: {p['why']} ({len(problems)} problem(s))")
        out: dict[str, Any] | None = None
        size = os.fstat(f.fileno()).st_size
        if size and (f.seek(size - 1), f.read(1))[1] != b"\n":
            f.write(b"\n")  # after a torn last line: start a fresh one
        prev = last_seq
        for i in range(0, len(rows), MAX_TAGS):
            part = rows[i:i + MAX_TAGS]
            tags = "".join(audit.content_tag(r, chain.key, chain.profile) for r in part)
            out = _sign(key, chain.profile, part[-1][0], part[-1][9], prev, tags)
            f.write(json.dumps({**out, "tags": tags}, separators=(",", ":")).encode() + b"\n")
            prev = part[-1][0]
        f.flush()
        os.fsync(f.fileno())
    return out


def latest_published(chain: Chain) -> dict[str, Any] | None:
    """The last checkpoint of the file as published on MQTT (without its tags)."""
    path = chain.checkpoint_file
    if path is None or not path.exists():
        return None
    with open(path, "rb") as f:
        last = _last_line(f)
    return {k: v for k, v in last.items() if k != "tags"} if last else None


# --- the hub worker ---------------------------------------------------------------------------------

class Checkpointer:
    """Makes checkpoints for one hub: its worker's step, the hub.stopping hook and the CLI."""

    def __init__(self, hub: Hub, chain: Chain) -> None:
        self.hub = hub
        self.chain = chain
        self.done_seq = -1  # -1: not looked yet (the first pass checkpoints whatever was added)
        self.done_at = 0.0
        self.withheld = 0
        self._last_error = ""

    def _head(self) -> int:
        with self.hub.store.read() as db:
            return iam_store.audit_max_seq(db)

    def step(self) -> bool:
        head = self._head()
        if head == self.done_seq:
            return False
        if self.done_seq >= 0 and head - self.done_seq < EVERY_ROWS and time.monotonic() - self.done_at < EVERY_S:
            return False
        self.checkpoint()
        return False

    def checkpoint(self) -> dict[str, Any] | None:
        head = self._head()
        try:
            with self.hub.store.read() as db:
                cp = make(db, self.chain)
        except CheckpointWithheld as e:
            self.withheld += 1
            if str(e) != self._last_error:  # once per distinct finding, not every pass
                log.error("audit checkpoint withheld: %s; run `citybrain hub audit verify`", e)
                self._last_error = str(e)
            cp = None
        self.done_seq, self.done_at = head, time.monotonic()
        if cp is not None:
            self.publish(cp)
        return cp

    def publish(self, cp: dict[str, Any] | None = None) -> None:
        cp = cp or latest_published(self.chain)
        if cp is None:
            return
        try:
            self.hub.publish(topics.AUDIT_CHECKPOINT, json.dumps(cp, separators=(",", ":")), qos=1, retain=True)
        except Exception as e:  # the file holds it; the next checkpoint or reconnect publishes again
            log.warning("publishing audit checkpoint %s failed: %s", cp.get("seq"), e)

    def on_stopping(self) -> None:
        try:
            self.checkpoint()
        except Exception:  # the hub must stop whatever happens here
            log.exception("audit checkpoint at stop failed")


def setup(hub: Hub) -> Checkpointer:
    """Wire the audit chain into a hub: bind the key, add the checkpoint worker and its hooks."""
    from central.hub import LoopWorker

    cp = Checkpointer(hub, bind(hub))
    hub.services["audit_checkpoints"] = cp
    hub.add_worker(LoopWorker(WORKER, cp.step, interval_s=CHECK_S))
    hub.hooks.on("hub.stopping", cp.on_stopping)
    hub.hooks.on("bridge.connected", cp.publish)  # a broker may have lost the retained one
    return cp


# --- verification with every anchor -----------------------------------------------------------------

def fetch_retained(m: MqttSettings, timeout: float = 5.0) -> tuple[bytes | None, str]:
    """The retained checkpoint on the broker (None and why when there is none or it is unreachable)."""
    import paho.mqtt.client as mqtt

    got: dict[str, Any] = {}
    subscribed, done = threading.Event(), threading.Event()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            got["error"] = f"broker refused: {reason}"
            done.set()
        else:
            c.subscribe(topics.AUDIT_CHECKPOINT, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got["payload"] = msg.payload
            done.set()

    c, port = _client(m)
    c.on_connect = on_connect
    c.on_subscribe = lambda *_a: subscribed.set()
    c.on_message = on_message
    try:
        c.connect(m.host, port, keepalive=15)
    except OSError as e:
        return None, f"broker {m.host}:{port} unreachable ({e}): checked the file only"
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline and not subscribed.is_set():
            done.wait(0.05)
        if subscribed.is_set() and not done.is_set():
            done.wait(min(2.0, max(0.0, deadline - time.monotonic()) + 1.0))  # retained ones follow the SUBACK
    finally:
        c.disconnect()
        c.loop_stop()
    if "payload" in got:
        return got["payload"], f"retained checkpoint read from {m.host}:{port}"
    if "error" in got:
        return None, f"{got['error']}: checked the file only"
    if not subscribed.is_set():
        return None, f"broker {m.host}:{port} did not answer in {timeout:.0f} s: checked the file only"
    return None, f"no retained checkpoint on {m.host}:{port}"


def verify_hub(hub: Hub, mqtt: bool = True, timeout: float = 5.0) -> VerifyResult:
    """`audit verify`: the rows against the key, the checkpoint file and the retained MQTT checkpoint."""
    with hub.store.read() as db:
        chain = audit.bound_chain(db)
    chain = chain or bind(hub)
    cps, problems, notes = read_file(chain)
    if mqtt and hub.settings.mqtt.enabled:
        payload, note = fetch_retained(hub.settings.mqtt, timeout)
        notes.append(note)
        if payload is not None:
            try:
                m = parse(json.loads(payload), key_ring(chain.keys_dir), "MQTT")
            except ValueError as e:
                problems.append({"seq": 0, "kind": "checkpoint", "why": f"retained MQTT checkpoint: {e}"})
            else:
                top = max(cps, key=lambda c: c.seq) if cps else None
                if top is None or m.seq > top.seq:
                    problems.append({"seq": m.seq, "kind": "checkpoint",
                                     "why": f"the retained MQTT checkpoint (row {m.seq}) is newer than the file's "
                                            f"latest (row {top.seq if top else 0}): lines are missing from "
                                            f"{chain.checkpoint_file}"})
                elif m.seq == top.seq and m.head != top.head:
                    problems.append({"seq": m.seq, "kind": "checkpoint",
                                     "why": "the retained MQTT checkpoint and the file disagree on the head"})
                cps.append(m)
    with hub.store.read() as db:
        return audit.verify(db, chain, checkpoints=cps, checkpoint_problems=problems, notes=notes)


def make_now(hub: Hub) -> dict[str, Any] | None:
    """`audit checkpoint`: make one now and publish it (through the hub's bridge when it runs, else a
    short-lived MQTT connection). Raises CheckpointWithheld."""
    with hub.store.read() as db:
        chain = audit.bound_chain(db)
    chain = chain or bind(hub)
    with hub.store.read() as db:
        cp = make(db, chain)
    if cp is None:
        cp = latest_published(chain)
    if cp is not None and hub.settings.mqtt.enabled:
        from central.hub import LoggingPublisher

        body = json.dumps(cp, separators=(",", ":"))
        if isinstance(hub.publisher, LoggingPublisher):
            _publish_once(hub.settings.mqtt, topics.AUDIT_CHECKPOINT, body)
        else:
            hub.publish(topics.AUDIT_CHECKPOINT, body, qos=1, retain=True)
    return cp


def _client(m: MqttSettings) -> tuple[Any, int]:
    """A short-lived client of the CLI (own client id: never the bridge's persistent session)."""
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                    client_id=f"{m.client_id}-audit-{secrets.token_hex(3)}", clean_session=True)
    c.username_pw_set(m.username, m.password)
    if m.ca_file is not None and m.tls_port is not None:
        c.tls_set(ca_certs=str(m.ca_file), cert_reqs=ssl.CERT_REQUIRED)
        return c, m.tls_port
    return c, m.port


def _publish_once(m: MqttSettings, topic: str, payload: str, timeout: float = 10.0) -> None:
    c, port = _client(m)
    c.connect(m.host, port, keepalive=15)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
