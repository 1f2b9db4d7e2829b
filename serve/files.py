"""Originals and thumbnails, by point id only.

A client never names a path: it names a point, and the path comes from the point's
payload. Even then the file is served only while it is still the file that was
indexed: opened without following a symlink in its last component, a regular file,
with the indexed size and modification time (checked on the open descriptor, so the
file cannot be swapped between the check and the read). A path replaced by a link to
/etc/passwd after the ingest, or a file edited since, is refused until it is ingested
again.

Thumbnails are JPEGs of a few fixed sizes, made once and kept in the user cache,
named by the point, the size and the file's size and mtime, so that an edited file
gets a new one; the same facts make the ETag.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import stat
from pathlib import Path

from clipsearch.errors import ClipsearchError
from clipsearch.names import path_of

THUMBNAIL_SIZES = (128, 256, 512, 1024)


class Gone(ClipsearchError):
    """The indexed file is missing, replaced or changed since it was indexed."""


def open_indexed(payload: dict) -> int:
    """A read-only descriptor of the file a point names, after the checks above."""
    path = path_of(payload)
    if not path:
        raise Gone("the point names no file")
    try:
        fd = os.open(os.fsencode(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise Gone("the indexed file is gone or is no longer a regular file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Gone("the indexed path is no longer a regular file")
        if st.st_size != payload.get("size") or (
                "mtime_ns" in payload and st.st_mtime_ns != payload.get("mtime_ns")):
            raise Gone("the file changed since it was indexed; ingest it again")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_indexed(payload: dict) -> bytes:
    fd = open_indexed(payload)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def media_type(path: str) -> str:
    kind, _ = mimetypes.guess_type(path)
    return kind if kind and kind.startswith("image/") else "application/octet-stream"


def etag(point: str, payload: dict, size: int | None = None) -> str:
    facts = f"{point}:{size}:{payload.get('size')}:{payload.get('mtime_ns', payload.get('mtime'))}"
    return '"' + hashlib.sha256(facts.encode()).hexdigest()[:32] + '"'


class Thumbnails:
    def __init__(self, folder: Path):
        self.folder = folder

    def _file(self, point: str, size: int, payload: dict) -> Path:
        name = f"{point}-{size}-{payload.get('size')}-{payload.get('mtime_ns', 0)}.jpg"
        return self.folder / point[:2] / name

    def get(self, point: str, payload: dict, size: int, fd: int) -> bytes:
        """The JPEG of `size` (one of THUMBNAIL_SIZES). `fd`: the indexed file, opened
        and checked by open_indexed (every time, cached or not); closed here."""
        cached = self._file(point, size, payload)
        if cached.is_file():
            os.close(fd)
            return cached.read_bytes()
        try:
            data = make_thumbnail(fd, size)
        except Exception as exc:  # damaged since the ingest read it, or a format Pillow lost
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Gone(f"cannot make a thumbnail of the indexed file: {reason}") from None
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError:
            pass  # a cache that cannot be written only costs the next request a decode
        return data


def make_thumbnail(fd: int, size: int) -> bytes:
    from PIL import Image, ImageOps

    from clipsearch.images import to_rgb

    with os.fdopen(fd, "rb") as f, Image.open(f) as img:
        img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a fraction of full size
        img = ImageOps.exif_transpose(img) or img
        img = to_rgb(img)
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()
