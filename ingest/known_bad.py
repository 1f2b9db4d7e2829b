"""Files an earlier run could not use, remembered so that a re-run does not decode them again.

A bad file has no point in the index, so the unchanged-file check (its point's size and
mtime) never matches it: without this record, every re-run over a folder with one
corrupt photo decodes it again and, worse, loads the model (torch and the weights,
10-20 s) just to fail on it. Here such files are remembered with their size and mtime;
while both are the same, the file is skipped and reported again without being read.

Only lasting reasons are remembered (the content: corrupt, not an image, too large,
empty), never those that can pass (permission denied, an I/O error, out of memory).
The record is keyed by what decides the outcome besides the file: Pillow's version,
the formats it reads here, and --max-megapixels. Changing any of them, or the file,
retries it. Kept in the user cache dir (CLIPSEARCH_CACHE_DIR), one small JSON file
per index and collection; losing it costs one decode per bad file, nothing more. Two
runs at once on one machine: the last to finish writes the record, and the other's
finds are read again once by the next run. Other machines sharing a server index keep
their own records.

A record that cannot be written (the cache's disk is full, a quota, a read-only cache
folder) does not stop the run: it only makes the next run decode those files again,
while stopping would leave the images after them unembedded, which is what the user
ran ingest for. The first such failure prints one warning line naming the file and the
reason (clipsearch/encoders/cache.py: warn_unwritable); the half-written temporary file
is removed, so it holds none of the space that is missing, and the record already on
disk stays as it was (the new one replaces it by a rename, or not at all).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

from clipsearch import config
from clipsearch.encoders import cache
from clipsearch.names import name_bytes

FORMAT = 1
FOLDER = "bad-files"
# While a run goes on, what it learnt is written at most this often: a run killed
# (kill -9, a power cut) keeps the bad files it found until then.
CHECKPOINT_SECONDS = 10.0


def decoder_fingerprint(max_megapixels: float, extensions: set[str]) -> str:
    import PIL

    return json.dumps({"pillow": PIL.__version__, "extensions": sorted(extensions),
                       "max_megapixels": max_megapixels}, sort_keys=True)


class KnownBadFiles:
    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path  # None: not kept (an in-memory index, or the cache switched off)
        self.fingerprint = fingerprint
        self.files: dict[str, list] = {}  # path -> [size, mtime_ns, reason]
        self.changed = False
        self._written_at: float | None = None  # monotonic time of the last write
        if path is not None:
            self._read()

    @classmethod
    def for_index(cls, location: str, collection: str, fingerprint: str) -> "KnownBadFiles":
        if location == ":memory:" or not config.enabled("known_bad"):
            return cls(None, fingerprint)
        key = hashlib.sha256(name_bytes(f"{location}\0{collection}")).hexdigest()[:24]
        return cls(config.cache_root() / FOLDER / f"{key}.json", fingerprint)

    def _read(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # none yet, or unreadable: start afresh
        if data.get("format") == FORMAT and data.get("decoder") == self.fingerprint:
            self.files = {p: v for p, v in data.get("files", {}).items() if isinstance(v, list) and len(v) == 3}
        else:
            self.changed = True  # another decoder: everything is retried, and the record rewritten

    def reason(self, path: str, size: int, mtime_ns: int) -> str | None:
        """Why the file was bad, if it still is the file that was."""
        known = self.files.get(path)
        if known is not None and known[0] == size and known[1] == mtime_ns:
            return known[2]
        return None

    def remember(self, path: str, size: int, mtime_ns: int, reason: str) -> None:
        self.files[path] = [size, mtime_ns, reason]
        self.changed = True

    def forget(self, path: str) -> None:
        if self.files.pop(path, None) is not None:
            self.changed = True

    def checkpoint(self) -> None:
        """Write the record now if it changed and the last write is CHECKPOINT_SECONDS
        old (the first change is written at once). Never fails the run."""
        if self.path is None or not self.changed:
            return
        if self._written_at is not None and time.monotonic() - self._written_at < CHECKPOINT_SECONDS:
            return
        self._write()

    def save(self, roots: Sequence[str]) -> None:
        """Write the record, dropping files under `roots` that are gone. Never fails the run."""
        if self.path is None:
            return
        prefixes = tuple(r.rstrip(os.sep) + os.sep for r in roots)
        for path in [p for p in self.files if p.startswith(prefixes) and not os.path.lexists(p)]:
            self.forget(path)
        if self.changed:
            self._write()

    def _write(self) -> None:
        assert self.path is not None
        self._written_at = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.files:
                self.path.unlink(missing_ok=True)
            else:
                # ensure_ascii: a name that is not UTF-8 (surrogate escapes) stays exact.
                data = json.dumps({"format": FORMAT, "decoder": self.fingerprint, "files": self.files})
                cache.write_atomic(self.path, data.encode("ascii"))  # a reader never sees half a file
            self.changed = False
        except OSError as exc:
            cache.warn_unwritable(self.path, exc)  # once; a record that cannot be written is a slower next run
        else:
            cache.wrote()
