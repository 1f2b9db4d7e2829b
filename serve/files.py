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

A thumbnail lives no longer than its photo in the index (the cache shows every photo
small; a deleted one must not stay readable there): the thumbnails of a point go when
the watcher's ingest deletes the point (ForgettingIndex), when a request finds its
file gone or changed (the 410) or the point gone (the 404), and when a newer version
of the photo is indexed or its new thumbnail written (superseded: another size or
mtime). What changed while serve was down, or by another writer, is found by sweep():
the cache is listed and its point ids looked up in the index in batches, a cost of
the cache's size (bounded by --thumbnail-megabytes), never of the index's.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import re
import stat
import threading
from contextlib import contextmanager, nullcontext
from email.utils import formatdate
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence

from anyio import to_thread
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse

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
            raise Gone("the file changed since it was indexed; ingest it again (serve --watch does so by itself)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def still_indexed(payload: dict) -> bool:
    """Whether the file a point names is still the one indexed, as open_indexed would
    find it (without opening it): a regular file, not a link, of the indexed size and
    modification time."""
    path = path_of(payload)
    try:
        st = os.lstat(os.fsencode(path)) if path else None
    except (OSError, ValueError):
        return False
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size == payload.get("size") and (
        "mtime_ns" not in payload or st.st_mtime_ns == payload.get("mtime_ns"))


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


served_type = media_type  # for IndexedFileResponse, whose argument of that name hides it


def etag(point: str, payload: dict, size: int | None = None) -> str:
    facts = f"{point}:{size}:{payload.get('size')}:{payload.get('mtime_ns', payload.get('mtime'))}"
    return '"' + hashlib.sha256(facts.encode()).hexdigest()[:32] + '"'


# -- an original, sent from its checked descriptor ------------------------------------
class BadRange(ClipsearchError):
    """A Range header that is no byte range serve can read: a 400."""


class RangeNotSatisfiable(ClipsearchError):
    """A byte range that starts past the end of the file: a 416."""


# One range, as RFC 9110 spells it: FIRST-LAST, FIRST- (to the end) or -COUNT (the last COUNT bytes).
# At most 18 digits: no file is an exabyte, and int() of thousands of digits is refused
# (Python's limit) or slow.
_BYTE_RANGE = re.compile(r"[ \t]*([0-9]{0,18})[ \t]*-[ \t]*([0-9]{0,18})[ \t]*")

# The scope key by which the Gatekeeper (serve/app.py), which answers a HEAD as the GET
# it asks about without the body, tells a response that it need read no file.
HEAD_MARK = "clipsearch.head"


def requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, end) of a file of `size` bytes that a Range header asks for;
    None for the whole file: no header, a unit other than bytes (which RFC 9110 says to
    ignore), or several ranges (which it allows to answer whole: a photo viewer or a
    resumed download asks for one)."""
    if header is None:
        return None
    unit, equals, ranges = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in ranges:
        return None
    found = _BYTE_RANGE.fullmatch(ranges) if equals else None
    if found is None or not (found[1] or found[2]):
        raise BadRange("the Range header is not a byte range: send bytes=FIRST-LAST, bytes=FIRST- or bytes=-COUNT "
                       "(bytes counted from 0)")
    if not found[1]:  # the last COUNT bytes
        count = int(found[2])
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(f"the Range header asks for no byte of the file ({size} bytes)")
        return max(0, size - count), size
    start = int(found[1])
    last = int(found[2]) if found[2] else None
    if last is not None and last < start:
        raise BadRange("the Range header's last byte comes before its first: send bytes=FIRST-LAST with "
                       "FIRST <= LAST")
    if start >= size:
        raise RangeNotSatisfiable(f"the Range header asks for bytes from {start}, past the end of the file "
                                  f"({size} bytes)")
    return start, size if last is None else min(size, last + 1)


class IndexedFileResponse(Response):
    """An original, read from the descriptor open_indexed opened and checked, never
    from its path again: a file swapped in after the check is not the one sent. With
    Last-Modified, and Range: one byte range is a 206, one past the end a 416 (as JSON,
    as every error of the API); If-Range that names another version sends the whole
    file. Conditional requests (304) are the route's. The descriptor is closed once the
    response is sent."""

    chunk_size = 64 * 1024

    def __init__(self, fd: int, path: str, media_type: str | None = None, headers: Mapping[str, str] | None = None):
        st = os.fstat(fd)
        self.fd = fd
        self.size = st.st_size
        super().__init__(media_type=media_type or served_type(path), headers={
            "Accept-Ranges": "bytes", "Last-Modified": formatdate(st.st_mtime, usegmt=True), **(headers or {}),
            "Content-Length": str(st.st_size)})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._answer(scope)(scope, receive, send)
        finally:
            os.close(self.fd)

    def _answer(self, scope) -> Response:
        request = Headers(scope=scope)
        wanted = None
        try:
            if self._range_applies(request.get("if-range")):
                wanted = requested_range(request.get("range"), self.size)
        except RangeNotSatisfiable as exc:
            return JSONResponse({"error": str(exc)}, status_code=416,
                                headers={"Content-Range": f"bytes */{self.size}"})
        except BadRange as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        start, end = wanted or (0, self.size)
        headers = dict(self.headers)
        headers["content-length"] = str(end - start)
        if wanted is not None:
            headers["content-range"] = f"bytes {start}-{end - 1}/{self.size}"
        status = 200 if wanted is None else 206
        head = scope.get("method") == "HEAD" or bool(scope.get(HEAD_MARK))
        return StreamingResponse(self._chunks(start, end if not head else start), status_code=status, headers=headers)

    def _range_applies(self, if_range: str | None) -> bool:
        """If-Range: the range only if the file is still the version the client names,
        by its (strong) ETag or its exact Last-Modified date."""
        if if_range is None:
            return True
        if if_range.startswith("W/"):
            return False
        return if_range in (self.headers.get("etag"), self.headers.get("last-modified"))

    async def _chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        while start < end:
            chunk = await to_thread.run_sync(os.pread, self.fd, min(self.chunk_size, end - start), start)
            if not chunk:  # shorter than it was checked to be: the connection ends short of Content-Length
                return
            start += len(chunk)
            yield chunk


def facts_of(payload: dict) -> str:
    """The file's size and mtime as a thumbnail's name holds them: a newer version of
    the photo has other facts, and so another name."""
    return f"{payload.get('size')}-{payload.get('mtime_ns', 0)}"


def name_parts(name: str) -> tuple[str, str | None, int | None] | None:
    """(point, facts, None) of a thumbnail's file name; (point, None, pid) of a
    temporary one (being written by process pid, or left by one killed); None for a
    name that is neither."""
    if len(name) < 38 or name[36] != "-":
        return None
    point, rest = name[:36], name[37:]
    if rest.endswith(".jpg"):
        size, _, facts = rest[:-4].partition("-")
        return (point, facts, None) if size.isdigit() and facts else None
    if rest.endswith(".tmp"):
        writer = rest[:-4].rsplit(".", 1)[-1].partition("-")[0]
        return (point, None, int(writer)) if writer.isdigit() else None
    return None


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
        # Thumbnails being made meanwhile (a decode takes a while): a point forgotten while
        # one of its thumbnails was being made must not come back when it is written.
        self._making = 0
        self._epoch = 0
        self._forgotten: dict[str, tuple[int, str | None]] = {}  # point -> (epoch, facts still valid)
        try:  # the cache shows every photo small: only this user may look in (a photo's own mode is not kept)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)  # also a cache made before, open to all
        except OSError:
            pass  # a cache that cannot be made only costs every request a decode

    def _file(self, point: str, size: int, payload: dict) -> Path:
        return self.folder / point[:2] / f"{point}-{size}-{facts_of(payload)}.jpg"

    @contextmanager
    def making(self) -> Iterator[int]:
        """Held by a request from before it reads its point's record until its thumbnail
        is written; yields the mark to give get(). A point forgotten at any time in
        between (the watcher removed it just after the read) is noted, and its thumbnail,
        once written, removed: made of a record already stale, it would outlive the photo."""
        with self._lock:
            self._making += 1
            started = self._epoch
        try:
            yield started
        finally:
            with self._lock:
                self._making -= 1
                if not self._making:
                    self._forgotten.clear()

    def get(self, point: str, payload: dict, size: int, fd: int, started: int | None = None) -> bytes:
        """The JPEG of `size` (one of THUMBNAIL_SIZES). `fd`: the indexed file, opened
        and checked by open_indexed (every time, cached or not); closed here.
        `started`: the mark of making(), entered before `payload` was read."""
        if started is None:
            with self.making() as started:
                return self.get(point, payload, size, fd, started)
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
            return data  # a cache that cannot be written only costs the next request a decode
        with self._lock:
            since = self._forgotten.get(point)
        if since is not None and since[0] > started and since[1] != facts_of(payload):
            self._remove([cached])  # its photo was deleted or changed while this was made
        else:
            self._remove(self._stale(point, facts_of(payload)))  # the older versions of the photo go
        return data

    # -- keeping the cache in step with the index ----------------------------------------
    def forget(self, points: Iterable[str], keep: Sequence[dict] | None = None) -> int:
        """Remove the thumbnails of `points` (every size); with `keep` (the points'
        payloads now, in the same order), only those of other versions of each photo.
        Also those being made meanwhile, once written. One listing per folder of the
        cache concerned. Returns how many files were removed."""
        points = list(points)
        wanted = [facts_of(p) for p in keep] if keep is not None else [None] * len(points)
        by_folder: dict[str, dict[str, str | None]] = {}
        for point, facts in zip(points, wanted):
            by_folder.setdefault(point[:2], {})[point] = facts
        with self._lock:
            self._epoch += 1
            if self._making:
                self._forgotten.update((point, (self._epoch, facts)) for point, facts in zip(points, wanted))
        removed = 0
        for prefix, facts_by_point in by_folder.items():
            doomed = []
            for entry in self._listing(prefix):
                parts = name_parts(entry.name)
                if parts is not None and parts[0] in facts_by_point:
                    kept = facts_by_point[parts[0]]
                    if kept is None or (parts[1] is not None and parts[1] != kept):  # not one being written
                        doomed.append(entry.path)
            removed += self._remove(doomed)
        return removed

    def sweep(self, lookup: Callable[[list[str]], dict[str, dict]], batch: int = 500) -> int:
        """Remove the thumbnails whose point the index no longer holds, or holds for
        another version of the photo, or whose file is gone or changed since it was
        indexed (serve would answer 410), and temporary files a killed serve left.
        `lookup(ids)`: the payloads of those of `ids` the index holds (it raises,
        rather than answer none, when the index cannot be read). The cache is read
        folder by folder and the index asked `batch` ids at a time: a cost of the
        cache's size, not of the index's. Returns how many files were removed."""
        removed = 0
        pending: dict[str, list[tuple[str, str]]] = {}  # point -> [(facts, path)]

        def check() -> int:
            payloads = lookup(list(pending))
            gone = {point for point in pending if point not in payloads or not still_indexed(payloads[point])}
            with self._lock:
                self._epoch += 1
                if self._making:  # one being made of a point found gone: not written after all
                    self._forgotten.update((point, (self._epoch, None)) for point in gone)
            doomed = [path for point, files in pending.items() for facts, path in files
                      if point in gone or facts != facts_of(payloads[point])]
            pending.clear()
            return self._remove(doomed)

        try:
            folders = sorted(entry.name for entry in os.scandir(self.folder) if entry.is_dir(follow_symlinks=False))
        except OSError:
            return 0  # no cache yet
        for prefix in folders:
            leftovers = []
            for entry in self._listing(prefix):
                parts = name_parts(entry.name)
                if parts is None:
                    continue  # not a thumbnail: left alone
                point, facts, writer = parts
                if facts is None:
                    if writer != os.getpid():
                        leftovers.append(entry.path)
                    continue
                pending.setdefault(point, []).append((facts, entry.path))
                if len(pending) >= batch:
                    removed += check()
            removed += self._remove(leftovers)
        if pending:
            removed += check()
        return removed

    def _listing(self, prefix: str) -> list[os.DirEntry]:
        try:
            with os.scandir(self.folder / prefix) as entries:
                return list(entries)
        except OSError:
            return []  # none of these points has a thumbnail

    def _stale(self, point: str, facts: str) -> list[str]:
        """The thumbnails of `point` made of another version of its photo."""
        found = []
        for entry in self._listing(point[:2]):
            parts = name_parts(entry.name)
            if parts is not None and parts[0] == point and parts[1] is not None and parts[1] != facts:
                found.append(entry.path)
        return found

    def _remove(self, paths: Iterable[str | Path]) -> int:
        """Remove these files of the cache; how many were. The total follows."""
        removed = freed = 0
        for path in paths:
            try:
                size = os.stat(path).st_size
                os.remove(path)
            except OSError:
                continue  # gone already
            removed += 1
            freed += size
        if freed:
            with self._lock:
                if self._total is not None:
                    self._total = max(0, self._total - freed)
        return removed

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


class ForgettingIndex:
    """The index as serve's watched ingest writes it, with the thumbnail cache kept in
    step: the thumbnails of the points it deletes (a file or folder deleted, a prune at
    a walk, a moved file's old point) go at once, after the delete; a point written
    anew (a file edited: the same id, another size or mtime) keeps only the
    thumbnails of its new version. Every other call passes through."""

    def __init__(self, index: Any, thumbnails: Thumbnails):
        self._index = index
        self._thumbnails = thumbnails

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def delete(self, ids: Sequence[str] = (), under: str | None = None) -> None:
        ids = list(ids)
        points = list(ids)
        if under is not None:  # a folder: its points' ids, read before they go
            with getattr(self._index, "lock", None) or nullcontext():
                points += [record.id for record in self._index.scroll(under=under)]
        self._index.delete(ids=ids, under=under)
        self._thumbnails.forget(points)

    def upsert(self, ids: Sequence[str], vectors: Any, payloads: Sequence[dict]) -> None:
        self._index.upsert(ids, vectors, payloads)
        self._thumbnails.forget(ids, keep=payloads)

    def copy_points(self, sources: Sequence[str], ids: Sequence[str], payloads: Sequence[dict]) -> set[str]:
        missing = self._index.copy_points(sources, ids, payloads)
        written = [(point, payload) for point, payload in zip(ids, payloads) if point not in missing]
        self._thumbnails.forget([point for point, _ in written], keep=[payload for _, payload in written])
        return missing


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
    from PIL import Image

    from clipsearch.images import open_image, to_rgb, upright

    with os.fdopen(fd, "rb") as f, open_image(f) as img:
        img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a fraction of full size
        img = to_rgb(upright(img))
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()
