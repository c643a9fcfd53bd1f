"""CDR retention and call recordings in the media store (both backends): old CDRs of finished tasks and
contacts go with their recordings; CDRs a running task or an unfinished contact still needs stay, and so
does a file another CDR still refers to. Recordings named by a work_dir path (older rows) are moved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from central.dialer import service as svc
from central.dialer import store as ds
from central.dialer.templates import builtin_templates
from central.hub import Hub
from central.iam.pii import pii_cipher
from central.media import MediaError

OLD = datetime(2024, 1, 10, 2, 0, tzinfo=UTC)
CUTOFF = datetime(2025, 1, 1, tzinfo=UTC)
RECENT = datetime(2025, 3, 10, 2, 0, tzinfo=UTC)


def _task(hub: Hub, status: str, contact_status: str = "done") -> tuple[int, int]:
    """A task in `status` with one contact in `contact_status`; returns (task id, contact id)."""
    tpl = next(t for t in builtin_templates() if t.key == "notice")
    c = pii_cipher(hub)
    with hub.store.tx() as db:
        tid = ds.insert_task(db, {"name": "t", "org": "/city/district-a", "template_key": tpl.key,
                                  "template_version": 1, "template": tpl.model_dump_json(),
                                  "schedule": svc.Schedule().model_dump_json(), "status": status,
                                  "created_at": svc.iso(OLD)})
        ds.insert_contacts(db, [{
            "task_id": tid, "row_no": 2, "phone_enc": c.encrypt("13800000001"),
            "phone_idx": c.blind_index("phone", "13800000001"), "phone_masked": "138****0001", "name": "n",
            "vars": "{}", "priority": 0, "status": contact_status, "outcome": None, "attempts": 1,
            "updated_at": svc.iso(OLD)}])
        cid = int(db.scalar(sa.select(ds.contacts.c.id).where(ds.contacts.c.task_id == tid)))
    return tid, cid


def _wav(hub: Hub, name: str, body: bytes) -> Path:
    """A finished recording as the engine leaves it in its work_dir."""
    p = hub.settings.data_dir / "dialer" / "recordings" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"RIFF" + body)
    return p


def _cdr(hub: Hub, task_contact: tuple[int, int], started: datetime, recording: str | None) -> int:
    tid, cid = task_contact
    with hub.store.tx() as db:
        ds.insert_cdr(db, {"task_id": tid, "contact_id": cid, "attempt": 1, "engine": "e1",
                           "started_at": svc.iso(started), "ended_at": svc.iso(started), "outcome": "completed",
                           "recording": recording, "duration_s": 1.0})
        return int(db.scalar(sa.select(sa.func.max(ds.cdrs_t.c.id))))


def _ids(hub: Hub) -> set[int]:
    with hub.store.read() as db:
        return set(db.run(sa.select(ds.cdrs_t.c.id)).scalars())


def _purge(hub: Hub, limit: int = 2000) -> int:
    with hub.store.tx() as db:
        return ds.RETENTION["cdrs"](db, CUTOFF, limit)


def test_a_recording_goes_to_the_media_store_and_is_read_back_checked(hub: Hub) -> None:
    path = _wav(hub, "task1-c1-a1.wav", b"speech" * 100)
    key = svc.store_recording(hub, path, OLD)
    assert key is not None and key.startswith("recordings/2024/01/10/") and key.endswith(".wav")
    assert not path.exists()  # out of the engine's work_dir
    t = _task(hub, "completed")
    _cdr(hub, t, OLD, key)
    (row,) = svc.cdrs(hub, t[0])
    assert row["recording"] == key and row["recording_sha256"] == key.rsplit("/", 1)[1][:64]
    media = svc.media(hub)
    assert media.get(key, row["recording_sha256"]) == b"RIFF" + b"speech" * 100
    media.path(key).write_bytes(b"RIFF altered")
    with pytest.raises(MediaError, match="checksum"):
        media.get(key, row["recording_sha256"])
    media.path(key).unlink()
    with pytest.raises(MediaError, match="missing"):
        media.get(key, row["recording_sha256"])


def test_purge_keeps_what_running_tasks_and_unfinished_contacts_need(hub: Hub) -> None:
    done = _task(hub, "completed")
    cancelled = _task(hub, "cancelled", "skipped")
    running = _task(hub, "running")
    paused = _task(hub, "paused")
    retrying = _task(hub, "cancelled", "pending")  # a retry was due when the task was cancelled
    keys = {n: svc.store_recording(hub, _wav(hub, f"task9-c{i}-a1.wav", n.encode() * 50), OLD)
            for i, n in enumerate(("done", "cancelled", "running", "paused", "retrying"))}
    gone = {_cdr(hub, done, OLD, keys["done"]), _cdr(hub, cancelled, OLD, keys["cancelled"]),
            _cdr(hub, done, OLD, None)}
    kept = {_cdr(hub, running, OLD, keys["running"]), _cdr(hub, paused, OLD, keys["paused"]),
            _cdr(hub, retrying, OLD, keys["retrying"]), _cdr(hub, done, RECENT, None)}
    assert _purge(hub, limit=2) == 2  # in batches
    assert _purge(hub) == 1
    assert _purge(hub) == 0
    assert _ids(hub) == kept and not gone & _ids(hub)
    media = svc.media(hub)
    assert not media.path(keys["done"]).exists() and not media.path(keys["cancelled"]).exists()
    assert all(media.path(keys[n]).exists() for n in ("running", "paused", "retrying"))
    with hub.store.read() as db:  # the contacts (outcomes, answers) are not CDRs: they stay
        assert ds.status_counts(db, done[0]) == {"done": 1}


def test_a_file_another_cdr_refers_to_stays(hub: Hub) -> None:
    """Content addressing: identical recordings (two silent calls of one day) are one file."""
    done, running = _task(hub, "completed"), _task(hub, "running")
    k1 = svc.store_recording(hub, _wav(hub, "task1-c1-a1.wav", b"\0" * 400), OLD)
    k2 = svc.store_recording(hub, _wav(hub, "task2-c2-a1.wav", b"\0" * 400), OLD)
    assert k1 == k2 and k1 is not None
    _cdr(hub, done, OLD, k1)
    keep = _cdr(hub, running, OLD, k2)
    assert _purge(hub) == 1
    assert _ids(hub) == {keep} and svc.media(hub).path(k1).exists()


def test_legacy_path_recordings_are_moved_and_purged(hub: Hub, tmp_path: Path) -> None:
    done = _task(hub, "completed")
    old_file = _wav(hub, "task5-c5-a1.wav", b"legacy" * 80)
    moved = _cdr(hub, done, OLD, str(old_file))
    missing = _cdr(hub, done, RECENT, str(tmp_path / "task5-c5-a2.wav"))  # its file was lost: left as is
    last, n = svc.move_legacy_recordings(hub)
    assert (last, n) == (missing, 1)
    assert svc.move_legacy_recordings(hub, last) == (last, 0)
    rows = {r["id"]: r for r in svc.cdrs(hub, done[0])}
    key, sha = rows[moved]["recording"], rows[moved]["recording_sha256"]
    assert key.startswith("recordings/2024/01/10/") and not old_file.exists()
    assert svc.media(hub).get(key, sha) == b"RIFF" + b"legacy" * 80
    assert rows[missing]["recording"] == str(tmp_path / "task5-c5-a2.wav") and rows[missing]["recording_sha256"] is None
    # A legacy row the mover never reached: the purge removes its file with it (only an engine-named file).
    stray = _wav(hub, "task5-c5-a3.wav", b"stray")
    _cdr(hub, done, OLD, str(stray))
    assert _purge(hub) == 2
    assert not stray.exists() and not svc.media(hub).path(key).exists()
    assert _ids(hub) == {missing}


def test_the_retention_worker_runs_the_cdr_purge(hub: Hub) -> None:
    done = _task(hub, "completed")
    _cdr(hub, done, datetime.now(UTC) - timedelta(days=400), None)  # cdrs_days defaults to 365
    young = _cdr(hub, done, datetime.now(UTC) - timedelta(days=300), None)
    assert hub.services["retention"].run_once()["cdrs"] == 1
    assert _ids(hub) == {young}
    assert json.loads(json.dumps(svc.progress(hub, done[0])))["dialled"] == 1  # progress counts what is left
