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
gets a new one; the same facts make the ETag. The cache is bounded (at 500k photos it
would otherwise grow by gigabytes per size): a file's mtime is the last time it was
served, and beyond the limit the least recently served go, down to 90% of it, so that
one removal pass makes room for many thumbnails.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import re
import stat
import threading
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


# Raster formats only. The indexed path is a link's target, whose name the walk never
# checked (it checks the link's): a target named .svg would go out as a type that runs script.
RASTER_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff", "image/bmp",
                          "image/x-ms-bmp", "image/heic", "image/heif", "image/avif"})


def media_type(path: str) -> str:
    kind, _ = mimetypes.guess_type(path)
    return kind if kind in RASTER_TYPES else "application/octet-stream"


def etag(point: str, payload: dict, size: int | None = None) -> str:
    facts = f"{point}:{size}:{payload.get('size')}:{payload.get('mtime_ns', payload.get('mtime'))}"
    return '"' + hashlib.sha256(facts.encode()).hexdigest()[:32] + '"'


class Thumbnails:
    def __init__(self, folder: Path, limit_bytes: int = 2_000_000_000, decodes: int = 2):
        """`decodes`: thumbnails made at once. A photo decodes whole into memory (64 MP:
        about 200 MB, more while it is scaled), and a page asks for dozens at a time: the
        others wait their turn rather than take the NAS's memory."""
        self.folder = folder
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(decodes)
        self._total: int | None = None  # bytes in the cache; counted at the first write
        try:  # the cache shows every photo small: only this user may look in (a photo's own mode is not kept)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)  # also a cache made before, open to all
        except OSError:
            pass  # a cache that cannot be made only costs every request a decode

    def _file(self, point: str, size: int, payload: dict) -> Path:
        name = f"{point}-{size}-{payload.get('size')}-{payload.get('mtime_ns', 0)}.jpg"
        return self.folder / point[:2] / name

    def get(self, point: str, payload: dict, size: int, fd: int) -> bytes:
        """The JPEG of `size` (one of THUMBNAIL_SIZES). `fd`: the indexed file, opened
        and checked by open_indexed (every time, cached or not); closed here."""
        cached = self._file(point, size, payload)
        try:
            data = cached.read_bytes()
        except OSError:  # not made yet, or removed (the limit, or a user): make it
            pass
        else:
            os.close(fd)
            try:
                os.utime(cached)  # served now: the last to go
            except OSError:
                pass
            return data
        try:
            with self._decoding:
                data = make_thumbnail(fd, size)
        except Exception as exc:  # damaged since the ingest read it, or a format Pillow lost
            raise Gone(f"cannot make a thumbnail of the indexed file: {unreadable(exc)}") from None
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # one per request
            tmp.write_bytes(data)
            os.replace(tmp, cached)
            self._added(len(data))
        except OSError:
            pass  # a cache that cannot be written only costs the next request a decode
        return data

    def _added(self, written: int) -> None:
        with self._lock:
            files = None
            if self._total is None:  # the first write: count the cache, this file included
                files = self._files()
                self._total = sum(size for _, size, _ in files)
            else:
                self._total += written
            if self._total > self.limit_bytes:
                self._total = self._shrink(files if files is not None else self._files(),
                                           int(self.limit_bytes * 0.9))

    def _files(self) -> list[tuple[float, int, str]]:
        """(last served, bytes, path) of every thumbnail in the cache."""
        found = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # removed meanwhile
                found.append((st.st_mtime, st.st_size, path))
        return found

    def _shrink(self, files: list[tuple[float, int, str]], target: int) -> int:
        """Remove the least recently served of `files` (_files()) until at most `target`
        bytes remain; the bytes that remain."""
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= target:
                break
            try:
                os.remove(path)
                total -= size
            except OSError:
                pass  # gone already
        return total


def unreadable(exc: Exception) -> str:
    """Why an image could not be decoded, in words: Pillow's messages name the file it
    was given, here an open descriptor (`<_io.BufferedReader name=14>`), which says
    nothing to a client."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (corrupt, or not the format its name says)"
    text = re.sub(r"\s*<[^<>]*>", "", str(exc).splitlines()[0] if str(exc) else "").strip(" :")
    return f"corrupt or truncated: {text}" if text else "corrupt or truncated"


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
