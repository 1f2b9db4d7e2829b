"""Query images uploaded by clients: bounded in size, in pixels and in time.

The upload is read up to the size limit (413 beyond it), written to a private
temporary file, and decoded by the same code as ingest (clipsearch/images.py: the
megapixel limit is checked before any pixel is decoded, which is the
decompression-bomb guard) in a worker process, so that a pathological file costs at
most DECODE_SECONDS and cannot stall or crash the server: on a timeout the worker is
killed and replaced.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
from typing import Any

from clipsearch.errors import ClipsearchError
from clipsearch.images import decode_job
from clipsearch.pools import spawn_pool

DECODE_SECONDS = 10.0
# How long an upload waits for its turn at the decoder before serve answers 503: the
# decode's own limit counts from its turn, not from its arrival.
QUEUE_SECONDS = 30.0
# The setting serve's megapixel limit comes from (serve has no --max-megapixels flag):
# what the message on a too-large upload names.
LIMIT_SETTING = "CLIPSEARCH_MAX_MEGAPIXELS"
# Uploads that may wait at once. Each holds one of the HTTP server's worker threads
# (about 40, shared with searches and thumbnails): beyond this, 503 at once.
MAX_WAITING = 4


class UploadTooLarge(ClipsearchError):
    pass


class NotAnImage(ClipsearchError):
    pass


class Busy(ClipsearchError):
    """Too many uploads at once: 503, try again (not the upload's fault)."""


class UploadDecoder:
    def __init__(self, max_megapixels: float, seconds: float = DECODE_SECONDS, queue_seconds: float = QUEUE_SECONDS,
                 max_waiting: int = MAX_WAITING):
        self.max_megapixels = max_megapixels
        self.seconds = seconds
        self.queue_seconds = queue_seconds
        self.max_waiting = max_waiting
        self._waiting = 0
        self._pool: Any = None
        self._lock = threading.Lock()
        # One decode at a time, as the pool has one worker: a timeout then kills only the
        # decode that overran, never the queued uploads of other clients.
        self._turn = threading.BoundedSemaphore(1)

    def _get_pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = spawn_pool(1)
            return self._pool

    def _kill_pool(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.terminate()
                self._pool.join()
                self._pool = None

    def decode(self, data: bytes, target: int):
        """The decoded PIL image, or a one-line NotAnImage."""
        if not data:
            raise NotAnImage("the upload is empty")
        self._wait_for_turn()  # before the file is written: a refused upload costs no disk
        try:
            fd, path = tempfile.mkstemp(prefix="clipsearch-upload-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                result = self._get_pool().apply_async(decode_job, ((path, target, self.max_megapixels, LIMIT_SETTING),))
                try:
                    _, decoded, reason, _ = result.get(timeout=self.seconds)
                except multiprocessing.TimeoutError:
                    self._kill_pool()
                    raise NotAnImage(f"decoding the upload took longer than {self.seconds:g} s") from None
            finally:
                os.unlink(path)
        finally:
            self._turn.release()
        if decoded is None:
            from clipsearch.images import missing_decoder

            missing = missing_decoder(data[:16])  # an iPhone's HEIC here without pillow-heif: what to install
            # The client's machine is not the one to install it on: said as the server's.
            said = missing.removeprefix("not read: ").replace("this install has", "the server has") \
                .replace("adds them", "where serve runs adds them") if missing else ""
            raise NotAnImage(f"the upload cannot be read: {said}" if missing
                             else f"the upload is not a usable image: {reason}")
        return decoded.image

    def _wait_for_turn(self) -> None:
        """Take the decoder, after at most `max_waiting` others and `queue_seconds`; else Busy."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise Busy(f"serve is decoding {self._waiting + 1} other uploads; try again shortly")
            self._waiting += 1
        try:
            turn = self._turn.acquire(timeout=self.queue_seconds)
        finally:
            with self._lock:
                self._waiting -= 1
        if not turn:
            raise Busy(f"serve is decoding other uploads (waited {self.queue_seconds:g} s); try again shortly")

    def close(self) -> None:
        self._kill_pool()
