"""The embedded default: Qdrant's own engine in-process (qdrant-edge-py).

Layout of an index folder:

    <index>/clipsearch-index.json    marks the folder as a clipsearch index
    <index>/<collection>.lock        exclusive lock, beside (not inside) the shard
    <index>/<collection>/model.json  identity of the model that made the vectors
    <index>/<collection>/shard/      the edge shard (WAL, segments, payload indexes)

    <index>/<collection>/shard.optimizing/   a copy being optimized (optimize_offline)
    <index>/<collection>/shard.old/          the shard being swapped out (optimize_offline)

Edge point ids come back as uuid.UUID; they leave this module as str, like
qdrant-client's. HNSW is built only by EdgeShard.optimize(), which blocks and holds the
GIL for the whole build (40 s at 60k x 512-d). optimize() calls it in-process: ingest
does so at the end of a large load, never under a query. optimize_offline() builds the
graph in a child process on a copy of the shard and swaps the copy in, so that a
process serving queries from threads keeps answering meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..encoders.identity import ModelIdentity
from ..errors import ClipsearchError
from .base import DEFAULT_HNSW_EF, KEYWORD_FIELDS, Hit, Index, Record
from .lockfile import ExclusiveLock

MARKER = "clipsearch-index.json"
FORMAT = 1
# Below this many points a brute-force scan is about as fast as HNSW and building
# the graph is wasted time.
HNSW_MIN_POINTS = 20_000
# Beside the live shard folder: the copy a child process optimizes, and the live one
# while it is being swapped out.
OPTIMIZING = "shard.optimizing"
OLD = "shard.old"

# The child of optimize_offline(): optimize the shard copy at argv[1], flush, close, and
# print whether optimize() changed anything. It dies with its parent (PR_SET_PDEATHSIG,
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
import qdrant_edge
shard = qdrant_edge.EdgeShard.load(sys.argv[1])
changed = shard.optimize()
shard.flush()
shard.close()
print("OPTIMIZED" if changed else "UNCHANGED", flush=True)
"""


def _edge():
    import qdrant_edge

    return qdrant_edge


def _keyword_index():
    # On disk (mmap'd, paged in when a filter reads it) rather than Qdrant's default of
    # in memory: an in-memory keyword index on `path` (one distinct value per point) is
    # read whole at every shard load and freed at every close, about 0.45 s of a cold
    # one-shot query at 100k points (bench/COLD_QUERY_RESULTS.md); on disk it costs ~0.
    return _edge().KeywordIndexParams(on_disk=True)


def _vector_of(record) -> np.ndarray | None:
    vector = record.vector
    if vector is None:
        return None
    if isinstance(vector, dict):  # the default vector is named ""
        vector = vector.get("", next(iter(vector.values()), None))
    return None if vector is None else np.asarray(vector, dtype=np.float32)


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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


def _is_shard(path: Path) -> bool:
    return path.joinpath("edge_config.json").is_file()


class EdgeIndex(Index):
    backend = "edge"

    def __init__(self, folder: str, collection: str, create: bool = False):
        super().__init__(folder, collection)
        self.root = Path(folder)
        self._shard = None
        self._lock: ExclusiveLock | None = None
        # Seconds of each step of the last optimize_offline() (for logs and benches): the
        # flush and the swap are the only times queries wait.
        self.last_offline_phases: dict[str, float] = {}
        if not self._prepare_root(create):
            return  # nothing there yet: exists() is False, reads say so
        self._lock = ExclusiveLock(
            str(self.root / f"{collection}.lock"), f"index {self.root} (collection {collection!r})"
        ).acquire()
        try:
            self._recover_swap()
            if _is_shard(self._shard_dir):
                self._shard = self._open_shard()
        except BaseException:
            self._lock.release()
            raise

    @property
    def _collection_dir(self) -> Path:
        return self.root / self.collection

    @property
    def _shard_dir(self) -> Path:
        return self._collection_dir / "shard"

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

    def _prepare_root(self, create: bool) -> bool:
        root = self.root
        if root.exists() and not root.is_dir():
            raise ClipsearchError(f"index path {root} is a file, not an index folder (--index / CLIPSEARCH_INDEX)")
        marker = root / MARKER
        if root.is_dir():
            if marker.is_file():
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
            raise ClipsearchError(f"cannot create index folder {root}: {exc.strerror}") from None
        return True

    def _open_shard(self):
        try:
            return _edge().EdgeShard.load(str(self._shard_dir))
        except Exception as exc:
            raise ClipsearchError(
                f"cannot open collection {self.collection!r} in {self.root}: {str(exc).splitlines()[0]}"
            ) from None

    @property
    def shard(self):
        if self._shard is None:
            self.require_collection()
        return self._shard

    # -- collection -------------------------------------------------------------
    def exists(self) -> bool:
        return self._shard is not None

    def stored_identity(self) -> ModelIdentity | None:
        path = self._collection_dir / "model.json"
        if not path.is_file():
            return None
        try:
            return ModelIdentity.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ClipsearchError(f"cannot read {path}: {exc}") from None

    def _create(self, identity: ModelIdentity) -> None:
        if self._lock is None:  # opened read-only on a folder that did not exist
            raise ClipsearchError(f"index {self.root} was opened read-only")
        e = _edge()
        self._collection_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(self._collection_dir / "model.json", identity.to_dict())
        config = e.EdgeConfig(vectors=e.EdgeVectorParams(size=identity.dim, distance=e.Distance.Cosine))
        if self._shard_dir.exists():  # a creation that died before its first flush
            import shutil

            shutil.rmtree(self._shard_dir)
        shard = e.EdgeShard.create(str(self._shard_dir), config)
        for name in KEYWORD_FIELDS:
            shard.update(e.UpdateOperation.create_field_index(name, _keyword_index()))
        shard.flush()
        self._shard = shard

    def ensure_collection(self, identity: ModelIdentity) -> None:
        super().ensure_collection(identity)
        self._move_payload_indexes_to_disk()

    def _move_payload_indexes_to_disk(self) -> None:
        """Indexes made before the keyword indexes went on disk (or with a field
        missing) are rebuilt once, on the first write-side open: a few seconds per
        million points, and every later cold query opens the shard faster."""
        e = _edge()
        schema = self.shard.info().payload_schema
        for name in KEYWORD_FIELDS:
            params = getattr(schema.get(name), "params", None)
            if not getattr(params, "on_disk", False):
                self.shard.update(e.UpdateOperation.create_field_index(name, _keyword_index()))

    # -- points -----------------------------------------------------------------
    def _filter(self, under: str | None = None, exclude_ids: Sequence[str] = ()):
        e = _edge()
        must = [e.FieldCondition(key="dirs", match=e.MatchValue(under))] if under else None
        must_not = [e.HasIdCondition({uuid.UUID(i) for i in exclude_ids})] if exclude_ids else None
        if not must and not must_not:
            return None
        return e.Filter(must=must, must_not=must_not)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None:
        e = _edge()
        vectors = np.asarray(vectors, dtype=np.float32)
        points = [e.Point(uuid.UUID(i), v.tolist(), p) for i, v, p in zip(ids, vectors, payloads)]
        if points:
            self.shard.update(e.UpdateOperation.upsert_points(points))

    def query(self, vector, k, under=None, exclude_ids=(), exact=False, hnsw_ef=DEFAULT_HNSW_EF) -> list[Hit]:
        e = _edge()
        request = e.QueryRequest(
            limit=k,
            query=e.Query.Nearest(np.asarray(vector, dtype=np.float32).ravel().tolist()),
            filter=self._filter(under, exclude_ids),
            with_payload=True,
            params=e.SearchParams(exact=True) if exact else e.SearchParams(hnsw_ef=max(hnsw_ef or 0, k) or None),
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in self.shard.query(request)]

    def recommend(self, positives, negatives, k, under=None, exclude_ids=(), hnsw_ef=DEFAULT_HNSW_EF) -> list[Hit]:
        e = _edge()

        def listed(vectors):
            return [np.asarray(v, dtype=np.float32).ravel().tolist() for v in vectors]

        request = e.QueryRequest(
            limit=k,
            query=e.Query.RecommendBestScore(e.RecommendQuery(listed(positives), listed(negatives))),
            filter=self._filter(under, exclude_ids),
            with_payload=True,
            params=e.SearchParams(hnsw_ef=max(hnsw_ef or 0, k) or None),
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in self.shard.query(request)]

    def count(self, under: str | None = None) -> int:
        return int(self.shard.count(_edge().CountRequest(exact=True, filter=self._filter(under))))

    def delete(self, ids: Sequence[str] = (), under: str | None = None) -> None:
        e = _edge()
        if ids:
            self.shard.update(e.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))
        if under:
            self.shard.update(e.UpdateOperation.delete_points_by_filter(self._filter(under)))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        if not ids:
            return []
        records = self.shard.retrieve([uuid.UUID(i) for i in ids], with_payload=True, with_vector=with_vectors)
        return [Record(str(r.id), dict(r.payload or {}), _vector_of(r) if with_vectors else None) for r in records]

    def scroll(self, batch_size=1000, with_vectors=False, under=None) -> Iterator[Record]:
        e = _edge()
        offset = None
        while True:
            records, offset = self.shard.scroll(e.ScrollRequest(
                offset=offset, limit=batch_size, filter=self._filter(under),
                with_payload=True, with_vector=with_vectors,
            ))
            for r in records:
                yield Record(str(r.id), dict(r.payload or {}), _vector_of(r) if with_vectors else None)
            if offset is None or not records:
                return

    def optimize(self) -> bool:
        """Build HNSW in this process: fastest, but no other Python thread runs meanwhile."""
        if self._shard is None or self.count() < HNSW_MIN_POINTS:
            return False
        return bool(self._shard.optimize())

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
        if self._shard is None or self.count() < HNSW_MIN_POINTS:
            return False
        work = self._collection_dir / OPTIMIZING
        phases = self.last_offline_phases = {}
        t = time.perf_counter()
        with exclusive:
            self.shard.flush()
        phases["flush_s"], t = time.perf_counter() - t, time.perf_counter()
        try:
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(self._shard_dir, work)
            phases["copy_s"], t = time.perf_counter() - t, time.perf_counter()
            if not self._optimize_copy(work):
                shutil.rmtree(work)
                return False
            phases["build_s"], t = time.perf_counter() - t, time.perf_counter()
            _fsync_tree(work)
            phases["fsync_s"], t = time.perf_counter() - t, time.perf_counter()
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        with exclusive:
            self._swap_in(work)
        phases["swap_s"] = time.perf_counter() - t
        shutil.rmtree(self._collection_dir / OLD, ignore_errors=True)
        return True

    def _optimize_copy(self, work: Path) -> bool:
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
            info = self._shard.info()
            facts["segments"] = info.segments_count
            facts["indexed_vectors"] = info.indexed_vectors_count
        return facts

    def announce(self, note: str) -> None:
        """Tell every other process that finds this index taken how to reach its holder
        instead (clipsearch serve gives its URL), in place of "in use by pid N"."""
        if self._lock is not None:
            self._lock.note(note)

    def close(self) -> None:
        try:
            if self._shard is not None:
                self._shard.flush()
                self._shard.close()
                self._shard = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
