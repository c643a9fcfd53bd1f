"""Media files (event snapshots, call recordings) outside the database: the database keeps a key and a
SHA-256, the bytes live under `settings.media_dir`.

Keys are S3-style object names (`<kind>/<yyyy>/<mm>/<dd>/<sha256>.<ext>`: no leading slash, `/` only),
so the same layout can move to an S3-compatible bucket (MinIO, a government cloud's object storage) with
the keys unchanged. Content-addressed: the same bytes stored twice are one file, and a read checks the
checksum, so a file changed on disk is refused rather than served."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}/\d{4}/\d{2}/\d{2}/[0-9a-f]{64}\.[a-z0-9]{1,8}$")


class MediaError(ValueError):
    """A key that is not one of ours, a missing file, or bytes that no longer match their checksum."""


@dataclass(frozen=True)
class MediaRef:
    key: str
    sha256: str
    size: int


class MediaStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, kind: str, data: bytes, ext: str, at: datetime | None = None) -> MediaRef:
        """Store `data` (atomically: a reader never sees half a file) and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        day = (at or datetime.now(UTC)).astimezone(UTC)
        key = f"{kind}/{day:%Y/%m/%d}/{digest}.{ext.lower().lstrip('.')}"
        if not _KEY.match(key):
            raise MediaError(f"media: bad kind or extension in {key!r}")
        path = self.root / key
        if not path.exists():
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
        return MediaRef(key, digest, len(data))

    def path(self, key: str) -> Path:
        if not _KEY.match(key):  # never a path of the caller's choosing (no `..`, no absolute paths)
            raise MediaError(f"media: not a media key: {key!r}")
        return self.root / key

    def get(self, key: str, sha256: str) -> bytes:
        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise MediaError(f"media: {key} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise MediaError(f"media: {key} does not match its checksum")
        return data

    def delete(self, key: str) -> None:
        """Remove a file no row refers to any more (the caller checks that; content addressing means
        another row may share it)."""
        self.path(key).unlink(missing_ok=True)
