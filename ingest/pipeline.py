"""The ingest worker: walk -> skip unchanged -> decode pool -> batched encode -> upsert.

Decoding runs in worker processes while the model encodes the previous batch in this
one; each batch is upserted as soon as it is encoded, so a run killed at any moment
has committed every finished batch, and a re-run skips those files because their
size and mtime match their points.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from clipsearch.errors import ClipsearchError
from clipsearch.index import Index, ancestor_dirs, point_id
from clipsearch.progress import Progress, format_duration

from .decode import DEFAULT_MAX_MEGAPIXELS, Decoded, decode_job
from .report import SkipReport
from .walk import FileEntry, walk_images

# How many candidate files are checked against the index in one retrieve call.
LOOKUP_CHUNK = 512


@dataclass
class IngestOptions:
    batch_size: int = 32
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    exclude: Sequence[str] = ()
    prune: bool = False
    report: str | None = None
    quiet: bool = False


@dataclass
class IngestSummary:
    found: int = 0
    embedded: int = 0
    unchanged: int = 0
    skipped: int = 0
    removed: int = 0
    seconds: float = 0.0
    hnsw_built: bool = False

    def line(self) -> str:
        return (f"ingested {self.embedded}, unchanged {self.unchanged}, skipped {self.skipped}, "
                f"removed {self.removed} in {self.seconds:.1f} s")


def payload_for(entry: FileEntry, decoded: Decoded) -> dict:
    return {
        "path": entry.path,
        "dirs": ancestor_dirs(entry.path),
        "size": entry.size,
        "mtime": entry.mtime,
        "width": decoded.width,
        "height": decoded.height,
    }


def _is_unchanged(payload: dict, entry: FileEntry) -> bool:
    return payload.get("size") == entry.size and payload.get("mtime") == entry.mtime


class Ingestor:
    def __init__(self, encoder, index: Index, options: IngestOptions | None = None, progress: Progress | None = None):
        self.encoder = encoder
        self.index = index
        self.options = options or IngestOptions()
        if self.options.batch_size < 1:
            raise ClipsearchError(f"--batch-size must be at least 1, got {self.options.batch_size}")
        if self.options.workers < 0:
            raise ClipsearchError(f"--workers must be 0 or more, got {self.options.workers}")
        self.progress = progress or Progress(quiet=self.options.quiet)
        self.summary = IngestSummary()
        self.report = SkipReport(self.options.report)
        self.walk_done = False
        self.seen_ids: set[str] = set()
        self.target = int(getattr(encoder, "image_size", 224))

    # -- stages -----------------------------------------------------------------
    def _skip(self, path: str, reason: str) -> None:
        self.summary.skipped += 1
        self.report.add(path, reason)

    def _changed_files(self, roots: Sequence[str]) -> Iterator[FileEntry]:
        """Walk, and drop files whose point already has their size and mtime."""
        chunk: list[FileEntry] = []

        def flush():
            ids = [point_id(e.path) for e in chunk]
            stored = {r.id: r.payload for r in self.index.retrieve(ids)}
            for entry, pid in zip(chunk, ids):
                if pid in stored and _is_unchanged(stored[pid], entry):
                    self.summary.unchanged += 1
                else:
                    yield entry
            chunk.clear()

        for entry in walk_images(roots, self.options.exclude, on_error=self._skip):
            self.summary.found += 1
            if self.options.prune:
                self.seen_ids.add(point_id(entry.path))
            chunk.append(entry)
            if len(chunk) >= LOOKUP_CHUNK:
                yield from flush()
        if chunk:
            yield from flush()
        self.walk_done = True

    def _decoded(self, entries: Iterable[FileEntry]) -> Iterator[tuple[FileEntry, Decoded]]:
        """Decode in a process pool, in order, with a bounded number in flight."""
        opts = self.options
        jobs = ((e, (e.path, self.target, opts.max_megapixels)) for e in entries)
        if opts.workers == 0:
            for entry, job in jobs:
                yield from self._accept(entry, decode_job(job))
            return
        pool = None
        pending: deque = deque()
        window = max(opts.workers * 4, opts.batch_size * 2)
        try:
            for entry, job in jobs:
                if pool is None:  # spawn only when there is something to decode
                    # spawn, not fork: forking a process that holds torch threads can deadlock.
                    pool = multiprocessing.get_context("spawn").Pool(opts.workers)
                pending.append((entry, pool.apply_async(decode_job, (job,))))
                while len(pending) >= window or (pending and pending[0][1].ready()):
                    first, result = pending.popleft()
                    yield from self._accept(first, result.get())
            while pending:
                first, result = pending.popleft()
                yield from self._accept(first, result.get())
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    def _accept(self, entry: FileEntry, outcome) -> Iterator[tuple[FileEntry, Decoded]]:
        _, decoded, reason = outcome
        if decoded is None:
            self._skip(entry.path, reason or "unknown error")
        else:
            yield entry, decoded

    def _commit(self, batch: list[tuple[FileEntry, Decoded]]) -> None:
        vectors = self.encoder.encode_images([d.image for _, d in batch], batch_size=self.options.batch_size)
        ids = [point_id(e.path) for e, _ in batch]
        payloads = [payload_for(e, d) for e, d in batch]
        self.index.upsert(ids, np.asarray(vectors, dtype=np.float32), payloads)
        self.summary.embedded += len(batch)

    def _show(self, force: bool = False) -> None:
        s = self.summary
        rate, _ = self.progress.rate_and_eta(s.embedded, None)
        eta = "?"
        if rate > 0 and self.walk_done:
            eta = format_duration((s.found - s.embedded - s.unchanged - s.skipped) / rate)
        found = f"{s.found}" + ("" if self.walk_done else "+")  # + while still walking
        self.progress.update(
            f"found {found}, embedded {s.embedded}, unchanged {s.unchanged}, skipped {s.skipped}, "
            f"{rate:.1f} img/s, ETA {eta}", force=force)

    def _prune(self, roots: Sequence[str]) -> None:
        stale: list[str] = []
        for root in roots:
            for record in self.index.scroll(under=root):
                if record.id not in self.seen_ids:
                    stale.append(record.id)
        for i in range(0, len(stale), 1000):
            self.index.delete(ids=stale[i:i + 1000])
        self.summary.removed = len(stale)

    # -- run --------------------------------------------------------------------
    def run(self, roots: Sequence[str]) -> IngestSummary:
        roots = [os.path.realpath(os.path.abspath(r)) for r in roots]
        for root in roots:
            if not os.path.isdir(root):
                raise ClipsearchError(f"{root} is not a folder")
        self.index.ensure_collection(self.encoder.identity)
        started = time.monotonic()
        batch: list[tuple[FileEntry, Decoded]] = []
        try:
            for item in self._decoded(self._changed_files(roots)):
                batch.append(item)
                if len(batch) >= self.options.batch_size:
                    self._commit(batch)
                    batch = []
                self._show()
            if batch:
                self._commit(batch)
            if self.options.prune:
                self._prune(roots)
            self._show(force=True)
            self.progress.finish()
        finally:
            self.report.close()
        if self.summary.found == 0:
            raise ClipsearchError(f"no image files found under {', '.join(roots)}")
        if self.summary.embedded and self.index.backend == "edge":
            count = self.index.count()
            from clipsearch.index.edge import HNSW_MIN_POINTS

            if count >= HNSW_MIN_POINTS:
                self.progress.message(f"building the HNSW search index over {count} images...")
                self.summary.hnsw_built = self.index.optimize()
        self.summary.seconds = time.monotonic() - started
        return self.summary


def ingest(roots: Sequence[str], encoder, index: Index, options: IngestOptions | None = None,
           progress: Progress | None = None) -> IngestSummary:
    return Ingestor(encoder, index, options, progress).run(roots)
