"""The embedded default: Qdrant's own engine in-process (qdrant-edge-py).

Layout of an index folder:

    <index>/clipsearch-index.json    marks the folder as a clipsearch index
    <index>/<collection>.lock        exclusive lock, beside (not inside) the shard
    <index>/<collection>/model.json  identity of the model that made the vectors
    <index>/<collection>/state.json  the point count at the last clean close, and how far
                                     the shard's write-ahead log was then
    <index>/<collection>/graph.json  points written since the HNSW graph was last built
    <index>/<collection>/shard/      the edge shard (WAL, segments, payload indexes; its
                                     edge_config.json holds the layout: quantization,
                                     vectors on disk, HNSW)
    <index>/aliases.json             which collection a name means, after a reindex
    <index>/aliases.lock             held while aliases.json is rewritten

    <index>/.<collection>.creating/          a collection being created, renamed into
                                             place whole (collection names never start
                                             with a dot)

    <index>/<collection>/shard.optimizing/   a copy being optimized (optimize_offline)
    <index>/<collection>/shard.old/          the shard being swapped out (optimize_offline)

Edge point ids come back as uuid.UUID; they leave this module as str, like
qdrant-client's. HNSW is built only by EdgeShard.optimize(), which blocks and holds the
GIL for the whole build (40 s at 60k x 512-d). optimize() calls it in-process: ingest
does so at the end of a large load, never under a query. optimize_offline() builds the
graph in a child process on a copy of the shard and swaps the copy in, so that a
process serving queries from threads keeps answering meanwhile.

Faults. A kill -9 at any moment leaves an index that opens: the engine replays its WAL,
a collection appears whole or not at all, an offline build is finished or undone at the
next open. Damage (a truncated or missing file, a marker from a newer clipsearch) is
one line saying what is wrong and what to do, never a traceback and never silently
empty results: state.json catches points that vanished (the engine loads a shard with
missing segments as a smaller one), and a hit without its payload is refused. A full
disk is refused before the engine writes: it maps its files, and a write into a mapped
page with no space behind it kills the process with SIGBUS instead of raising.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import config
from ..config import DEFAULT_COLLECTION
from ..encoders.identity import ModelIdentity
from ..errors import ClipsearchError
from ..photo_facts import joined_parts
from .base import DEFAULT_HNSW_EF, PAYLOAD_INDEXES, Hit, Index, Record, Where, under_value
from .layout import Layout
from .lockfile import ExclusiveLock, InUseError
from .versions import is_version_of, read_aliases, version_name, write_aliases

MARKER = "clipsearch-index.json"
FORMAT = 1
MODEL = "model.json"
STATE = "state.json"
# The engine's record of the last write it has applied ({"ack_index": N}, in the shard's
# wal/ folder): every write raises it, a read-only open leaves it. state.json keeps the
# value it had at the close that counted the points; another value means the shard was
# written since by a clipsearch that keeps no state.json (one older than it), whose
# deletions lowered the count: an older writer, not damage.
WAL_ACK = Path("wal") / "first-index"
# Points written since the graph was last built (<collection>/graph.json): the engine's
# own measure (points less indexed vectors) misses points that replaced deleted ones in
# the graph, as a moved folder's do.
GRAPH = "graph.json"
# A migrate into the collection that has not finished (Index.unfinished_copy).
COPYING = "copying.json"
# The migrates into the collection that finished, by source, each with the points the
# collection held then (finished_copies: migrate.py refuses to copy again over writes
# made since).
COPIED = "copied.json"
# Qdrant's defaults, for an HNSW configuration that sets only some of them.
QDRANT_HNSW_M, QDRANT_HNSW_EF_CONSTRUCT, QDRANT_FULL_SCAN_THRESHOLD_KB = 16, 100, 10_000
DEFAULT_EMBEDDED_LAYOUT = Layout(quantization="none", vectors_on_disk=False, hnsw_m=QDRANT_HNSW_M,
                                 hnsw_ef_construct=QDRANT_HNSW_EF_CONSTRUCT)
# Below this many points a brute-force scan is about as fast as HNSW and building
# the graph is wasted time. The default of the hnsw_min_points setting (config.py),
# which tests lower to build a graph over a few hundred images: read hnsw_min_points().
HNSW_MIN_POINTS = 20_000
# The engine indexes a segment only past this many KiB of vectors (its default); a
# lower hnsw_min_points lowers it too, or the graph would never be built (below).
ENGINE_INDEXING_THRESHOLD_KB = 10_000
# Free space the engine may need for one write without asking: a new 32 MiB vector
# chunk and a new 32 MiB WAL segment. Writes are refused below it (see the docstring).
WRITE_RESERVE = 64 << 20
# What a new collection takes at once, before its first point: its WAL segment, vector
# and payload storage (measured: 42 MB on tmpfs). Creating one needs this and the
# reserve for the first write: "needs 64 MB" with 70 MB free created the collection and
# then refused its first photo, the collection empty.
NEW_COLLECTION = 48 << 20
# Free space an open needs beyond the pages it maps (edge_config.json is rewritten at
# every load; the WAL is replayed into the segments after a kill).
LOAD_MARGIN = 4 << 20
# Filesystems whose files are memory: a mapped page read for the first time is
# allocated there (on a disk a hole reads as zeros and costs nothing). The engine reads
# its vector chunks and payload indexes whole at load, so loading a shard on one of
# them needs room for every hole in those files (measured: 43 MiB for a fresh shard).
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
# Beside the live shard folder: the copy a child process optimizes, and the live one
# while it is being swapped out.
OPTIMIZING = "shard.optimizing"
OLD = "shard.old"

# The child of optimize_offline(): optimize the shard copy at argv[1] with the
# configuration saved in it (the parent saved its indexing threshold and layout
# there), flush, close, and print whether optimize() changed anything. It dies with its parent (PR_SET_PDEATHSIG,
# Linux) so that a killed server leaves no orphan writing into a folder the next open
# removes; it imports only qdrant_edge, not clipsearch.
_OPTIMIZE_CHILD = """
import os, sys
parent = int(sys.argv[2])
try:
    import ctypes, signal
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != parent:
    sys.exit("parent gone")
import qdrant_edge as e
shard = e.EdgeShard.load(sys.argv[1], None)
changed = shard.optimize()
shard.flush()
shard.close()
print("OPTIMIZED" if changed else "UNCHANGED", flush=True)
"""


# The lock files this process holds, by (device, inode): an open of one of them here
# is told it is open in this process, and never reads the file while its holder here
# rewrites it (which read as "in use by pid unknown"). Every lock of this module is
# taken under _HELD_HERE_LOCK; reentrant, as a finalizer may give one back meanwhile.
_HELD_HERE: set[tuple[int, int]] = set()
_HELD_HERE_LOCK = threading.RLock()


class _ProcessLock(ExclusiveLock):
    """ExclusiveLock that knows the ones this process holds (_HELD_HERE)."""

    _key: tuple[int, int] | None = None

    def acquire(self) -> "_ProcessLock":
        with _HELD_HERE_LOCK:
            if _file_key(self.path) in _HELD_HERE:
                raise InUseError(
                    f"{self.what} is in use by pid {os.getpid()}; it is already open in this process: open it once "
                    "(open_index) and search through it (Searcher), see README (Python API)")
            super().acquire()
            self._key = _file_key(self.path)
            if self._key is not None:
                _HELD_HERE.add(self._key)
        return self

    @property
    def held(self) -> bool:
        return self._key is not None

    def release(self) -> None:
        with _HELD_HERE_LOCK:
            key, self._key = self._key, None
            try:
                super().release()
            finally:
                if key is not None:
                    _HELD_HERE.discard(key)


def _file_key(path: str) -> tuple[int, int] | None:
    """The file's (device, inode); None where there is none. Not its name: a lock file
    deleted while held and made again is a lock of its own (the engine's lock on its
    write-ahead log then says whether the collection is in use)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _edge():
    import qdrant_edge

    return qdrant_edge


def hnsw_min_points() -> int:
    """The hnsw_min_points setting, read now (tests lower it through the environment);
    unset, HNSW_MIN_POINTS (the table's default, which a test checks is the same)."""
    from_env = config.env_value("hnsw_min_points")
    return HNSW_MIN_POINTS if from_env is None else int(from_env)


def indexing_threshold_kb(dim: int) -> int:
    """The engine's per-segment indexing threshold that matches hnsw_min_points: a
    segment of that many vectors is indexed. Never above the engine's default, which
    the default setting reaches from 128 dimensions up (CLIP's 512 included): indexes
    made before the setting existed keep the threshold they had."""
    return max(1, min(ENGINE_INDEXING_THRESHOLD_KB, hnsw_min_points() * dim * 4 // 1024))


def graph_pending(index: Index) -> bool:
    """Whether an embedded index holds enough points for HNSW and vectors the graph
    does not cover yet: what a run killed before or during its build leaves, so the
    next ingest builds it even with nothing new to embed."""
    return isinstance(index, EdgeIndex) and index.graph_pending()


def _megabytes(n: int, up: bool = False) -> str:
    """MiB to a tenth, rounded down (what is free) or up (what is needed): 63.9 free
    of 64.0 needed, never 64.0 of 64.0."""
    tenths = n * 10 / (1 << 20)
    return f"{(math.ceil(tenths) if up else math.floor(tenths)) / 10:.1f} MB"


def _is_disk_full(text: str) -> bool:
    return "os error 28" in text or "No space left on device" in text


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _filesystem_type(folder: Path) -> str:
    """The type of the filesystem holding `folder` (Linux: /proc/self/mounts; the
    last of stacked mounts wins), '' when unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = os.path.realpath(folder)
    best, kind = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 is a space
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def _holes(segments: Path) -> int:
    """Bytes of the engine's files under `segments` that are not allocated yet, but
    for the payload storage, which a load does not read whole (measured)."""
    total = 0
    for folder, dirs, files in os.walk(segments):
        dirs[:] = [d for d in dirs if d != "payload_storage"]
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            total += max(0, st.st_size - st.st_blocks * 512)
    return total


def _allocated(root: Path, apparent: bool = False) -> int:
    """Bytes of the files under `root`: allocated, or (apparent) their full sizes, which
    a plain copy writes out."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            total += st.st_size if apparent else st.st_blocks * 512
    return total


def _keyword_index():
    # On disk (mmap'd, paged in when a filter reads it) rather than Qdrant's default of
    # in memory: an in-memory keyword index on `path` (one distinct value per point) is
    # read whole at every shard load and freed at every close, about 0.45 s of a cold
    # one-shot query at 100k points (bench/COLD_QUERY_RESULTS.md); on disk it costs ~0.
    return _edge().KeywordIndexParams(on_disk=True)


def _payload_index(kind: str):
    """A payload index of `kind` (base.PAYLOAD_INDEXES), on disk like the keyword ones."""
    e = _edge()
    if kind == "datetime":
        return e.DatetimeIndexParams(on_disk=True)
    if kind == "geo":
        return e.GeoIndexParams(on_disk=True)
    return _keyword_index()


def _shard_config(dim: int, indexing_threshold_kb: int | None, layout: Layout):
    """The shard's whole configuration: qdrant-edge replaces the saved one with the one
    a load is given, so every load that passes one passes all of it."""
    e = _edge()
    quantization = {
        "int8": lambda: e.ScalarQuantizationConfig(type=e.ScalarType.Int8, always_ram=True),
        "binary": lambda: e.BinaryQuantizationConfig(always_ram=True),
    }.get(layout.quantization or "none", lambda: None)()
    hnsw = (e.HnswIndexConfig(m=layout.hnsw_m or QDRANT_HNSW_M, ef_construct=layout.hnsw_ef_construct or
                              QDRANT_HNSW_EF_CONSTRUCT, full_scan_threshold=QDRANT_FULL_SCAN_THRESHOLD_KB)
            if layout.hnsw_m is not None or layout.hnsw_ef_construct is not None else None)
    return e.EdgeConfig(
        vectors=e.EdgeVectorParams(size=dim, distance=e.Distance.Cosine, on_disk=layout.vectors_on_disk,
                                   quantization_config=quantization),
        hnsw_config=hnsw,
        optimizers=None if indexing_threshold_kb is None else e.EdgeOptimizersConfig(
            indexing_threshold=indexing_threshold_kb))


def _where_conditions(where: Where | None) -> list:
    """Where's photo filters as edge conditions (client.py says the same for a server)."""
    if not where:
        return []
    e = _edge()
    conditions = []
    if where.taken_from or where.taken_before:
        conditions.append(e.FieldCondition(key="taken", range=e.RangeDateTime(gte=where.taken_from,
                                                                              lt=where.taken_before)))
    for word in where.camera_words:  # a joined word: itself, or all its parts (photo_facts.joined_parts)
        itself = e.FieldCondition(key="camera_words", match=e.MatchValue(word))
        parts = [e.FieldCondition(key="camera_words", match=e.MatchValue(part)) for part in joined_parts(word)]
        conditions.append(e.Filter(should=[itself, e.Filter(must=parts)]) if parts else itself)
    if where.near:
        lat, lon, metres = where.near
        conditions.append(e.FieldCondition(key="location", geo_radius=e.GeoRadius(e.GeoPoint(lon=lon, lat=lat),
                                                                                  metres)))
    return conditions


def _raw_vector(record) -> list[float] | None:
    """A record's vector as the engine gives it (a list of floats)."""
    vector = record.vector
    if isinstance(vector, dict):  # the default vector is named ""
        vector = vector.get("", next(iter(vector.values()), None))
    return vector


def _vector_of(record) -> np.ndarray | None:
    vector = _raw_vector(record)
    return None if vector is None else np.asarray(vector, dtype=np.float32)


def _write_json_atomically(path: Path, data: dict) -> None:
    """Write, then rename over `path`. A failed write (a full disk) removes its
    temporary file, which would otherwise make the folder look foreign to the next open."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under root on disk, before a rename makes it the shard:
    a power cut after the swap must not find a shard whose files were still in cache."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


# What stops a command (Ctrl-C, a service stop, a terminal hanging up): held back while
# the HNSW build runs and is recorded (_stops_held).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _stops_held() -> Iterator[None]:
    """STOP_SIGNALS held back while the body runs, then handled as they would have been.
    The engine's build holds the GIL, so no handler runs before it returns anyway; but a
    stop raised as it returned, before the build was recorded, left graph.json counting
    every point as outside the graph: the run said to run it again, and the next one
    announced a build the engine had done already. Blocking the signals in this thread
    is not enough: another thread (the engine's, BLAS's) then takes a signal, and Python
    still raises it here at the next line. So each handler is also replaced, for the
    body, by one that notes the signal, and a noted signal is raised again once the
    handlers are back. Only in the main thread, the one Python runs handlers in."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)

    previous = {}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):  # ignored stays ignored
                previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending here goes to its own handler now
        for noted in dict.fromkeys(held):
            signal.raise_signal(noted)


def _is_shard(path: Path) -> bool:
    return path.joinpath("edge_config.json").is_file()


def recorded_identity(folder: str, name: str) -> ModelIdentity | None:
    """The model a collection records, read from its folder without opening or locking
    it (search reads it before the engine loads, to choose its text encoder). None where
    there is no readable record: opening the index then says what is wrong."""
    root = Path(folder)
    try:
        collection = read_aliases(root).get(name, name)
        return ModelIdentity.from_dict(json.loads((root / collection / MODEL).read_text()))
    except (OSError, ValueError, ClipsearchError):
        return None


def _layout_of(saved: dict | None) -> Layout:
    """A shard's layout from its saved configuration (EdgeIndex._saved_config; None:
    none yet, the defaults)."""
    if saved is None:
        return Layout()
    vectors = saved["vectors"][""]
    quantization = vectors.get("quantization_config") or {}
    hnsw = saved.get("hnsw_config") or {}
    return Layout(quantization="int8" if "scalar" in quantization else "binary" if "binary" in quantization
                  else "none", vectors_on_disk=bool(vectors.get("on_disk")),
                  hnsw_m=int(hnsw.get("m", QDRANT_HNSW_M)),
                  hnsw_ef_construct=int(hnsw.get("ef_construct", QDRANT_HNSW_EF_CONSTRUCT)))


class EdgeIndex(Index):
    backend = "edge"

    def __init__(self, folder: str, collection: str, create: bool = False, check: bool = False,
                 layout: Layout | None = None, oversampling: float = 2.0):
        """Open (with `create`, make) the collection. Damage found at the open is raised
        as one line; with `check` (`clipsearch status --check`) it is kept in
        `open_problems` instead, so that the rest of the index can still be examined."""
        super().__init__(folder, collection)
        self.root = Path(folder)
        self.layout = layout or Layout()  # how a collection this index creates is laid out (the embedded part)
        self.oversampling = oversampling  # searches of a quantized collection: candidates per hit, rescored
        self._shard = None
        self._lock: _ProcessLock | None = None
        self._closed = False  # by close(): every later use says so, not that the collection does not exist
        self._wrote = False  # anything written since the open: close() records the count
        self._written_since_graph: int | None = None  # graph.json, read on first need
        self._checking = check
        self.open_problems: list[str] = []
        # Seconds of each step of the last optimize_offline() (for logs and benches): the
        # flush and the swap are the only times queries wait.
        self.last_offline_phases: dict[str, float] = {}
        if not self._prepare_root(create):
            return  # nothing there yet: exists() is False, reads say so
        if not create:
            meant = read_aliases(self.root).get(self.name, self.name)
            if not self._anything_of(meant):
                self.collection = meant
                return  # a name that was never a collection (a typo): reading it leaves no lock file behind
        self._lock = self._lock_meant()
        try:
            self._recover_swap()
            self._drop_unfinished_creation()
            self._load_collection(check)
            self._warn_if_layout_differs()
        except BaseException:
            self._close_shard()
            self._lock.release()
            raise

    def _anything_of(self, collection: str) -> bool:
        """Whether `collection` has anything on disk: its folder, or a creation's staging."""
        return (self.root / collection).exists() or (self.root / f".{collection}.creating").exists()

    def _lock_meant(self) -> _ProcessLock:
        """Lock the collection the name means (aliases.json), taking `collection` from
        it. A reindex switches the name while holding the old collection's lock: an open
        that lost that race reads the table again and locks the new one."""
        for _ in range(3):
            self.collection = read_aliases(self.root).get(self.name, self.name)
            lock = _ProcessLock(str(self.root / f"{self.collection}.lock"),
                                f"index {self.root} (collection {self.collection!r})")
            try:
                lock.acquire()
            except InUseError:
                if read_aliases(self.root).get(self.name, self.name) != self.collection:
                    continue
                raise
            if read_aliases(self.root).get(self.name, self.name) == self.collection:
                return lock
            lock.release()
        raise InUseError(f"index {self.root}: the collection {self.name!r} means was switched three times while "
                         "opening it; try again")

    @property
    def _collection_dir(self) -> Path:
        return self.root / self.collection

    @property
    def _shard_dir(self) -> Path:
        return self._collection_dir / "shard"

    @property
    def _creating_dir(self) -> Path:
        return self.root / f".{self.collection}.creating"

    def check_command(self) -> str:
        """The command that examines this collection, for messages."""
        named = "" if self.name == DEFAULT_COLLECTION else f" --collection {self.name}"
        return f"`clipsearch status --check --index {self.root}{named}`"

    def _recover_swap(self) -> None:
        """Finish or undo an optimize_offline() that died (kill -9, power cut), under the
        lock. The swap renames shard -> shard.old, then shard.optimizing -> shard: so a
        missing or incomplete shard/ beside shard.old means the old one is the data (the
        optimized copy, if any, is dropped); a complete shard/ makes any shard.old and
        shard.optimizing left over."""
        collection = self._collection_dir
        old, work = collection / OLD, collection / OPTIMIZING
        if not _is_shard(self._shard_dir) and _is_shard(old):
            if self._shard_dir.exists():
                shutil.rmtree(self._shard_dir)
            os.rename(old, self._shard_dir)
            _fsync_dir(collection)
        for leftover in (old, work):
            if leftover.exists():
                shutil.rmtree(leftover)

    def _drop_unfinished_creation(self) -> None:
        """A creation killed before its rename left only its staging folder: no points
        were ever written to it. A drop killed before its end left the collection's
        folder renamed aside (_remove_collection): it finishes here."""
        if self._creating_dir.exists():
            shutil.rmtree(self._creating_dir, ignore_errors=True)
        dropping = self.root / f".{self.collection}.dropping"
        if dropping.exists():
            shutil.rmtree(dropping, ignore_errors=True)

    def _prepare_root(self, create: bool) -> bool:
        root = self.root
        if root.exists() and not root.is_dir():
            raise ClipsearchError(f"index path {root} is a file, not an index folder (--index / CLIPSEARCH_INDEX)")
        marker = root / MARKER
        if root.is_dir():
            if marker.is_file():
                self._check_marker(marker)
                return True
            if any(root.iterdir()):
                raise ClipsearchError(
                    f"{root} is not a clipsearch index (no {MARKER}); give --index a new or empty folder"
                )
        if not create:
            return False
        try:
            root.mkdir(parents=True, exist_ok=True)
            _write_json_atomically(marker, {"format": FORMAT, "backend": "qdrant-edge"})
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ClipsearchError(f"cannot create index folder {root}: no space left on device; "
                                      "free some space and run the command again") from None
            raise ClipsearchError(f"cannot create index folder {root}: {exc.strerror}") from None
        return True

    @staticmethod
    def _check_marker(marker: Path) -> None:
        """The marker names the layout of the folder: a newer clipsearch may have
        changed it, and this one must not read (or write) what it does not know."""
        restore = f'if the folder is a clipsearch index, write {{"format": {FORMAT}}} into it'
        try:
            found = json.loads(marker.read_text()).get("format")
        except (OSError, ValueError, AttributeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not the JSON clipsearch writes"
            raise ClipsearchError(f"index marker {marker} is damaged ({why}); {restore}") from None
        if not isinstance(found, int) or isinstance(found, bool):
            raise ClipsearchError(f"index marker {marker} is damaged (format {found!r}); {restore}")
        if found > FORMAT:
            raise ClipsearchError(f"index {marker.parent} was written by a newer clipsearch (index format {found}; "
                                  f"this one reads format {FORMAT}): upgrade clipsearch")

    def _load_collection(self, check: bool) -> None:
        """Load the shard if the collection exists, and look for damage a load does not
        report: a lost shard, a lost model record, points gone since the last close."""
        collection = self._collection_dir
        if not collection.is_dir() or not any(collection.iterdir()):
            return  # no collection yet (an empty folder is none either)
        if not _is_shard(self._shard_dir):
            raise ClipsearchError(
                f"collection {self.collection!r} in {self.root} has lost its shard ({self._shard_dir} is missing "
                f"or incomplete): its points are gone; {self._start_over(always_collection=True)} (or restore "
                "that folder from a backup)")
        self._require_space_to_load()
        recorded = self._recorded_points()  # before the load, which may apply what the log holds
        self._shard = self._open_shard()
        problems = self._damage(recorded)
        if problems and not check:
            raise ClipsearchError(problems[0])
        self.open_problems = problems

    def _damage(self, recorded: int | None) -> list[str]:
        problems = []
        model = self._collection_dir / MODEL
        if not model.exists():
            problems.append(f"{model} is missing: the index no longer records which model made its vectors; "
                            f"restore the file, or {self._start_over()}")
        self.lost_points = self.lost_points_problem = None
        if recorded is not None:
            count = self.count()
            if count < recorded:
                self.lost_points = (count, recorded)
                self.lost_points_problem = self._lost_points_advice(count, recorded)
                problems.append(self.lost_points_problem)
        return problems

    def _lost_points_advice(self, count: int, recorded: int) -> str:
        """Points gone with no delete: files of the shard lost. What it still holds is
        whole (status --check reads every point), so nothing needs deleting: a backup
        brings the files back, or migrate copies what is left into a new index, where an
        ingest embeds only the images whose points were lost."""
        named = "" if self.name == DEFAULT_COLLECTION else f" --collection {self.name}"
        return (f"collection {self.collection!r} in {self.root} holds {count} points, but held {recorded} when it "
                f"was last closed: files of its shard are missing or damaged; restore {self._shard_dir} from a "
                f"backup, or copy the {count} points it still holds into a new index with `clipsearch migrate "
                f"--index {self.root}{named} --to NEW` and run `clipsearch ingest DIR --index NEW{named}` there "
                "(it embeds only the images whose points were lost)")

    # Set by the open: (points held, points recorded) where points went missing with no
    # delete (migrate copies what is left of such a collection), else None.
    lost_points: tuple[int, int] | None = None
    lost_points_problem: str | None = None  # its line among open_problems

    def _recorded_points(self) -> int | None:
        """The count the last clean close recorded, where it still holds: None where
        there is none, or where the shard was written since by a clipsearch that keeps
        no record (WAL_ACK), whose deletions then lowered the count. That record is
        dropped: the next clean close writes a true one."""
        path = self._collection_dir / STATE
        try:
            record = json.loads(path.read_text())
            points = record.get("points")
        except (OSError, ValueError, AttributeError):
            return None  # none yet, or unreadable: nothing to compare with
        if not isinstance(points, int):
            return None
        if "wal_ack" in record:
            written_since = record["wal_ack"] != self._wal_ack()
        else:
            # Written before the record held the log's place: the close that wrote it
            # flushed the log first, so a log flushed later than the record was written
            # to since, by a writer that did not update it.
            written_since = self._wal_flushed_after(path)
        if written_since:
            self._forget_points()
            return None
        return points

    def _wal_ack(self) -> int | None:
        """The engine's last applied write (WAL_ACK), None where it cannot be read."""
        try:
            ack = json.loads((self._shard_dir / WAL_ACK).read_text()).get("ack_index")
        except (OSError, ValueError, AttributeError):
            return None
        return ack if isinstance(ack, int) else None

    def _wal_flushed_after(self, record: Path) -> bool:
        try:
            return (self._shard_dir / WAL_ACK).stat().st_mtime_ns > record.stat().st_mtime_ns
        except OSError:
            return False

    def _record_points(self) -> None:
        """After a clean close's flush: the count a later open must find at least, and
        the log's place then (WAL_ACK). Only deletes lower the count, and delete()
        forgets the record first; a failed write leaves an older, lower record, which
        is still true."""
        try:
            _write_json_atomically(self._collection_dir / STATE, {"points": self.count(), "wal_ack": self._wal_ack()})
        except (OSError, ClipsearchError):
            pass

    def _forget_points(self) -> None:
        try:
            (self._collection_dir / STATE).unlink(missing_ok=True)
        except OSError:
            pass

    def _other_collections(self) -> list[str]:
        """The index folder's collections other than this one (kept versions, other names)."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return []
        return sorted(d.name for d in entries if d.name != self.collection and not d.name.startswith(".")
                      and d.is_dir() and ((d / MODEL).exists() or (d / "shard").exists()))

    def _start_over(self, always_collection: bool = False) -> str:
        """What to delete, and how to ingest again, when this collection is damaged past
        repair: the whole index folder where it holds nothing else; else only the
        collection's own folder, so that kept versions and other names survive. A name
        that reindex switched to this version keeps meaning it: the ingest that rebuilds
        it must use the model that made it (_create refuses another)."""
        others = self._other_collections()
        if not others and not always_collection:
            return f"delete {self.root} and ingest again"
        model = after = ""
        if self.collection != self.name:
            try:
                made_by = ModelIdentity.from_dict(json.loads((self._collection_dir / MODEL).read_text()))
                model = f" --model {made_by.name}"
                if made_by.precision and made_by.precision != "fp32":  # part of the version's name, as the model
                    model += f" --precision {made_by.precision}"
            except (OSError, ValueError, ClipsearchError):
                model, after = " --model M", ", M being the model that made it (the one `clipsearch reindex` was given)"
        named = "" if self.name == DEFAULT_COLLECTION else f" --collection {self.name}"
        kept = (f" (this collection's folder alone: {self.root} also holds "
                f"{', '.join(repr(o) for o in others)}, which stay as they are)" if others else "")
        return (f"delete {self._collection_dir}{kept} and ingest again: `clipsearch ingest DIR --index "
                f"{self.root}{named}{model}`{after}")

    # -- the engine ---------------------------------------------------------------
    def _open_shard(self, config=None):
        try:
            return _edge().EdgeShard.load(str(self._shard_dir), config)
        except BaseException as exc:
            if not _engine_failure(exc):
                raise
            text = _first_line(exc)
            if _is_disk_full(text):
                raise self._disk_full_error("opening it", text) from None
            if "WouldBlock" in text:
                # The engine's own lock on the write-ahead log: another process has it open,
                # and clipsearch's lock file beside it was deleted ("a stale lock") or replaced.
                raise InUseError(
                    f"collection {self.collection!r} in {self.root} is in use by another process (its write-ahead "
                    f"log is locked, though its lock file {self.collection}.lock was deleted meanwhile); wait for "
                    "it to finish or stop it (nothing is wrong with the index; a lock file is not stale while a "
                    "clipsearch command runs)") from None
            raise ClipsearchError(
                f"cannot open collection {self.collection!r} in {self.root}: {text}; the index is damaged: "
                f"{self._start_over()} (or restore {self._shard_dir} from a backup)") from None

    @contextmanager
    def _engine(self, doing: str) -> Iterator[None]:
        """Engine failures as one line: a full disk as such, anything else as damage,
        with what to do. The engine raises plain Exception, or pyo3's PanicException
        (a BaseException) when it panics on a file it cannot make sense of."""
        try:
            yield
        except BaseException as exc:
            if not _engine_failure(exc):
                raise
            text = _first_line(exc)
            if _is_disk_full(text):
                raise self._disk_full_error(doing, text) from None
            repair = f"{self._start_over()} (or restore {self._shard_dir} from a backup)"
            advice = (f"the index is damaged: {repair}" if self._checking else
                      f"run {self.check_command()}, and if it finds damage, {repair}")
            raise ClipsearchError(
                f"index {self.root} (collection {self.collection!r}) failed {doing}: {text}; {advice}") from None

    def _disk_full_error(self, doing: str, detail: str) -> ClipsearchError:
        return ClipsearchError(f"no space left on device for index {self.root} ({doing}: {detail}); free some "
                               "space and run the command again: everything committed so far is kept")

    def _require_space(self, needed: int, doing: str) -> None:
        """Refuse, before the engine writes, what it could not finish (module docstring)."""
        try:
            free = _free_bytes(self.root)
        except OSError:
            return  # cannot tell: let the engine try
        if free < needed:
            raise ClipsearchError(
                f"no space left on device for index {self.root}: {_megabytes(free)} free, and {doing} needs "
                f"{_megabytes(needed, up=True)}; free some space and run the command again: everything committed "
                "so far is kept")

    def _require_space_to_load(self) -> None:
        needed = LOAD_MARGIN
        if _filesystem_type(self.root) in MEMORY_FILESYSTEMS:
            needed += _holes(self._shard_dir / "segments")
        self._require_space(needed, "opening it")

    def _require_space_to_write(self, extra: int = 0, doing: str = "writing to it") -> None:
        self._require_space(WRITE_RESERVE + extra, doing)

    @property
    def shard(self):
        if self._shard is None:
            self.require_collection()
        return self._shard

    def _require_open(self) -> None:
        if self._closed:
            raise ClipsearchError(f"index {self.root} (collection {self.name!r}) is closed: open it again "
                                  "(open_index) to use it")

    def _dim(self) -> int | None:
        identity = self.stored_identity()
        return identity.dim if identity else None

    # -- collection -------------------------------------------------------------
    def exists(self) -> bool:
        self._require_open()
        return self._shard is not None

    def stored_identity(self) -> ModelIdentity | None:
        path = self._collection_dir / MODEL
        if not path.is_file():
            return None
        try:
            return ModelIdentity.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, ClipsearchError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ClipsearchError(f"cannot read the model record {path} ({why}); restore the file, "
                                  f"or {self._start_over()}") from None

    def _saved_config(self) -> dict | None:
        """The shard's saved configuration (edge_config.json, what the engine runs
        with), None where there is none yet; a damaged one is a one-line error."""
        path = self._shard_dir / "edge_config.json"
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict) or not isinstance(saved["vectors"][""], dict):
                raise TypeError
            return saved
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not the engine's JSON"
            raise ClipsearchError(f"the shard configuration {path} is damaged ({why}); "
                                  f"run {self.check_command()}") from None

    def stored_layout(self) -> Layout:
        """The collection's layout, from the shard's own saved configuration (what the
        engine runs with): quantization, vectors on disk, HNSW m and ef_construct, each
        with the engine's default where it says nothing."""
        return _layout_of(self._saved_config())

    def current_layout(self) -> Layout:
        """What a reindex gives the new version unless told otherwise (ingest/reindex.py)."""
        return self.stored_layout()

    def _warn_if_layout_differs(self) -> None:
        if not self.layout.asked() or self._shard is None:
            return
        differences = self.layout.differences(self.stored_layout())
        if differences:
            sys.stderr.write(f"clipsearch: collection {self.collection!r} in {self.root} exists with another "
                             f"layout; using it as it is, without {', '.join(differences)} (a layout is set "
                             "only when a collection is created)\n")

    def record_identity(self, identity: ModelIdentity) -> None:
        self.require_collection()
        _write_json_atomically(self._collection_dir / MODEL, identity.to_dict())

    def unfinished_copy(self) -> dict | None:
        try:
            copy = json.loads((self._collection_dir / COPYING).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable: a copy was under way, what it said is lost
            return {"from": "unknown", "points": None}
        return copy if isinstance(copy, dict) else {"from": "unknown", "points": None}

    def record_unfinished_copy(self, copy: dict | None) -> None:
        self.require_collection()
        if copy is None:
            (self._collection_dir / COPYING).unlink(missing_ok=True)
        else:
            _write_json_atomically(self._collection_dir / COPYING, copy)

    def finished_copies(self) -> dict:
        try:
            copies = json.loads((self._collection_dir / COPIED).read_text())
        except (OSError, ValueError):
            return {}
        return copies if isinstance(copies, dict) else {}

    def record_finished_copies(self, copies: dict) -> None:
        self.require_collection()
        _write_json_atomically(self._collection_dir / COPIED, copies)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = sorted(d.name for d in self.root.iterdir()
                       if d.name != self.collection and is_version_of(d.name, self.name) and (d / MODEL).is_file())
        if self.collection != self.name and (self.root / self.name / MODEL).is_file():
            found.insert(0, self.name)  # the original, where a switch died before renaming it
        return found

    def version_facts(self) -> list[dict]:
        """Read from each version's folder, without opening it (a reindex may hold it)."""
        facts = []
        for name in self.versions():
            folder = self.root / name
            model: str | None = None
            image: str | None = None
            try:
                identity = ModelIdentity.from_dict(json.loads((folder / MODEL).read_text()))
                model, image = identity.name, identity.image_fingerprint
            except (OSError, ValueError, ClipsearchError):
                pass
            try:
                unfinished = json.loads((folder / COPYING).read_text())
            except FileNotFoundError:
                unfinished = None
            except (OSError, ValueError):
                unfinished = {"from": "unknown", "points": None}
            facts.append({"collection": name, "model": model, "image_fingerprint": image,
                          "unfinished": unfinished if isinstance(unfinished, dict) or unfinished is None
                          else {"from": "unknown", "points": None}})
        return facts

    def point_name_at(self, target: str) -> None:
        if self.exists() or (self.root / self.collection).exists():
            raise ClipsearchError(f"index {self.root}: {self.name!r} means {self.collection!r}, which exists; "
                                  f"`clipsearch reindex` switches it")
        if not (self.root / target / MODEL).is_file():
            raise ClipsearchError(f"index {self.root} has no collection {target!r} to make {self.name!r} mean")
        try:
            with self._aliases_locked():
                aliases = read_aliases(self.root)
                aliases[self.name] = target
                self._write(lambda: write_aliases(self.root, aliases), f"making {self.name!r} mean {target!r}")
        finally:
            self.close()
        self.collection = target

    def switch(self, target: str, keep_old: bool, old_identity: ModelIdentity) -> str | None:
        """The table first, then the old folder renamed or removed, all under the old
        collection's lock (kept while the shard closes): a kill between leaves the name
        on the complete new version and the old folder where versions() finds it."""
        if not (self.root / target / MODEL).is_file():
            raise ClipsearchError(f"index {self.root} has no collection {target!r} to switch {self.name!r} to")
        lock, self._lock = self._lock, None
        try:
            self.close()
            old = self.collection
            with self._aliases_locked():
                aliases = read_aliases(self.root)
                aliases[self.name] = target
                self._write(lambda: write_aliases(self.root, aliases), f"switching {self.name!r} to {target!r}")
            self.collection = target
            if not keep_old:
                self._write(lambda: self._remove_collection(old),
                            f"{self.name!r} now means {target!r}; removing the old collection {old!r}")
                return None
            if old != self.name:
                return old
            kept = version_name(self.name, old_identity)  # so that it has a name of its own
            if (self.root / kept).exists():
                raise ClipsearchError(f"index {self.root}: cannot keep {old!r} as {kept!r}, which exists; "
                                      f"{self.name!r} now means {target!r}, the old collection is still in {old!r}")
            def rename() -> None:
                os.rename(self.root / old, self.root / kept)
                _fsync_dir(self.root)

            self._write(rename, f"{self.name!r} now means {target!r}; renaming the old collection to {kept!r}")
            return kept
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def _aliases_locked(self) -> Iterator[None]:
        """aliases.json is one file for every name of the index: its rewrites take turns
        (flock, blocking: a rewrite takes milliseconds)."""
        import fcntl

        descriptor = os.open(self.root / "aliases.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _write(self, action, doing: str):
        """A file operation of a switch or a drop, with a failure said in one line."""
        try:
            return action()
        except OSError as exc:
            raise ClipsearchError(f"index {self.root}: {doing} failed: {exc.strerror or exc}") from None

    def drop(self, collection: str) -> None:
        if collection == self.collection or not (self.root / collection).is_dir():
            raise ClipsearchError(f"index {self.root} has no other collection {collection!r} to drop")
        lock = _ProcessLock(str(self.root / f"{collection}.lock"),
                            f"index {self.root} (collection {collection!r})").acquire()
        try:
            self._write(lambda: self._remove_collection(collection), f"dropping {collection!r}")
        finally:
            lock.release()

    def _remove_collection(self, collection: str) -> None:
        """Its folder, renamed aside first so that a kill mid-way leaves no half of it."""
        doomed = self.root / f".{collection}.dropping"
        if doomed.exists():
            shutil.rmtree(doomed)
        os.rename(self.root / collection, doomed)
        _fsync_dir(self.root)
        shutil.rmtree(doomed, ignore_errors=True)

    def _create(self, identity: ModelIdentity) -> None:
        """Build the collection in a staging folder and rename it into place: a kill at
        any moment leaves the collection whole or absent, never a model record without
        a shard (which would read as damage)."""
        if self._lock is None:  # opened read-only on a folder that did not exist
            raise ClipsearchError(f"index {self.root} was opened read-only")
        if self.collection != self.name and version_name(self.name, identity) != self.collection:
            # The name means a version (aliases.json) whose folder is gone (deleted after
            # damage): that name holds one model's vectors, and this model makes others.
            others = self.versions()
            to_one = (f", or make {self.name!r} mean a version it still has ({', '.join(map(repr, others))}) "
                      "with `clipsearch reindex --model` that version's model" if others else "")
            raise ClipsearchError(
                f"{self.name!r} in {self.root} means {self.collection!r} (switched by clipsearch reindex), which "
                f"is gone, and {identity.short()} makes other vectors than that version holds: ingest with the "
                f"model that made it (--model){to_one}")
        self._require_space_to_write(NEW_COLLECTION, doing="creating its collection")
        staging = self._creating_dir
        self._drop_unfinished_creation()
        try:
            staging.mkdir()
            _write_json_atomically(staging / MODEL, identity.to_dict())
            with self._engine("creating its collection"):
                self._create_shard(staging / "shard", identity.dim, self.layout)
            _fsync_tree(staging)
            if self._collection_dir.is_dir():  # empty (_load_collection found nothing in it)
                self._collection_dir.rmdir()
            os.rename(staging, self._collection_dir)
            _fsync_dir(self.root)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise self._disk_full_error("creating its collection", exc.strerror or "") from None
            raise ClipsearchError(f"cannot create collection {self.collection!r} in {self.root}: "
                                  f"{exc.strerror or exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # there only if something failed
        self._shard = self._open_shard()
        self._wrote = True

    @staticmethod
    def _create_shard(path: Path, dim: int, layout: Layout) -> None:
        e = _edge()
        threshold = indexing_threshold_kb(dim)
        shard = e.EdgeShard.create(str(path), _shard_config(dim, None if threshold == ENGINE_INDEXING_THRESHOLD_KB
                                                            else threshold, layout))
        try:
            for name, kind in PAYLOAD_INDEXES.items():
                shard.update(e.UpdateOperation.create_field_index(name, _payload_index(kind)))
            shard.flush()
        finally:
            shard.close()

    def ensure_collection(self, identity: ModelIdentity) -> None:
        super().ensure_collection(identity)
        self._move_payload_indexes_to_disk()

    def _move_payload_indexes_to_disk(self) -> None:
        """Indexes made before the keyword indexes went on disk (or with a field
        missing) are rebuilt once, on the first write-side open: a few seconds per
        million points, and every later cold query opens the shard faster."""
        e = _edge()
        with self._engine("reading its payload indexes"):
            schema = self.shard.info().payload_schema
        for name, kind in PAYLOAD_INDEXES.items():
            params = getattr(schema.get(name), "params", None)
            if not getattr(params, "on_disk", False):
                self._require_space_to_write()
                with self._engine("rebuilding a payload index"):
                    self.shard.update(e.UpdateOperation.create_field_index(name, _payload_index(kind)))
                self._wrote = True

    # -- points -----------------------------------------------------------------
    # Point ids go to the engine as the uuid strings they are: it parses them in half
    # the time uuid.UUID takes, which a moved file paid four times.
    def _filter(self, under: str | None = None, exclude_ids: Sequence[str] = (), where: Where | None = None):
        e = _edge()
        must = [e.FieldCondition(key="dirs", match=e.MatchValue(under_value(under)))] if under else []
        must += _where_conditions(where)
        must_not = [e.HasIdCondition({uuid.UUID(i) for i in exclude_ids})] if exclude_ids else None
        if not must and not must_not:
            return None
        return e.Filter(must=must or None, must_not=must_not)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        e = _edge()
        # One tolist() for the batch: a row at a time cost as much as the engine's write.
        rows = np.asarray(vectors, dtype=np.float32).tolist()
        self._write_points([e.Point(i, row, p) for i, row, p in zip(ids, rows, payloads)])

    def _write_points(self, points: list) -> None:
        e = _edge()
        if points:
            shard = self.shard
            self._require_space_to_write()
            self._wrote = True
            with self._engine("writing points"):
                shard.update(e.UpdateOperation.upsert_points(points))
            # An upserted point lands outside the graph, a new one or one already in it.
            self._written_since_graph = self._outside_graph_recorded() + len(points)

    def _hits(self, request) -> list[Hit]:
        shard = self.shard
        with self._engine("answering a query"):
            points = shard.query(request)
        hits = [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]
        for hit in hits:
            if not hit.payload:
                # Every point clipsearch writes has a payload; a hit without one is a
                # payload storage that lost it (a truncated file loads as empty payloads).
                # An ingest of the folders writes those points again (they no longer show an
                # unchanged file's size and mtime): nothing needs deleting.
                named = "" if self.name == DEFAULT_COLLECTION else f" --collection {self.name}"
                raise ClipsearchError(
                    f"index {self.root} (collection {self.collection!r}) returned point {hit.id} without its "
                    f"payload: its payload storage is damaged; {self.check_command()} counts such points, and "
                    f"`clipsearch ingest DIR --index {self.root}{named}` over the folders it holds embeds their "
                    "images again")
        return hits

    def query(self, vector, k, under=None, exclude_ids=(), exact=False, hnsw_ef=DEFAULT_HNSW_EF,
              where=None) -> list[Hit]:
        e = _edge()
        request = e.QueryRequest(
            limit=k,
            query=e.Query.Nearest(np.asarray(vector, dtype=np.float32).ravel().tolist()),
            filter=self._filter(under, exclude_ids, where),
            with_payload=True,
            params=self._search_params(k, hnsw_ef, exact),
        )
        return self._hits(request)

    def _search_params(self, k: int, hnsw_ef: int | None, exact: bool = False):
        """As a server searches a quantized collection (client.py): oversampling x k
        candidates by the quantized vectors, ranked again by the originals; an exact
        search reads the originals alone."""
        e = _edge()
        quantized = self._shard is not None and self._quantized()
        if exact:
            return e.SearchParams(exact=True, quantization=e.QuantizationSearchParams(ignore=True) if quantized
                                  else None)
        return e.SearchParams(hnsw_ef=max(hnsw_ef or 0, k) or None,
                              quantization=e.QuantizationSearchParams(rescore=True, oversampling=self.oversampling)
                              if quantized else None)

    def _quantized(self) -> bool:
        if self._quantization is None:
            self._quantization = self.stored_layout().quantization or "none"
        return self._quantization != "none"  # read once: a collection's layout never changes

    _quantization: str | None = None

    def recommend(self, positives, negatives, k, under=None, exclude_ids=(), hnsw_ef=DEFAULT_HNSW_EF,
                  where=None) -> list[Hit]:
        e = _edge()

        def listed(vectors):
            return [np.asarray(v, dtype=np.float32).ravel().tolist() for v in vectors]

        request = e.QueryRequest(
            limit=k,
            query=e.Query.RecommendBestScore(e.RecommendQuery(listed(positives), listed(negatives))),
            filter=self._filter(under, exclude_ids, where),
            with_payload=True,
            params=self._search_params(k, hnsw_ef),
        )
        return self._hits(request)

    def count(self, under: str | None = None) -> int:
        shard = self.shard
        with self._engine("counting points"):
            return int(shard.count(_edge().CountRequest(exact=True, filter=self._filter(under))))

    def delete(self, ids: Sequence[str] = (), under: str | None = None) -> None:
        if not ids and not under:
            return
        e = _edge()
        shard = self.shard
        self._require_space_to_write()
        self._forget_points()  # the count goes down: a kill from here on must not look like lost points
        self._wrote = True
        with self._engine("deleting points"):
            if ids:
                shard.update(e.UpdateOperation.delete_points(list(ids)))
            if under:
                shard.update(e.UpdateOperation.delete_points_by_filter(self._filter(under)))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        shard = self.shard
        with self._engine("reading points"):
            records = shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [Record(str(r.id), dict(r.payload or {}), _vector_of(r) if with_vectors else None) for r in records]

    def scroll(self, batch_size=1000, with_vectors=False, under=None) -> Iterator[Record]:
        self._require_open()  # now, not at the first record
        return self._scroll(self._filter(under), batch_size, with_vectors)

    def find(self, field, values, with_vectors=False, limit=None, fields=None) -> list[Record]:
        e = _edge()
        if values is None:
            matching = e.Filter(must_not=[e.IsEmptyCondition(field)])
        elif not values:
            return []
        else:
            matching = e.Filter(must=[e.FieldCondition(key=field, match=e.MatchAny(list(values)))])
        batch = min(limit or 1000, 1000)
        payload = True if fields is None else e.PayloadSelector.Include(list(fields))
        return list(itertools.islice(self._scroll(matching, batch, with_vectors, payload), limit))

    # A copy passes the engine's vectors straight back into it as the lists it gave: no
    # numpy round trip, which cost a moved file more than writing its point.
    def _vectors_to_copy(self, ids: list[str]) -> dict:
        with self._engine("reading points"):
            records = self.shard.retrieve(ids, with_payload=False, with_vector=True)
        vectors = {str(r.id): _raw_vector(r) for r in records}
        return {pid: vector for pid, vector in vectors.items() if vector is not None}

    def _write_copies(self, ids: list[str], vectors: list, payloads: list[dict]) -> None:
        e = _edge()
        self._write_points([e.Point(i, vector, p) for i, vector, p in zip(ids, vectors, payloads)])

    def _scroll(self, matching, batch_size: int, with_vectors: bool, payload=True) -> Iterator[Record]:
        e = _edge()
        offset = None
        while True:
            # The shard again for each page: serve's background HNSW build swaps in a new
            # one (same points) between two pages of a long scroll; the offset is a point id.
            with self._engine("reading points"):
                records, offset = self.shard.scroll(e.ScrollRequest(
                    offset=offset, limit=batch_size, filter=matching,
                    with_payload=payload, with_vector=with_vectors,
                ))
            for r in records:
                yield Record(str(r.id), dict(r.payload or {}), _vector_of(r) if with_vectors else None)
            if offset is None or not records:
                return

    # -- the HNSW graph -------------------------------------------------------------
    def graph_pending(self) -> bool:
        """Enough points for HNSW, and at least a segment's worth (the engine's
        threshold) of vectors outside the graph."""
        if self._shard is None:
            return False
        with self._engine("reading its state"):
            info = self._shard.info()
        dim = self._dim()
        if dim is None or info.points_count < hnsw_min_points():
            return False
        outside = max(info.points_count - info.indexed_vectors_count,
                      min(self._outside_graph_recorded(), info.points_count))
        return outside * dim * 4 >= indexing_threshold_kb(dim) * 1024

    def _outside_graph_recorded(self) -> int:
        """Points written since the last graph build, as graph.json and this process's
        writes count them (a run killed before its close loses its own count; the
        engine's measure still sees points that were added)."""
        if self._written_since_graph is None:
            recorded = self._graph_file().get("written_since_build")
            self._written_since_graph = recorded if isinstance(recorded, int) and recorded >= 0 else 0
        return self._written_since_graph

    def _graph_file(self) -> dict:
        try:
            recorded = json.loads((self._collection_dir / GRAPH).read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def last_graph_build(self) -> tuple[int, float] | None:
        """(points, seconds) of the last in-process HNSW build, for the next one's message."""
        last = self._graph_file().get("last_build")
        if not isinstance(last, dict):
            return None
        try:
            return int(last["points"]), float(last["seconds"])
        except (TypeError, KeyError, ValueError):
            return None

    def _record_graph(self, written_since_build: int, build: tuple[int, float] | None = None) -> None:
        self._written_since_graph = written_since_build
        last = self.last_graph_build() if build is None else build
        record: dict = {"written_since_build": written_since_build}
        if last is not None:
            record["last_build"] = {"points": last[0], "seconds": round(last[1], 1)}
        try:
            _write_json_atomically(self._collection_dir / GRAPH, record)
        except (OSError, ClipsearchError):
            pass  # an older count, or none: the next build is at worst a run late

    def _apply_indexing_threshold(self, dim: int) -> None:
        """Reload the shard with the engine threshold hnsw_min_points asks for, if its
        saved configuration has another (the engine reads it only at load)."""
        wanted = indexing_threshold_kb(dim)
        saved = self._saved_config()
        if saved is not None:
            optimizers = saved.get("optimizers")
            current = (optimizers.get("indexing_threshold") if isinstance(optimizers, dict) else None) \
                or ENGINE_INDEXING_THRESHOLD_KB
            if current == wanted:
                return
        config = _shard_config(dim, wanted, _layout_of(saved))
        self._close_shard()
        self._shard = self._open_shard(config)

    def optimize(self) -> bool:
        """Build HNSW in this process: fastest, but no other Python thread runs meanwhile.
        A stop that comes meanwhile is raised once the build is recorded (_stops_held):
        what the engine did is never lost to a count that says it is still to do."""
        with _stops_held():
            return self._optimize()

    def _optimize(self) -> bool:
        if self._shard is None or self.count() < hnsw_min_points():
            return False
        dim = self._dim()
        if dim is None:
            return False
        # The build writes new segments beside the old ones before it drops them.
        self._require_space_to_write(_allocated(self._shard_dir / "segments"), "building its HNSW graph")
        self._apply_indexing_threshold(dim)
        self._wrote = True
        started = time.monotonic()
        with self._engine("building its HNSW graph"):
            built = bool(self._shard.optimize())
        # Built, or nothing the engine found worth building; a build's size and time tell
        # the next one's user how long to expect (the engine holds the GIL: no progress).
        self._record_graph(0, (self.count(), time.monotonic() - started) if built else None)
        return built

    def optimize_offline(self, exclusive: AbstractContextManager | None = None) -> bool:
        """Build the HNSW graph in a child process on a copy of the shard, then swap the
        copy in. Queries through this object go on meanwhile (the child has its own GIL);
        only the flush before the copy and the swap (close, rename, load) run inside
        `exclusive`, which the caller's query threads must also take: a query during the
        swap would find the shard closed. The caller must not write to the index until
        this returns. True when the graph was built and swapped in; False when there was
        nothing to do (too few points, or already optimized). A failed build raises
        ClipsearchError and leaves the live shard as it was."""
        exclusive = exclusive if exclusive is not None else nullcontext()
        if self._shard is None or self.count() < hnsw_min_points():
            return False
        dim = self._dim()
        if dim is None:
            return False
        # The copy is written out whole (its sparse files too), then built on.
        self._require_space_to_write(2 * _allocated(self._shard_dir, apparent=True), "building its HNSW graph")
        work = self._collection_dir / OPTIMIZING
        phases = self.last_offline_phases = {}
        t = time.perf_counter()
        with exclusive, self._engine("saving before its HNSW build"):
            self._apply_indexing_threshold(dim)  # saved in the shard's config, which the child loads as it is
            self.shard.flush()
        phases["flush_s"], t = time.perf_counter() - t, time.perf_counter()
        try:
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(self._shard_dir, work)
            phases["copy_s"], t = time.perf_counter() - t, time.perf_counter()
            if not self._optimize_copy(work, dim):
                shutil.rmtree(work)
                self._record_graph(0)  # nothing the engine found worth building
                return False
            phases["build_s"], t = time.perf_counter() - t, time.perf_counter()
            _fsync_tree(work)
            phases["fsync_s"], t = time.perf_counter() - t, time.perf_counter()
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        with exclusive:
            self._swap_in(work)
            self._record_graph(0)
        phases["swap_s"] = time.perf_counter() - t
        shutil.rmtree(self._collection_dir / OLD, ignore_errors=True)
        return True

    def _optimize_copy(self, work: Path, dim: int) -> bool:
        """Run the child on the copy; True if it built anything."""
        try:
            done = subprocess.run([sys.executable, "-c", _OPTIMIZE_CHILD, str(work), str(os.getpid())],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except OSError as exc:
            raise ClipsearchError(f"cannot start the HNSW build of {self.collection!r}: {exc}") from None
        lines = done.stdout.split()
        if done.returncode != 0 or not lines or lines[-1] not in ("OPTIMIZED", "UNCHANGED"):
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ClipsearchError(f"HNSW build of collection {self.collection!r} in {self.root} failed "
                                  f"(the index is unchanged): {why}")
        return lines[-1] == "OPTIMIZED"

    def _swap_in(self, work: Path) -> None:
        """Close the live shard, put the optimized copy in its place, load it. Each rename
        is atomic; _recover_swap() finishes or undoes a swap cut short anywhere here."""
        old = self._collection_dir / OLD
        shard = self.shard
        self._shard = None
        shard.close()
        if old.exists():
            shutil.rmtree(old)
        os.rename(self._shard_dir, old)
        try:
            os.rename(work, self._shard_dir)
            _fsync_dir(self._collection_dir)
            self._shard = self._open_shard()
            self._wrote = True  # the copy's log is at another place: the close records it
        except BaseException:
            # The copy did not take: put the old shard back, as a reopen would. The copy
            # is moved aside by a rename, not deleted in place: a shard/ half deleted
            # could still look complete to _recover_swap(), which would drop shard.old.
            if self._shard_dir.exists():
                os.rename(self._shard_dir, work)
            os.rename(old, self._shard_dir)
            _fsync_dir(self._collection_dir)
            shutil.rmtree(work, ignore_errors=True)
            self._shard = self._open_shard()
            raise

    def describe(self) -> dict:
        facts = super().describe()
        if self._shard is not None:
            with self._engine("reading its state"):
                info = self._shard.info()
            facts["segments"] = info.segments_count
            facts["indexed_vectors"] = info.indexed_vectors_count
            layout = self.stored_layout()
            if layout != DEFAULT_EMBEDDED_LAYOUT:
                facts["embedded_layout"] = layout.asked()
        return facts

    def announce(self, note: str) -> None:
        """Tell every other process that finds this index taken how to reach its holder
        instead (clipsearch serve gives its URL), in place of "in use by pid N"."""
        if self._lock is not None:
            self._lock.note(note)

    def _close_shard(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.close()

    def close(self) -> None:
        self._closed = True
        try:
            if self._shard is not None:
                with self._engine("saving its last writes"):
                    self._shard.flush()
                if self._wrote:
                    self._record_points()
                    if self._written_since_graph is not None:
                        self._record_graph(self._written_since_graph)
        finally:
            try:
                self._close_shard()
            finally:
                if self._lock is not None:
                    self._lock.release()
                    self._lock = None

    def __del__(self) -> None:
        """An index dropped unclosed (an app's exception path) is closed, with the
        ResourceWarning an unclosed file gives: it would hold its lock, and the index
        could not be opened again in this process. Not at interpreter exit, where the
        kernel releases the lock and the engine's write-ahead log keeps every write."""
        lock = getattr(self, "_lock", None)
        holds = getattr(self, "_shard", None) is not None or (lock is not None and lock.held)
        if not holds or sys.is_finalizing():
            return
        warnings.warn(f"index {self.root} (collection {self.name!r}) was not closed: close() it, or open it "
                      "in a with block", ResourceWarning, stacklevel=2, source=self)
        self.close()


def _engine_failure(exc: BaseException) -> bool:
    """An error raised by the engine: not one of ours, nor an interrupt or an exit on
    its way out."""
    if isinstance(exc, ClipsearchError):
        return False
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
