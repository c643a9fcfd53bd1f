"""Media files (event snapshots, call recordings) outside the database: the database keeps a key and a
SHA-256, the bytes live under `settings.media_dir`.

Keys are S3-style object names (`<kind>/<yyyy>/<mm>/<dd>/<sha256>.<ext>`: no leading slash, `/` only),
so the same layout can move to an S3-compatible bucket (MinIO, a government cloud's object storage) with
the keys unchanged. Content-addressed: the same bytes stored twice are one file, and a read checks the
checksum, so a file changed on disk is refused rather than served.

One MediaStore per hub (`media_of(hub)`, made and checked writable when the hub is built). A file no row
refers to any more is removed only after the transaction that dropped the last reference has committed
(`delete_after_commit`): a rolled-back purge keeps its files."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from central.hub import Hub
    from central.store import Db, Store

log = logging.getLogger("citybrain.media")

_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}/\d{4}/\d{2}/\d{2}/[0-9a-f]{64}\.[a-z0-9]{1,8}$")


class MediaError(ValueError):
    """A key that is not one of ours, a missing file, or bytes that no longer match their checksum."""


class MediaMissing(MediaError):
    """The row refers to a file that is gone or no longer matches its checksum (an API answers 410)."""


@dataclass(frozen=True)
class MediaRef:
    key: str
    sha256: str
    size: int


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory is: without this a crash may lose a file we confirmed.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def check(self) -> None:
        """Create the root and prove it takes a durable write, or raise naming `media_dir`."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".probe-")
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
        except OSError as e:
            raise MediaError(f"media_dir: {self.root} is not a writable directory ({e.strerror or e})") from None

    def key_for(self, kind: str, data: bytes, ext: str, at: datetime | None = None) -> MediaRef:
        digest = hashlib.sha256(data).hexdigest()
        day = (at or datetime.now(UTC)).astimezone(UTC)
        key = f"{kind}/{day:%Y/%m/%d}/{digest}.{ext.lower().lstrip('.')}"
        if not _KEY.match(key):
            raise MediaError(f"media: bad kind or extension in {key!r}")
        return MediaRef(key, digest, len(data))

    def put(self, kind: str, data: bytes, ext: str, at: datetime | None = None) -> MediaRef:
        """Store `data` (atomically: a reader never sees half a file; durably: fsynced, directory too)
        and return its reference."""
        ref = self.key_for(kind, data, ext, at)
        self._write({ref.key: data})
        return ref

    def put_many(self, items: Iterable[tuple[str, bytes, str, datetime | None]]) -> list[MediaRef]:
        """Several files, (kind, data, ext, at) each, with one fsync per file and one per directory: what
        the ingest path uses for a batch. Durable on return."""
        refs, todo = [], {}
        for kind, data, ext, at in items:
            ref = self.key_for(kind, data, ext, at)
            refs.append(ref)
            todo[ref.key] = data
        self._write(todo)
        return refs

    def _write(self, files: dict[str, bytes]) -> None:
        dirs: set[Path] = set()
        for key, data in files.items():
            path = self.root / key
            if path.exists():  # content-addressed: the same bytes are already there
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dirs.add(path.parent)
        for d in dirs:
            _fsync_dir(d)

    def path(self, key: str) -> Path:
        if not _KEY.match(key):  # never a path of the caller's choosing (no `..`, no absolute paths)
            raise MediaError(f"media: not a media key: {key!r}")
        return self.root / key

    def get(self, key: str, sha256: str) -> bytes:
        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise MediaMissing(f"media: {key} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise MediaMissing(f"media: {key} does not match its checksum")
        return data

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        """Remove a file no row refers to any more (the caller checks that; content addressing means
        another row may share it)."""
        self.path(key).unlink(missing_ok=True)


def jpeg_b64(b64: str | None) -> bytes | None:
    """A snapshot carried as base64 in a message, when it is a JPEG (only JPEGs are kept: they are served
    as image/jpeg); None for none, bad base64 or other bytes."""
    if not b64:
        return None
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data[:2] == b"\xff\xd8" else None


# --- one MediaStore per hub, reachable from its store (purge functions get only a Db) --------------------
_BY_STORE: weakref.WeakKeyDictionary[Store, MediaStore] = weakref.WeakKeyDictionary()
_local = threading.local()


def media_of(hub: Hub) -> MediaStore:
    """The hub's MediaStore (settings.media_dir, default data_dir/media), made and checked on first use;
    `central.retention.service.setup` makes it while the hub is built, so a bad media_dir stops the hub."""
    m = hub.services.get("media")
    if m is None:
        m = MediaStore(hub.settings.media_root)
        m.check()
        hub.services["media"] = m
        _BY_STORE[hub.store] = m
    return m


def of_store(store: Store) -> MediaStore | None:
    return _BY_STORE.get(store)


@contextmanager
def deletes_after_commit() -> Iterator[None]:
    """Around a `store.tx()`: files `delete_after_commit` names inside it are deleted once the block
    ends without an exception (the transaction committed), and kept if it raised (rolled back)."""
    outer = getattr(_local, "pending", None)
    _local.pending = pending = []
    try:
        yield
    except BaseException:
        _local.pending = outer
        raise
    _local.pending = outer
    for media, key in pending:
        try:
            media.delete(key)
        except OSError as e:
            log.warning("media: could not delete %s: %s", key, e)


def delete_after_commit(db: Db, keys: Iterable[str]) -> None:
    """Delete these files (no row refers to them any more) once `db`'s transaction has committed."""
    keys = sorted(set(keys))
    media = of_store(db.store)
    if not keys:
        return
    if media is None:  # a store without a hub (a script): the files stay, say so
        log.warning("media: %d unreferenced file(s) left (no media store attached)", len(keys))
        return
    pending = getattr(_local, "pending", None)
    if pending is not None:
        pending.extend((media, k) for k in keys)
        return

    # No deletes_after_commit() around this transaction: SQLAlchemy's commit event (it runs just before
    # the driver's COMMIT) is the nearest there is.
    def gone(_conn: Any) -> None:
        for k in keys:
            try:
                media.delete(k)
            except OSError as e:
                log.warning("media: could not delete %s: %s", k, e)

    sa.event.listen(db.sa, "commit", gone, once=True)
