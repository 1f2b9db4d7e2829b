"""The ingest worker: walk -> skip unchanged -> decode pool -> batched encode -> upsert.

Decoding runs in worker processes while the model encodes the previous batch in this
one. The workers also make the model's input (its resize and centre crop, as uint8:
clipsearch/images.py prepare_job), so this process only normalizes it and runs the
model, with no image-processor pass (issue 19). Each batch is upserted as soon as it
is encoded, so a run killed at any moment has committed every finished batch, and a
re-run skips those files because their size and mtime match their points.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import numpy as np

from clipsearch import config
from clipsearch.config import Settings
from clipsearch.encoders.onnx_image import CropsMismatch
from clipsearch.encoders.vectors import NonFiniteVectors
from clipsearch.errors import ClipsearchError, UsageError
from clipsearch.fingerprint import fingerprint
from clipsearch.images import (
    Decoded,
    Prepared,
    decode_job,
    decoder_init,
    plain_preprocess,
    prepare_job,
)
from clipsearch.index import Index, canonical_path  # walk yields canonical paths
from clipsearch.index import canonical_point_id as point_id
from clipsearch.names import path_of, shown
from clipsearch.photo_facts import facts_outdated, versioned
from clipsearch.pools import WorkerDied, in_order, unguarded_call_line
from clipsearch.progress import Progress, format_duration

from .cores import plan_cores
from .known_bad import KnownBadFiles, decoder_fingerprint
from .prune import left_out, reached_via
from .prune import plan as prune_plan
from .relink import Relinker, merged_reach, place_payload, recorded_dev, recorded_reach, with_reach
from .report import AS_BEFORE, LOST_POINT, NEW, WALK, SkipReport, check_report_path
from .walk import (
    UNREADABLE_FOLDER,
    FileEntry,
    ImageCount,
    image_extensions,
    image_file,
    root_of,
    spelled,
    walk_images,
    walked_path,
)

# How many candidate files are checked against the index in one retrieve call.
LOOKUP_CHUNK = 512
# Seconds after the first file to embed before the image names are counted for an ETA,
# should the walk still be going: a re-run with a few changed files is done walking by
# then, and does not list a large library twice.
COUNT_AFTER = 3.0
# Said of a file that went bad since it was embedded: its point goes, so searches stop
# finding what it was; fixed (or restored from a backup), the next run embeds it again.
LOST_POINT_NOTE = "it changed since it was indexed: its old point is removed; the next run embeds it once it reads"
NONFINITE_REASON = "the model gives no usable vector for it (NaN or infinity: its pixels overflow the model)"

# Fewer files to decode than this many batches are decoded in this process: starting
# the spawn pool costs about a second (measured: see IN_PROCESS_BELOW in the report),
# more than decoding a few dozen photos here.
IN_PROCESS_BELOW = 2


def _workers_default() -> int:
    named = config.env_value("workers")
    return named if named is not None else plan_cores().workers


@dataclass
class IngestOptions:
    """How an ingest runs. The defaults of batch_size, workers, max_megapixels and
    shard are their settings' (CLIPSEARCH_BATCH_SIZE... as the CLI reads them: README,
    Configuration); each value is checked here, a wrong one a UsageError or TypeError
    naming the field. `exclude` is a list of globs (one glob may be given alone)."""

    batch_size: int = field(default_factory=lambda: config.value("batch_size"))
    workers: int = field(default_factory=_workers_default)
    max_megapixels: float = field(default_factory=lambda: config.value("max_megapixels"))
    exclude: Sequence[str] = ()
    prune: bool = False
    # Prune a folder even when most of its images are gone (see PRUNE_SHARE).
    allow_missing: bool = False
    report: str | None = None
    quiet: bool = False
    # (i, n): only files whose id hash falls in shard i of n
    shard: tuple[int, int] | None = field(default_factory=lambda: config.env_value("shard"))
    # Compare every file's content fingerprint too, not only its size and mtime: finds
    # files edited with their time kept (exiftool -P), at the cost of reading each one.
    recheck: bool = False
    # Build the HNSW index at the end of run() (edge). serve builds it elsewhere, without
    # blocking its queries, and turns this off.
    optimize: bool = True
    # The model's encoder, when ingest() builds it: fp32 or int8 image vectors (int8 only
    # through the ONNX image tower; "": an existing collection's, else CLIPSEARCH_PRECISION's),
    # and whether to say on stderr which image path the run takes and why (--verbose).
    precision: str = ""
    verbose: bool = False

    def __post_init__(self) -> None:
        def wrong(name: str, expected: str) -> TypeError:
            return TypeError(f"IngestOptions: {name}= must be {expected}, got {type(getattr(self, name)).__name__}")

        for name, low in (("batch_size", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise wrong(name, "an int")
            if value < low:
                raise UsageError(f"IngestOptions: {name}= must be at least {low}, got {value}")
        if isinstance(self.max_megapixels, bool) or not isinstance(self.max_megapixels, numbers.Real):
            raise wrong("max_megapixels", "a number")
        if not (math.isfinite(self.max_megapixels) and self.max_megapixels > 0):
            raise UsageError(f"IngestOptions: max_megapixels= must be a number of megapixels above 0, "
                             f"got {self.max_megapixels}")
        # One glob given alone: not its letters, each a glob ("*" of "*.png" would match
        # every file, and with prune remove every point).
        if isinstance(self.exclude, (str, bytes)):
            self.exclude = (self.exclude,)
        if not isinstance(self.exclude, Iterable):
            raise wrong("exclude", "a glob (str) or a list of globs")
        globs = tuple(self.exclude)  # read once: a generator is read here, not emptied by the check
        if not all(isinstance(glob, (str, bytes)) for glob in globs):
            raise wrong("exclude", "a glob (str) or a list of globs")
        self.exclude = tuple(os.fsdecode(glob) for glob in globs)
        if isinstance(self.shard, str):
            try:
                self.shard = config.parse_shard(self.shard) if self.shard.strip() else None
            except ValueError as exc:
                raise UsageError(f"IngestOptions: shard={self.shard!r} {exc}") from None
        if self.shard is not None:
            if not (isinstance(self.shard, tuple) and len(self.shard) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) for n in self.shard)):
                raise wrong("shard", "(i, n), or 'I/N'")
            if not 0 <= self.shard[0] < self.shard[1]:
                raise UsageError(f"IngestOptions: shard={self.shard} must have 0 <= i < n")


@dataclass
class IngestSummary:
    found: int = 0
    embedded: int = 0
    unchanged: int = 0
    skipped: int = 0
    # Of the skipped: files an earlier run found bad, unchanged since, so not read again
    # (ingest/known_bad.py).
    known_bad: int = 0
    # Of the skipped: folders the walk could not list (no permission, an I/O error), so
    # whatever is in them was not found (found counts files only).
    unreadable_folders: int = 0
    # Files embedded although Pillow warned about them (corrupt EXIF and the like): the
    # warnings are in the report, not on stderr.
    warned: int = 0
    # New paths whose content was already indexed (clipsearch/fingerprint.py): the point's
    # vector reused, nothing decoded. moved: the content left its old path (gone: its
    # point removed; holding other content: that point rewritten when its file is met);
    # copied: both stay (also where the old path may be on a drive not mounted). A file
    # only touched (same bytes) counts as unchanged. upgraded: older points given their
    # fingerprint and photo facts.
    moved: int = 0
    copied: int = 0
    upgraded: int = 0
    removed: int = 0
    # What --prune left alone and why (ingest/prune.py): the CLI prints it and exits 1.
    not_pruned: str | None = None
    # The roots gone or unreadable at the end of the run (a share unmounted during it),
    # under which it did not reach everything: the CLI prints it and exits 1.
    unreached: str | None = None
    seconds: float = 0.0
    hnsw_built: bool = False
    # Seconds from the start of the run until the first batch was encoded: loading the
    # model, starting the decoders and that first batch, which nothing overlaps. What
    # follows is the steady rate a large folder sees (bench/ingest_speed.py).
    first_batch_seconds: float | None = None

    def line(self) -> str:
        notes = [f"{self.known_bad} as before, not read again"] if self.known_bad else []
        if self.unreadable_folders:
            notes.append(f"{self.unreadable_folders} folder{'s' * (self.unreadable_folders != 1)} that could not "
                         "be read")
        known = f" ({'; '.join(notes)})" if notes else ""
        warned = f" ({self.warned} with decoder warnings)" if self.warned else ""
        reused = "".join(f", {name} {getattr(self, name)}" for name in ("moved", "copied", "upgraded")
                         if getattr(self, name))
        return (f"ingested {self.embedded}{warned}{reused}, unchanged {self.unchanged}, skipped {self.skipped}{known}, "
                f"removed {self.removed} in {self.seconds:.1f} s")


def payload_for(entry: FileEntry, decoded: Decoded | Prepared) -> dict:
    return {
        **place_payload(entry),  # path (a name that is not UTF-8 keeps its bytes), dirs, size, mtime
        "width": decoded.width,
        "height": decoded.height,
        **versioned(decoded.facts),  # taken, camera, location: where the file says so; facts_version
        **({"fingerprint": decoded.fingerprint} if decoded.fingerprint else {}),
        **({"content_hash": decoded.content_hash} if decoded.content_hash else {}),
    }


def _is_unchanged(payload: dict, entry: FileEntry) -> bool:
    return payload.get("size") == entry.size and payload.get("mtime_ns") == entry.mtime_ns


def resolve_roots(roots: Sequence[str]) -> list[str]:
    """The folders to ingest, canonical; a missing one is a one-line error. The CLI
    calls this before it opens (and may create) the index, so that a typo leaves no
    empty index folder behind."""
    resolved = [os.path.realpath(os.path.abspath(r)) for r in roots]
    for root in resolved:
        if not os.path.isdir(root):
            raise ClipsearchError(f"{root} is not a folder")
    return resolved


def folder_identities(folders: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    """Each folder's (device, inode), None where it cannot be stat'ed: as a run begins,
    for lost_roots at its end."""
    identities: dict[str, tuple[int, int] | None] = {}
    for folder in folders:
        try:
            st = _stat_inside(folder)
            identities[folder] = (st.st_dev, st.st_ino)
        except OSError:
            identities[folder] = None
    return identities


def _stat_inside(folder: str) -> os.stat_result:
    """The folder as its files see it: stat of FOLDER/. goes through it, which mounts an
    automount point (autofs, x-systemd.automount, an expired NFSv4 submount); stat of
    FOLDER itself does not, and gives the mount point's own identity, which the walk's
    listing then changes: a healthy nightly run would look like one that lost its share."""
    return os.stat(os.path.join(folder, "."))


def lost_roots(begun: dict[str, tuple[int, int] | None]) -> list[str]:
    """The roots that are gone now, cannot be listed, or are another folder than when
    the run began (`begun`: folder_identities then): a share unmounted during the run
    leaves its mount point, there and listable, but empty. The walk skips what it could
    not reach one name at a time; this says the run as a whole fell short."""
    lost = []
    for root, identity in begun.items():
        try:
            st = _stat_inside(root)
            with os.scandir(root) as listing:
                next(listing, None)  # a share that failed answers the listing with an I/O error
        except OSError:
            lost.append(root)
            continue
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            lost.append(root)
    return lost


def unreached_line(lost: Sequence[str]) -> str:
    """What the CLI says, after the summary, of the roots lost_roots found."""
    one = len(lost) == 1
    return (f"{', '.join(shown(root) for root in lost)} {'is' if one else 'are'} gone or cannot be read now (a "
            f"drive or share unmounted during the run?): the run did not reach everything under "
            f"{'it' if one else 'them'}; what it did is kept: run it again once {'it is' if one else 'they are'} back")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N, as given to --shard (the settings table's parser)."""
    try:
        return config.parse_shard(text)
    except ValueError as exc:
        raise ClipsearchError(f"--shard {text!r} {exc}") from None


def in_shard(pid: str, shard: tuple[int, int] | None) -> bool:
    """Stable across machines and runs: the point id is a uuid5 of the path."""
    if shard is None:
        return True
    i, n = shard
    return int(pid.replace("-", ""), 16) % n == i


class Ingestor:
    """One index, one encoder, any number of calls.

    `run(roots)` walks folders, `run_files(paths)` takes a list of files (a watcher's
    batch), `remove(paths)` deletes the points of files and folders that are gone. The
    model loads once, at the first file to embed, and stays for later calls.

    Counters: `summary` is the current (or last) call's, which that call returns;
    `totals()` adds up every call so far, the one in progress included. The skip
    report (`report`) and the known-bad record span all calls.
    """

    def __init__(self, encoder, index: Index, options: IngestOptions | None = None, progress: Progress | None = None):
        self.encoder = encoder
        self.index = index
        self.options = options or IngestOptions()  # its values checked when it was made
        self.progress = progress or Progress(quiet=self.options.quiet)
        self.summary = IngestSummary()
        self.report = SkipReport(self.options.report)
        self._sound: bool | None = None  # whether the model gives finite vectors (_model_is_sound)
        self.known_bad = KnownBadFiles.for_index(
            index.location, index.collection,
            decoder_fingerprint(self.options.max_megapixels, image_extensions()))
        self.walk_done = False
        self._count: ImageCount | None = None  # the names counted for the ETA while walking (_run)
        self._rate_from: tuple[float, int] | None = None  # (when, embedded) at the first batch in
        self._first_to_embed: float | None = None
        self.walked = 0  # image files seen, in any shard
        self.seen_ids: set[str] = set()
        self._target: int | None = None
        self._preprocess = None
        self._plain: tuple | None = None
        self._preprocess_known = False
        self._finished = IngestSummary()  # the sum of the calls that have returned
        self._counts_lock = threading.Lock()
        self._collection_ready = False
        self._stopped = threading.Event()
        self._show_progress = True

    @property
    def target(self) -> int:
        """The decoders' output size, the model's input side. Asked for when the first
        file is about to be decoded, not before: a lazily loaded encoder
        (clipsearch/encoders/lazy.py) then loads only for a run that embeds something."""
        if self._target is None:
            self._target = int(self.encoder.image_size)
        return self._target

    @property
    def preprocess(self):
        """What the decoders make of each image for the model (Preprocess): its uint8
        crop, which this process only normalizes and encodes (encode_crops), so the
        image processor's work runs on the decoders' cores, once. None: whole images
        (an encoder without encode_crops, or a model whose preprocessing the decoders
        cannot reproduce). Asked for, like `target`, when the first file is decoded."""
        if not self._preprocess_known:
            self._preprocess_known = True
            if callable(getattr(self.encoder, "encode_crops", None)):
                self._set_preprocess(getattr(self.encoder, "preprocess", None))
        return self._preprocess

    def _set_preprocess(self, preprocess) -> None:
        self._preprocess = preprocess
        self._plain = plain_preprocess(preprocess) if preprocess is not None else None

    def _job(self, path: str):
        """(pool function, its argument) that decodes `path` for the model."""
        if self.preprocess is None:
            return decode_job, (path, self.target, self.options.max_megapixels)
        return prepare_job, (path, self.target, self.options.max_megapixels, self._plain)

    def totals(self) -> IngestSummary:
        """Every call's counters added up, the call in progress included (safe to read
        from another thread while a call runs). `seconds` is the calls' time so far."""
        with self._counts_lock:
            total = IngestSummary(**self._finished.__dict__)
            current = self.summary
            if current is not self._finished_last:
                _add(total, current)
            return total

    def stop(self) -> None:
        """Ask the call in progress, and every later one, to return early: the batch
        being encoded is committed, nothing further is read. Safe from any thread."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # -- stages -----------------------------------------------------------------
    def _skip(self, path: str, reason: str, rank: int = NEW) -> None:
        self.summary.skipped += 1
        self.report.add(path, reason, rank)

    def _walk_skip(self, path: str, reason: str) -> None:
        """The walk's on_error: a skip, and a folder it could not list counted as such;
        a file (a broken link, a FIFO named .jpg) is found too, as every skipped file is."""
        if reason.startswith(UNREADABLE_FOLDER):
            self.summary.unreadable_folders += 1
        else:
            self.summary.found += 1
        self._skip(path, reason, WALK)

    def _changed_files(self, roots: Sequence[str]) -> Iterator[FileEntry]:
        """Walk, and drop files whose point already has their size and mtime."""
        return self._unchanged_filtered(walk_images(roots, self.options.exclude, on_error=self._walk_skip,
                                                    on_again=self._reached_again))

    def _reached_again(self, path: str, via: str) -> None:
        """The walk met a file it had yielded again, through another link: recorded
        once the run's writes are in (_record_reached_again)."""
        self._again.setdefault(path, []).append(via)

    def _record_reached_again(self) -> None:
        """Add the links by which the walk reached files a second time to their points
        (the first way is in the entry it yielded): so that deleting one link leaves
        the point of a file another still reaches."""
        again, self._again = self._again, {}
        paths = list(again)
        for i in range(0, len(paths), LOOKUP_CHUNK):
            chunk = paths[i:i + LOOKUP_CHUNK]
            records = self.index.retrieve([point_id(p) for p in chunk])
            rewrites = []
            for record in records:
                path = path_of(record.payload)
                if path not in again or not in_shard(record.id, self.options.shard):
                    continue
                via, direct, changed = merged_reach(record.payload, FileEntry(path, 0, 0, via=tuple(again[path]),
                                                                               direct=False))
                if changed:
                    rewrites.append((record.id, with_reach(record.payload, via, direct)))
            self._rewrite(rewrites)

    def _rewrite(self, payloads: Sequence[tuple[str, dict]]) -> None:
        """Write these payloads over their points', each keeping its vector."""
        if payloads:
            ids = [pid for pid, _ in payloads]
            self.index.copy_points(ids, ids, [payload for _, payload in payloads])

    def _unchanged_filtered(self, entries: Iterable[FileEntry]) -> Iterator[FileEntry]:
        """The files of `entries` (the walk's, or a list's) in this shard that need
        embedding: not unchanged since their point was written, not known bad."""
        chunk: list[FileEntry] = []
        ids: list[str] = []  # chunk's point ids, computed once a file (a hash each)

        def flush():
            stored = {r.id: r.payload for r in self.index.retrieve(ids)}
            new, new_ids, older = [], [], []
            rewrites: dict[str, dict] = {}  # id -> its payload as the file is reached now
            stale: list[tuple[str, str]] = []  # (id, path) of points whose facts an older reader made
            from_before_dev: set[str] = set()
            for entry, pid in zip(chunk, ids):
                reached_now = False
                if pid in stored:  # how the walk reached it now, with how earlier runs did
                    via, direct, reached_now = merged_reach(stored[pid], entry)
                    if (via, direct) != (entry.via, entry.direct):
                        entry = replace(entry, via=via, direct=direct)
                unchanged = pid in stored and _is_unchanged(stored[pid], entry)
                if unchanged and not self._edited_in_place(stored[pid], entry):
                    self.summary.unchanged += 1
                    if "fingerprint" not in stored[pid]:
                        older.append(entry)  # facts read again too
                        continue
                    if entry.dev >= 0 and recorded_dev(stored[pid]) != entry.dev:
                        # Mounted again under another device number (a share, a USB disk), or
                        # a point from before `dev` was recorded (upgraded): the record follows,
                        # or moves out of its folder would look like a drive not mounted.
                        if recorded_dev(stored[pid]) is None:
                            self._relinker.announce(reading=False)
                            from_before_dev.add(pid)
                        rewrites[pid] = with_reach({**stored[pid], "dev": entry.dev}, entry.via, entry.direct)
                    elif reached_now:  # reached through a link it was not known by
                        rewrites[pid] = with_reach(stored[pid], entry.via, entry.direct)
                    if facts_outdated(stored[pid]):  # the payload's word: a current point reads nothing
                        stale.append((pid, entry.path))
                elif (reason := self.known_bad.reason(entry.path, entry.size, entry.mtime_ns)) is not None:
                    self.summary.known_bad += 1
                    if pid in stored:  # the point of what the file was before it went bad
                        self._skip(entry.path, f"{reason} [found by an earlier run; {LOST_POINT_NOTE}]", LOST_POINT)
                        self._unusable_ids.append(pid)
                    else:
                        self._skip(entry.path, f"{reason} [found by an earlier run; the file is unchanged]", AS_BEFORE)
                else:
                    if pid in stored:  # changed since it was embedded: maybe another's content now
                        self._changed_ids[entry.path] = pid
                    new.append(entry)
                    new_ids.append(pid)
            chunk.clear()
            ids.clear()
            refreshed = self._relinker.refresh_facts([(pid, rewrites.get(pid, stored[pid]), path)
                                                      for pid, path in stale])
            self.summary.upgraded += len(from_before_dev | refreshed.keys())
            self._rewrite(list({**rewrites, **refreshed}.items()))
            self._relinker.upgrade(older)
            yield from self._relinker.relink(new, new_ids)  # moved or copied files keep their vectors
            # A walk of unchanged, moved or copied files embeds nothing for minutes on a
            # large library: its counts are the progress.
            self._show()

        shard = self.options.shard
        for entry in entries:
            if self._stopped.is_set():
                break
            self.walked += 1
            pid = point_id(entry.path)
            if shard is not None and not in_shard(pid, shard):
                continue
            self.summary.found += 1
            if self.options.prune:
                self.seen_ids.add(pid)
            chunk.append(entry)
            ids.append(pid)
            if len(chunk) >= LOOKUP_CHUNK:
                yield from flush()
        if chunk:
            yield from flush()
        self.walk_done = True

    def _twins(self) -> Iterator[FileEntry]:
        """The files held back for a byte-identical twin this run embedded, now that its
        point is written: each gets its vector, by lookup chunks; those whose twin could
        not be embedded are embedded themselves."""
        held = self._relinker.take_held()
        for i in range(0, len(held), LOOKUP_CHUNK):
            if self._stopped.is_set():
                return  # the next run meets them as new files
            yield from self._relinker.relink(held[i:i + LOOKUP_CHUNK], hold=False)
            self._show()

    def _embed(self, entries: Iterable[FileEntry]) -> None:
        """Decode, encode and upsert `entries` batch by batch, every write in when it returns."""
        batch: list[tuple[FileEntry, Decoded | Prepared]] = []
        decoded = self._decoded(entries)
        try:
            for item in decoded:
                batch.append(item)
                if len(batch) >= self.options.batch_size:
                    self._commit(batch)
                    batch = []
                self._show()
                if self._stopped.is_set():
                    break
        finally:
            decoded.close()  # a stop: the decoders end here, not at garbage collection
        if batch:
            self._commit(batch)
        self._drain_writes()

    def _edited_in_place(self, payload: dict, entry: FileEntry) -> bool:
        """With --recheck: whether a file unchanged by size and mtime holds other bytes
        than its point was made from (a point without a fingerprint is upgraded, below)."""
        if not self.options.recheck or "fingerprint" not in payload:
            return False
        try:
            return fingerprint(entry.path, entry.size) != payload["fingerprint"]
        except OSError:
            return False  # unreadable now: left as it is

    def _decoded(self, entries: Iterable[FileEntry]) -> Iterator[tuple[FileEntry, Decoded | Prepared]]:
        """Decode in a process pool, in order, with a bounded number in flight; in this
        process when there are no workers or only a few files (under IN_PROCESS_BELOW
        batches), which then do not wait for the pool to start."""
        opts = self.options
        entries = self._counted_from_the_first(entries)
        few = list(itertools.islice(entries, opts.batch_size * IN_PROCESS_BELOW))
        in_process = opts.workers == 0 or len(few) < opts.batch_size * IN_PROCESS_BELOW
        jobs = ((e, self._job(e.path)) for e in itertools.chain(few, entries))
        if in_process:
            for entry, (function, job) in jobs:
                yield from self._accept(entry, function(job))
            return
        # The decoders ignore Ctrl-C (decoder_init) and SIGHUP (TaskPool), which a terminal
        # and a closing shell send to the whole process group: this process stops them
        # (closing in_order, below) once it has committed what it holds, and no worker
        # prints a traceback meanwhile. They import only PIL, numpy and the kernel's light
        # modules: no torch, transformers or onnxruntime (tests/ingest/test_decoder_crops.py).
        # A decoder that dies (the OOM killer, kill -9) costs only the file it held.
        window = max(opts.workers * 4, opts.batch_size * 2)
        decoded = in_order(((entry, function, job) for entry, (function, job) in jobs), opts.workers, window,
                           initializer=decoder_init, say=self.progress.message)
        try:
            for entry, outcome in decoded:
                if isinstance(outcome, WorkerDied):
                    outcome = (entry.path, None, f"the decoding process died while reading it ({outcome.how})", False)
                yield from self._accept(entry, outcome)
        finally:
            decoded.close()  # a stop: the decoders end here, not at garbage collection

    def _counted_from_the_first(self, entries: Iterable[FileEntry]) -> Iterator[FileEntry]:
        """`entries`, noting when the first came: the count of image names for the ETA
        starts COUNT_AFTER seconds later if the walk is still going (_show)."""
        for entry in entries:
            if self._first_to_embed is None:
                self._first_to_embed = time.monotonic()
            yield entry

    def _accept(self, entry: FileEntry, outcome) -> Iterator[tuple[FileEntry, Decoded | Prepared]]:
        _, decoded, reason, lasting = outcome
        changed = self._changed_ids.pop(entry.path, None)
        if decoded is None:
            lost = lasting and changed is not None
            self._skip(entry.path, f"{reason or 'unknown error'} [{LOST_POINT_NOTE}]" if lost else
                       reason or "unknown error", LOST_POINT if lost else NEW)
            if lasting:
                self.known_bad.remember(entry.path, entry.size, entry.mtime_ns, reason)
                self.known_bad.checkpoint()  # kept even if this run is killed
                if changed is not None:
                    self._unusable_ids.append(changed)
        else:
            self.known_bad.forget(entry.path)
            self.report.resolved(entry.path)
            if decoded.warnings:
                self.summary.warned += 1
                self.report.warn(entry.path, decoded.warnings)
            yield entry, decoded

    def _commit(self, batch: list[tuple[FileEntry, Decoded | Prepared]]) -> None:
        """Encode a batch here, upsert it on the writer thread, so the next batch's
        encoding overlaps this one's write (a server round trip, or edge's WAL)."""
        batch, vectors = self._encode(batch)
        if not batch:
            return
        if self.summary.first_batch_seconds is None:
            self.summary.first_batch_seconds = round(time.monotonic() - self._started, 3)
        ids = [point_id(e.path) for e, _ in batch]
        payloads = [payload_for(e, d) for e, d in batch]
        vectors = np.asarray(vectors, dtype=np.float32)
        while len(self._writes) >= 2:  # bound memory: at most two batches in flight
            self._finish_write()
        self._writes.append(self._writer.submit(self._write, ids, vectors, payloads))

    def _write(self, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        """On the writer thread: the upsert, and its count. Counted here, where no
        signal is raised: counted by the main thread, a Ctrl-C or SIGTERM landing while
        it waited for the write (or between handing it over and noting it) left a
        committed batch out of the "stopped: ingested N" it prints."""
        self.index.upsert(ids, vectors, payloads)
        self.summary.embedded += len(ids)  # only this thread adds to it while batches are in flight

    def _encode(self, batch: list[tuple[FileEntry, Decoded | Prepared]]):
        """(the batch, its vectors). The decoders' crops go to the model as they are;
        a crop made for another resize or crop than the model's (the decoders started
        from the model folder's files, and the loaded model says otherwise), or a
        whole image where crops are wanted (or the reverse), is made again here, and
        later jobs use the model's own preprocessing. A file that cannot be read again
        is skipped."""
        while True:
            preprocess = self.preprocess
            geometry = preprocess.geometry if preprocess is not None else None
            redone = []
            for entry, item in batch:
                fits = (isinstance(item, Prepared) and item.geometry == geometry) if geometry is not None \
                    else isinstance(item, Decoded)
                if not fits:
                    function, job = self._job(entry.path)
                    outcome = function(job)
                    if outcome[1] is None:  # gone or changed since: skipped, as the decoders would
                        list(self._accept(entry, outcome))
                        continue
                    item = outcome[1]  # its warnings were reported the first time
                redone.append((entry, item))
            batch = redone
            if not batch:
                return batch, None
            if geometry is None:
                return self._finite_rows(batch, self.encoder.encode_images,  # type: ignore[union-attr]
                                         [d.image for _, d in batch])  # type: ignore[union-attr]
            try:
                crops = np.stack([d.pixels for _, d in batch])  # type: ignore[union-attr]
                return self._finite_rows(batch, self.encoder.encode_crops, crops, geometry)  # type: ignore[union-attr]
            except CropsMismatch:
                model_preprocess = getattr(self.encoder, "preprocess", None)
                if model_preprocess == preprocess:  # pragma: no cover - the encoder contradicts itself
                    raise
                self._set_preprocess(model_preprocess)

    def _finite_rows(self, batch: list[tuple[FileEntry, Decoded | Prepared]], encode, *inputs):
        """(the batch, encode(*inputs)'s vectors for it), less the images the model gives
        NaN or infinity for, which are skipped: one image the model overflows on (a
        quantized or half-precision tower can) must not end an ingest of hours. A model
        that gives them for a plain grey image too is broken, and its error stops the run."""
        try:
            return batch, encode(*inputs, batch_size=self.options.batch_size)
        except NonFiniteVectors as exc:
            if not self._model_is_sound():
                raise
            kept = []
            for item, finite in zip(batch, exc.finite):
                if finite:
                    kept.append(item)
                else:
                    self._skip(item[0].path, NONFINITE_REASON)
            return kept, (exc.vectors[exc.finite] if kept else None)

    def _model_is_sound(self) -> bool:
        if self._sound is None:
            from PIL import Image

            try:
                self.encoder.encode_images([Image.new("RGB", (64, 64), (128, 128, 128))])  # type: ignore[union-attr]
                self._sound = True
            except NonFiniteVectors:
                self._sound = False
        return self._sound

    def _finish_write(self) -> None:
        self._writes.popleft().result()  # re-raises a failed write here, in order

    def _drain_writes(self) -> None:
        while self._writes:
            self._finish_write()

    def _estimated_total(self) -> int | None:
        """The count of image names (ImageCount), as this shard's share: the count is
        every shard's files, `found` this shard's. None until it is done."""
        total = self._count.total if self._count is not None else None
        if total is not None and self.options.shard is not None:
            total = round(total / self.options.shard[1])
        return total

    def to_embed(self) -> int | None:
        """How many files this call embeds in all, for an ETA (None: not known yet):
        known once the walk is done; while it is under way, estimated from the count of
        image names (ImageCount), the files still to walk taken to need embedding as
        often as those walked did."""
        s = self.summary
        settled = s.unchanged + s.skipped - s.unreadable_folders + s.moved + s.copied
        if self.walk_done:
            return s.found - settled
        total = self._estimated_total()
        if total is None or not s.found:
            return None
        needing = s.found - settled
        return max(s.embedded, needing + round(max(0, total - s.found) * needing / s.found))

    def _show(self, force: bool = False) -> None:
        if not self._show_progress:
            return
        s = self.summary
        if (self._count is not None and not self.walk_done and self._first_to_embed is not None
                and time.monotonic() - self._first_to_embed >= COUNT_AFTER):
            self._count.start()
        if s.embedded and self._rate_from is None:
            self._rate_from = (time.monotonic(), s.embedded)  # the first batch in: the steady rate from here
        rate, eta = self.progress.rate_and_eta(s.embedded, self.to_embed(), since=self._rate_from)
        found = f"{s.found}" + ("" if self.walk_done else "+")  # + while still walking
        estimated = self._estimated_total() if not self.walk_done else None
        if estimated is not None:
            found += f" of ~{max(estimated, s.found)}"
        relinked = "".join(f", {name} {count}" for name, count in (("moved", s.moved), ("copied", s.copied)) if count)
        self.progress.update(
            f"found {found}, embedded {s.embedded}, unchanged {s.unchanged}{relinked}, skipped {s.skipped}, "
            f"{rate:.1f} img/s, ETA {eta}", force=force)

    def _prune(self, roots: Sequence[str]) -> None:
        """Remove the points under `roots` (this shard's) whose files the walk leaves out
        or that are gone, by the rules of ingest/prune.py, and those of files reached
        through links under `roots` that no longer reach them (and nothing else does);
        what they leave alone is said in summary.not_pruned."""
        shard = self.options.shard
        held: set[str] = set()  # nested roots scroll some points twice
        folders: Counter = Counter()
        unseen: list[tuple[str, str, int | None]] = []
        still_reached: list[tuple[str, str, int | None]] = []  # through a link: only the gone rules judge them
        unreached: list[str] = []
        rewrites: dict[str, dict] = {}
        for root in roots:
            for record in self.index.scroll(under=root):
                if record.id in held or (shard is not None and not in_shard(record.id, shard)):
                    continue
                held.add(record.id)
                path = path_of(record.payload)
                folders[os.path.dirname(path)] += 1
                via, direct = recorded_reach(record.payload)
                if not via:
                    if record.id not in self.seen_ids:
                        unseen.append((record.id, path, recorded_dev(record.payload)))
                    continue
                reach = self._reach_left(record.id, path, via, direct, roots)
                if reach is None:
                    unreached.append(record.id)
                    continue
                if record.id not in self.seen_ids:
                    still_reached.append((record.id, path, recorded_dev(record.payload)))
                if reach != (via, direct):
                    rewrites[record.id] = with_reach(record.payload, *reach)
        ruled_out, unseen = left_out(unseen, roots, self.options.exclude)
        stale, self.summary.not_pruned = prune_plan(folders, unseen + still_reached, self.options.allow_missing)
        stale += ruled_out + unreached
        gone = set(stale)
        self._rewrite([(pid, payload) for pid, payload in rewrites.items() if pid not in gone])
        for i in range(0, len(stale), 1000):
            self.index.delete(ids=stale[i:i + 1000])
        self.summary.removed += len(stale)

    def _reach_left(self, pid: str, path: str, via: list[str], direct: bool | None, roots: Sequence[str]
                    ) -> tuple[list[str], bool | None] | None:
        """What still reaches a file reached through links (`via`), by a prune of
        `roots`: its links under them that still lead to it (or cannot be told now),
        its links elsewhere (another root's, judged by that root's prune), and whether a
        root reaches it at its own path (not one of `roots` that now leaves it out);
        None where nothing does."""
        exclude = self.options.exclude
        left = [v for v in via if root_of(v, roots) is None or reached_via(v, path, roots, exclude) is not False]
        if (direct and pid not in self.seen_ids and root_of(path, roots) is not None
                and walked_path(path, roots, exclude) is None):
            direct = False  # under a root that now leaves it out (hidden, --exclude'd)
        return (left, direct) if left or direct else None

    # -- calls ------------------------------------------------------------------
    def _begin(self, started: float | None = None) -> float:
        """A fresh summary and walk state for a call; its start time (`started`, or now)."""
        with self._counts_lock:
            self.summary = IngestSummary()
            self._relinker = Relinker(self.index, self.progress.message, self.summary,
                                      allow_missing=self.options.allow_missing, settle=self._drain_writes)
        self.walk_done = False
        self._count = None  # a call of its own counts (_run), or none (run_files: its list is known)
        self._rate_from = None
        self._first_to_embed: float | None = None  # when the first file to embed came
        self.walked = 0
        self.seen_ids = set()
        self._again: dict[str, list[str]] = {}  # path -> the links by which the walk met it again
        # Points whose file changed since and can no longer be used (corrupt now): their
        # vector is of a picture that is not there any more. Removed once the writes are in.
        self._changed_ids: dict[str, str] = {}  # path -> id, of files changed since embedded
        self._unusable_ids: list[str] = []
        self._started = time.monotonic() if started is None else started
        return self._started

    def _begin_writing(self) -> float:
        """_begin for a call that writes points: the collection made first, and its
        time (a new model's first load, seconds of torch) counted in the call's."""
        called = time.monotonic()
        self._ensure_collection()
        return self._begin(called)

    def _end(self, started: float) -> None:
        """The call's time, and its counters into the totals."""
        with self._counts_lock:
            self.summary.seconds = time.monotonic() - started
            _add(self._finished, self.summary)
            self._finished_last = self.summary

    _finished_last: IngestSummary | None = None  # the summary already in _finished

    def _ensure_collection(self) -> None:
        if not self._collection_ready:
            self.index.ensure_collection(self.encoder.identity)
            self._collection_ready = True

    def _load(self, entries: Iterable[FileEntry], filtered: bool = True) -> None:
        """Decode, encode and upsert `entries` (already walked), batch by batch; unless
        `filtered` is False (a reindex, which knows what it needs), after dropping the
        unchanged, known bad and moved ones."""
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipsearch-upsert")
        self._writes: deque = deque()
        try:
            self._embed(self._unchanged_filtered(entries) if filtered else entries)
            self._embed(self._twins())
            if self._unusable_ids:
                self.index.delete(ids=self._unusable_ids)
                self.summary.removed += len(self._unusable_ids)
                self._unusable_ids = []
        finally:
            # Whatever happened, batches already handed to the writer are committed,
            # and counted by it (a stopped run says how many it kept).
            self._writer.shutdown(wait=True)
            self._writes.clear()

    def run(self, roots: Sequence[str], *, allow_empty: bool = False, show_progress: bool = True,
            within: Sequence[str] | None = None) -> IngestSummary:
        """Ingest every image file under `roots`; the run's summary. No image file at
        all is an error (a typo'd folder, most likely) unless `allow_empty`.
        `show_progress=False`: no progress line (a watcher's folder moved in).
        `within`: the library's folders (canonical) that `roots` lie in, a watcher's:
        a root that is a link into another folder is then walked as reached through
        that link (walk_images), and pruned as such."""
        canonical = resolve_roots(roots)
        walked = canonical if within is None else [spelled(os.fsdecode(root)) for root in roots]
        self._show_progress = show_progress
        try:
            return self._run(walk_images(walked, self.options.exclude, on_error=self._walk_skip, within=within,
                                         on_again=self._reached_again), walked, allow_empty)
        finally:
            self._show_progress = True

    def run_entries(self, entries: Sequence[FileEntry]) -> IngestSummary:
        """Embed exactly these files (a reindex's: stored paths, stat'ed), as run() does
        (bulk load, progress with an ETA, the skip report, the HNSW build at the end),
        with no walk and no lookups: none is checked against the index."""
        return self._run(entries, (), allow_empty=True, counted=len(entries))

    def _run(self, entries: Iterable[FileEntry], roots: Sequence[str], allow_empty: bool,
             counted: int | None = None) -> IngestSummary:
        started = self._begin_writing()
        building: float | None = None  # when the HNSW build began
        begun = folder_identities(roots)
        # The walk goes in step with the embedding: a count of the names gives the ETA
        # meanwhile, started once a file needs embedding (an unchanged re-run needs none).
        self._count = ImageCount(roots, self.options.exclude) if counted is None else None
        if counted is not None:  # the whole list is known: found and the ETA from the start
            self.summary.found = self.walked = counted
            self.walk_done = True
        try:
            try:
                with self.index.bulk_load():
                    self._load(entries, filtered=counted is None)
                self._record_reached_again()
                lost = [] if self._stopped.is_set() else lost_roots(begun)
                if lost:
                    self.summary.unreached = unreached_line(lost)
                if self.options.prune and not self._stopped.is_set():
                    # under a root lost during the run every file looks deleted: left for the next run
                    self._prune([root for root in roots if root not in lost])
                self._show(force=True)
                self.progress.finish()
                for line in self.report.lines():
                    self.progress.message(line)
            finally:
                self.report.close()
                self.known_bad.save(roots)  # what this run learnt, even if it was stopped
            if self.walked == 0 and not allow_empty and not self._stopped.is_set() and not (
                    self.summary.removed or self.summary.not_pruned or self.summary.unreached):
                # a shard that happens to get no files is not an error
                some = f" that could be read ({self.summary.found} skipped: see the lines above)" \
                    if self.summary.found else ""
                raise ClipsearchError(f"no image files{some} found under {', '.join(roots)}")
            if self.index.backend == "edge" and self.options.optimize:
                count = self.index.count()
                from clipsearch.index.edge import graph_pending, hnsw_min_points

                # also after a run killed inside the build: nothing left to embed, graph unfinished
                if count >= hnsw_min_points() and (self.summary.embedded or graph_pending(self.index)):
                    last = self.index.last_graph_build()
                    took = f" (the last build, over {last[0]}, took {format_duration(last[1])})" if last else ""
                    self.progress.message(f"building the HNSW search index over {count} images{took}...")
                    building = time.monotonic()
                    self.summary.hnsw_built = self.index.optimize()
                    if self.summary.hnsw_built:
                        self.progress.message(f"built it in {format_duration(time.monotonic() - building)}")
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: what this run kept, before the CLI's last line
            self.summary.seconds = time.monotonic() - started
            stop.summary = self.summary  # type: ignore[attr-defined]  # for ingest --json (ingest/commands.py)
            if building is not None and not self._graph_pending():
                # a stop during the build is raised once it is done and recorded (EdgeIndex.optimize)
                self.progress.message(f"stopped: {self.summary.line()}; the HNSW search index was built, "
                                      "nothing is left to do")
            else:
                self.progress.message(f"stopped: {self.summary.line()}; run it again to go on from here")
            raise
        except ClipsearchError as failed:  # a full disk, a report that cannot be written: what was kept
            self.summary.seconds = time.monotonic() - started
            failed.summary = self.summary  # type: ignore[attr-defined]  # for ingest --json
            raise
        finally:
            if self._count is not None:
                self._count.stop()
            self._end(started)
        return self.summary

    def _graph_pending(self) -> bool:
        """Whether the HNSW graph is still to build; True where the index cannot say."""
        from clipsearch.index.edge import graph_pending

        try:
            return graph_pending(self.index)
        except Exception:
            return True

    def run_files(self, paths: Iterable[str], *, roots: Sequence[str] | None = None) -> IngestSummary:
        """Ingest exactly these files, by the walk's rules: a path the walk would pass
        over (hidden, --exclude, not an image extension, a folder, gone) is ignored;
        with `roots` (canonical folders) so is one outside them or under a hidden or
        excluded folder below its root. Unchanged files are skipped as in run(); a bad
        file is skipped and reported, never raised. No bulk_load (meant for small
        batches) and no HNSW build. Returns this call's summary."""
        started = self._begin_writing()
        extensions = image_extensions()
        self._show_progress = False  # a watcher's batches: no progress line each time
        try:
            entries: dict[str, FileEntry] = {}
            for path in paths:
                entry = image_file(os.fsdecode(path), roots, self.options.exclude, extensions, on_error=self._skip)
                if entry is not None:
                    entries.setdefault(entry.path, entry)
            self._load(entries.values())
        finally:
            self._show_progress = True
            self.report.close()
            self.known_bad.save(())
            self._end(started)
        return self.summary

    def remove(self, paths: Iterable[str]) -> int:
        """Delete the points of `paths` that are gone from disk: a file's point, and for
        a path that was a folder every point under it. A path that exists (again) is
        left alone. A file reached through a link that was one of `paths` or under one
        (its point's `via`) loses that way to it, and its point goes once nothing
        reaches it (prune.reached_via). Returns how many points were removed (also in
        summary.removed)."""
        started = self._begin()
        removed = 0
        try:
            gone = [canonical_path(os.fsdecode(p)) for p in paths]
            gone = list(dict.fromkeys(p for p in gone if not os.path.lexists(p)))
            if not gone or not self.index.exists():
                return 0
            for i in range(0, len(gone), LOOKUP_CHUNK):
                chunk = gone[i:i + LOOKUP_CHUNK]
                ids = [point_id(p) for p in chunk]
                found = {r.id for r in self.index.retrieve(ids)}
                if found:
                    self.index.delete(ids=sorted(found))
                    removed += len(found)
                for path, pid in zip(chunk, ids):
                    self.known_bad.forget(path)
                    if pid not in found:  # a folder, or a link by which files were reached
                        removed += self._remove_under(path)
            self.known_bad.save(gone)  # and the known-bad files under a removed folder
        finally:
            self.summary.removed += removed
            self._end(started)
        return removed

    def _remove_under(self, gone: str) -> int:
        """The points under the path `gone` (a folder or link deleted): those whose own
        path lies there go; those reached through a link there lose it, and go where
        nothing else reaches them. How many went. `gone` is a deletion a watcher saw
        (an unmounted share sends no event for its names): a link there is deleted,
        even where its folder is not on the file system of the files it reached, which
        prune.reached_via cannot tell from a share not mounted."""
        doomed: list[str] = []
        rewrites: list[tuple[str, dict]] = []
        below = gone.rstrip(os.sep) + os.sep
        for record in self.index.scroll(under=gone):
            path = path_of(record.payload)
            via, direct = recorded_reach(record.payload)
            if path == gone or path.startswith(below) or not via:
                doomed.append(record.id)
                continue
            left = [v for v in via if not (v == gone or v.startswith(below))]
            if not left and not direct:
                doomed.append(record.id)
            elif left != via:
                rewrites.append((record.id, with_reach(record.payload, left, direct)))
        self._rewrite(rewrites)
        for i in range(0, len(doomed), 1000):
            self.index.delete(ids=doomed[i:i + 1000])
        return len(doomed)

def _add(total: IngestSummary, part: IngestSummary) -> None:
    for name in ("found", "embedded", "unchanged", "skipped", "known_bad", "unreadable_folders", "warned", "moved",
                 "copied", "upgraded", "removed", "seconds"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.hnsw_built = total.hnsw_built or part.hnsw_built
    total.not_pruned = part.not_pruned or total.not_pruned
    total.unreached = part.unreached or total.unreached
    if total.first_batch_seconds is None:
        total.first_batch_seconds = part.first_batch_seconds


def lazy_encoder(settings: Settings, options: IngestOptions):
    """The encoder ingest() uses: loads the model only when a file needs embedding,
    and encodes images with the ONNX image tower on a CPU, with onnxruntime's threads
    chosen together with the decoding workers (ingest/cores.py)."""
    from clipsearch.encoders import LazyEncoder
    from clipsearch.progress import stderr_line

    def quiet(_: str) -> None:
        pass

    plan = plan_cores(options.workers)
    # The one line a first-time export prints is progress, which --quiet leaves out.
    return LazyEncoder(settings.model, settings.device, precision=options.precision or config.value("precision"),
                       say=stderr_line if options.verbose else None, tell=quiet if options.quiet else stderr_line,
                       threads=plan.threads, spin=plan.spin)


def _checked_folders(folders) -> list[str]:
    """ingest()'s folders as str paths: one alone, or a list (not a string's letters)."""
    if isinstance(folders, (str, bytes, os.PathLike)):
        folders = [folders]
    if not isinstance(folders, Iterable):
        raise TypeError(f"ingest(): folders= must be a folder (str, bytes or os.PathLike) or a list of them, "
                        f"got {type(folders).__name__}")
    folders = list(folders)
    for folder in folders:
        if not isinstance(folder, (str, bytes, os.PathLike)):
            raise TypeError(f"ingest(): folders= must hold folders (str, bytes or os.PathLike), "
                            f"got {type(folder).__name__} in it")
    if not folders:
        raise UsageError("ingest(): folders= names no folder")
    return [os.fsdecode(folder) for folder in folders]


def ingest(folders: Sequence[str | bytes | os.PathLike] | str | bytes | os.PathLike, encoder=None,
           index: Index | None = None, options: IngestOptions | None = None, progress: Progress | None = None, *,
           settings: Settings | None = None) -> IngestSummary:
    """Embed the images under `folders` into an index; returns the run's summary.

        clipsearch.ingest(["/photos"])                               # the configured index and model
        clipsearch.ingest(["/photos"], settings=Settings.resolve(index="/data/idx"),
                          options=IngestOptions(prune=True))

    Without `index`, opens (and may create) the one `settings` names (default: the
    environment's, as the CLI does) and closes it after; without `encoder`, the
    model `settings` names (none named: the one the collection records) loads only
    once a file needs embedding (LazyEncoder). One folder may be given alone, not in a
    list (a string is not read as a list of its letters).
    """
    from clipsearch.index import collection_precision, open_index, with_collection_model

    folders = _checked_folders(folders)
    if settings is not None and not isinstance(settings, Settings):
        raise TypeError(f"ingest(): settings= must be a clipsearch Settings (Settings.resolve(index=...)), "
                        f"got {type(settings).__name__}")
    if options is not None and not isinstance(options, IngestOptions):
        raise TypeError(f"ingest(): options= must be a clipsearch IngestOptions, got {type(options).__name__}")
    if index is None or encoder is None:
        settings = settings or Settings.resolve()
    options = options or IngestOptions()
    if options.workers and (line := unguarded_call_line()) is not None:
        # It runs now, decoding in this process; with more files it would start the spawn
        # pool, which runs the script again in every worker (clipsearch/pools.py).
        from clipsearch.progress import stderr_line

        stderr_line(f"warning: ingest() is called at the top level of {shown(sys.modules['__main__'].__file__)}, "
                    f"line {line}: call it under `if __name__ == \"__main__\":` (README, Python API), or "
                    f"{options.batch_size * IN_PROCESS_BELOW} images or more to embed will stop it when its "
                    "decoding processes start")
    if not options.precision:  # CLIPSEARCH_PRECISION names one too; else the collection's, else fp32
        options = replace(options, precision=config.env_value("precision") or "")
    ours = encoder is None
    if ours:  # built (lazily: no model loads) before anything is created: it checks the options
        encoder = lazy_encoder(settings, options)

    def run(opened: Index):
        nonlocal encoder
        if ours:  # the model and precision the collection records, unless they were named
            from clipsearch.progress import stderr_line

            assert settings is not None
            say = None if options.quiet else stderr_line
            stored = opened.stored_identity()  # None where this run is to make the collection
            adopted = with_collection_model(settings, stored, say)
            precision = encoder.precision
            if not options.precision:
                precision = collection_precision(stored, precision, opened.collection, say)
            if adopted is not settings or precision != encoder.precision:
                encoder = lazy_encoder(adopted, replace(options, precision=precision))
        return Ingestor(encoder, opened, options, progress).run(folders)

    if index is not None:
        return run(index)
    resolve_roots(folders)  # checked before the index is created: a typo leaves no empty index behind
    if settings.model:  # a mistyped model folder too (a hub id is checked when it loads)
        from clipsearch.encoders.location import resolve_model_location

        resolve_model_location(settings.model)
    if options.report:
        check_report_path(options.report)
    with open_index(settings, create=True) as opened:
        return run(opened)
