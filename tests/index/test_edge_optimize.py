"""EdgeIndex.optimize_offline(): the HNSW graph built in a child process on a copy of
the shard, swapped in, while queries from this process's threads keep answering.

Real engine throughout. The collection is big enough for a real HNSW build: qdrant-edge
indexes a segment only past 10,000 KiB of vectors, and hnsw_min_points is 20k, so 21k
points of 128 dimensions (10.5 MiB), a build of 4-8 s on two shared cores. Uniform random
vectors are HNSW's hard case: recall@10 is well below 1 even with a wide beam.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import Settings
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.errors import ClipsearchError
from clipsearch.index import ancestor_dirs, edge, open_index, point_id
from clipsearch.index.edge import OLD, OPTIMIZING, EdgeIndex

DIM = 128
N = 21_000
COLLECTION = "images"


def identity(dim: int = DIM) -> ModelIdentity:
    return ModelIdentity(name="/models/tiny", image_fingerprint="f" * 64, text_fingerprint="t" * 64, dim=dim)


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_edge(folder: Path, create: bool = False) -> EdgeIndex:
    index = open_index(Settings(index=str(folder), collection=COLLECTION).validated(), create=create)
    assert isinstance(index, EdgeIndex)
    return index


class Data:
    def __init__(self, n: int, seed: int = 0, dim: int = DIM):
        self.paths = [f"/photos/{i % 7}/{i:06d}.jpg" for i in range(n)]
        self.ids = [point_id(p) for p in self.paths]
        self.vectors = unit_vectors(n, seed, dim)
        self.payloads = [{"path": p, "dirs": ancestor_dirs(p), "size": i} for i, p in enumerate(self.paths)]

    def build(self, folder: Path) -> None:
        with open_edge(folder, create=True) as index:
            index.ensure_collection(identity(self.vectors.shape[1]))
            for start in range(0, len(self.ids), 2000):
                stop = start + 2000
                index.upsert(self.ids[start:stop], self.vectors[start:stop], self.payloads[start:stop])

    def truth(self, query: np.ndarray, k: int) -> list[str]:
        return [self.ids[i] for i in np.argsort(-(self.vectors @ query))[:k]]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Data, Path]:
    """21k points built once; each test works on its own copy of the folder."""
    data = Data(N)
    folder = tmp_path_factory.mktemp("big") / "index"
    data.build(folder)
    return data, folder


@pytest.fixture
def big_copy(big, tmp_path) -> tuple[Data, Path]:
    data, folder = big
    copy = tmp_path / "index"
    shutil.copytree(folder, copy)
    return data, copy


class QueryLoop:
    """Queries from a thread, each under the lock optimize_offline's swap also takes,
    with a short pause between them (a server's load, not a spin that starves the build)."""

    def __init__(self, index: EdgeIndex, lock: threading.Lock, pause: float = 0.005):
        self.index, self.lock, self.pause = index, lock, pause
        self.done: list[float] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._queries = unit_vectors(64, seed=7)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                with self.lock:
                    hits = self.index.query(self._queries[i % len(self._queries)], 10)
                assert len(hits) == 10
                self.done.append(time.perf_counter())
            except BaseException as exc:  # noqa: B036 - reported by stop()
                self.errors.append(exc)
                return
            i += 1
            time.sleep(self.pause)

    def __enter__(self) -> "QueryLoop":
        self.start = time.perf_counter()
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._thread.join(timeout=60)
        self.end = time.perf_counter()

    @property
    def longest_stall(self) -> float:
        marks = [self.start, *self.done, self.end]
        return max(b - a for a, b in zip(marks, marks[1:]))


# -- the build and its results --------------------------------------------------------

@pytest.mark.slow
def test_queries_keep_answering_during_the_offline_build_and_the_result_is_right(big_copy):
    data, folder = big_copy
    lock = threading.Lock()
    with open_edge(folder) as index:
        assert index.describe()["indexed_vectors"] == 0
        with QueryLoop(index, lock) as loop:
            t = time.perf_counter()
            assert index.optimize_offline(lock) is True
            build = time.perf_counter() - t
        assert not loop.errors, loop.errors
        assert loop.longest_stall < 1.0, (loop.longest_stall, build)
        assert len(loop.done) > build / 0.1  # answered throughout, not in a burst at the end

        facts = index.describe()
        assert facts["points"] == N and facts["indexed_vectors"] == N
        assert not (folder / COLLECTION / OPTIMIZING).exists() and not (folder / COLLECTION / OLD).exists()

        sample = list(range(0, N, 997))
        records = index.retrieve([data.ids[i] for i in sample], with_vectors=True)
        by_id = {r.id: r for r in records}
        for i in sample:
            assert by_id[data.ids[i]].payload == data.payloads[i]
            np.testing.assert_allclose(by_id[data.ids[i]].vector, data.vectors[i], atol=1e-5)

        overlaps = []
        for q in unit_vectors(20, seed=3):
            truth = data.truth(q, 10)
            assert [h.id for h in index.query(q, 10, exact=True)] == truth
            overlaps.append(len({h.id for h in index.query(q, 10)} & set(truth)) / 10)
        assert np.mean(overlaps) >= 0.8, overlaps  # a broken graph gives far less

        # Already built: nothing to do, and nothing left behind.
        assert index.optimize_offline(lock) is False
        assert not (folder / COLLECTION / OPTIMIZING).exists()

    with open_edge(folder) as index:  # the swapped-in shard is the one on disk
        assert index.count() == N and index.describe()["indexed_vectors"] == N


@pytest.mark.slow
def test_the_blocking_optimize_does_stall_queries(big_copy):
    """The witness that the stall measure above can fail: optimize() holds the GIL."""
    _, folder = big_copy
    lock = threading.Lock()
    with open_edge(folder) as index:
        with QueryLoop(index, lock) as loop:
            t = time.perf_counter()
            assert index.optimize() is True
            build = time.perf_counter() - t
        assert not loop.errors, loop.errors
        assert loop.longest_stall >= 0.5 * build, (loop.longest_stall, build)
        assert index.describe()["indexed_vectors"] == N


def test_the_threshold_is_a_setting_whose_default_is_the_constant(monkeypatch):
    from clipsearch.config import BY_NAME

    assert BY_NAME["hnsw_min_points"].default == edge.HNSW_MIN_POINTS == edge.hnsw_min_points()
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "300")
    assert edge.hnsw_min_points() == 300
    assert edge.indexing_threshold_kb(16) == 300 * 16 * 4 // 1024  # the engine's follows it
    assert edge.indexing_threshold_kb(16_384) == edge.ENGINE_INDEXING_THRESHOLD_KB  # never above its default
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "many")
    with pytest.raises(ClipsearchError, match="CLIPSEARCH_HNSW_MIN_POINTS='many' is not a whole number"):
        edge.hnsw_min_points()


def test_too_few_points_is_not_built(tmp_path):
    data = Data(300, dim=16)
    data.build(tmp_path / "index")
    with open_edge(tmp_path / "index") as index:
        assert index.optimize_offline() is False
        assert not (tmp_path / "index" / COLLECTION / OPTIMIZING).exists()


def test_a_scroll_spanning_the_swap_reads_on_from_the_new_shard(small, monkeypatch):
    """serve reads a long scroll (duplicates --server) a page at a time, each under the
    index lock, while its background build swaps the shard in between two pages: the
    scroll carries on over the new shard, every point once."""
    from clipsearch.serve.service import SerializedIndex

    data, folder = small
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "100")
    lock = threading.RLock()
    with open_edge(folder) as index:
        records = SerializedIndex(index, lock).scroll(batch_size=100)
        first = [next(records) for _ in range(150)]
        assert index.optimize_offline(exclusive=lock)  # swapped, as serve's build_search_index does
        rest = list(records)
        assert sorted(r.id for r in first + rest) == sorted(data.ids)
        assert index.describe()["indexed_vectors"] == len(data.ids)


# -- crash safety ---------------------------------------------------------------------

SMALL_DIM = 16


@pytest.fixture
def small(tmp_path) -> tuple[Data, Path]:
    data = Data(500, dim=SMALL_DIM)
    folder = tmp_path / "index"
    data.build(folder)
    return data, folder


def assert_whole(data: Data, folder: Path) -> None:
    with open_edge(folder) as index:
        assert index.count() == len(data.ids)
        q = data.vectors[17]
        assert [h.id for h in index.query(q, 5, exact=True)] == data.truth(q, 5)
        assert index.retrieve([data.ids[3]])[0].payload == data.payloads[3]
    collection = folder / COLLECTION
    assert sorted(p.name for p in collection.iterdir()) == ["graph.json", "model.json", "shard", "state.json"]


def test_killed_between_the_two_renames_reopens_the_old_shard(small):
    data, folder = small
    collection = folder / COLLECTION
    shutil.copytree(collection / "shard", collection / OPTIMIZING)  # the optimized copy
    os.rename(collection / "shard", collection / OLD)  # the first rename; no second
    assert_whole(data, folder)


def test_killed_after_the_second_rename_keeps_the_new_shard(small):
    data, folder = small
    collection = folder / COLLECTION
    shutil.copytree(collection / "shard", collection / OLD)  # not yet deleted
    assert_whole(data, folder)


def test_an_incomplete_shard_beside_the_old_one_gives_way_to_it(small):
    data, folder = small
    collection = folder / COLLECTION
    os.rename(collection / "shard", collection / OLD)
    (collection / "shard" / "segments").mkdir(parents=True)
    assert_whole(data, folder)


def test_a_stale_work_folder_is_removed(small):
    data, folder = small
    (folder / COLLECTION / OPTIMIZING / "segments").mkdir(parents=True)
    (folder / COLLECTION / OPTIMIZING / "edge_config.json").write_text("{")
    assert_whole(data, folder)


def test_a_failed_build_leaves_the_live_index_untouched(small, monkeypatch):
    data, folder = small
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "1")
    real_copytree = shutil.copytree

    def corrupt_copy(src, dst, *args, **kwargs):
        real_copytree(src, dst, *args, **kwargs)
        Path(dst, "edge_config.json").write_text("not a config")

    monkeypatch.setattr(edge.shutil, "copytree", corrupt_copy)
    with open_edge(folder) as index:
        with pytest.raises(ClipsearchError, match="failed .the index is unchanged.") as caught:
            index.optimize_offline()
        assert "\n" not in str(caught.value)
        assert index.count() == len(data.ids)  # still open, still answering
        q = data.vectors[5]
        assert [h.id for h in index.query(q, 5)] == data.truth(q, 5)
        assert not (folder / COLLECTION / OPTIMIZING).exists()
    monkeypatch.setattr(edge.shutil, "copytree", real_copytree)
    assert_whole(data, folder)


def test_a_small_collection_goes_through_the_child_when_the_threshold_allows(small, monkeypatch):
    """A lower hnsw_min_points lowers the engine's own indexing threshold with it (the
    child gets it): 500 points of 16 dimensions are built and swapped in, and a second
    build has nothing to do."""
    data, folder = small
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "400")
    with open_edge(folder) as index:
        assert index.graph_pending()
        assert index.optimize_offline() is True
        assert index.describe()["indexed_vectors"] == len(data.ids)
        assert not index.graph_pending()
        assert index.optimize_offline() is False
        assert index.count() == len(data.ids)
    assert_whole(data, folder)


def test_the_in_process_build_follows_the_setting_too(small, monkeypatch):
    """optimize() reloads the shard with the threshold the setting asks for: the
    engine saved the default when the shard was made."""
    data, folder = small
    with open_edge(folder) as index:
        assert index.optimize() is False  # 500 points: below the default 20k
        monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "400")
        assert index.graph_pending()
        assert index.optimize() is True
        assert index.describe()["indexed_vectors"] == len(data.ids)
    assert_whole(data, folder)


# A process that opens the index and builds it offline, to be killed mid-build.
KILLED = textwrap.dedent("""
    import sys
    from clipsearch.config import Settings
    from clipsearch.index import open_index
    index = open_index(Settings(index=sys.argv[1], collection="images").validated())
    index.optimize_offline()
    print("FINISHED", flush=True)
""")


def builders_of(work: Path) -> list[int]:
    """Pids of processes whose command line names the work folder (the build child)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(work).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the child's death signal is Linux's")
def test_kill_9_during_the_build_leaves_a_whole_index_and_no_orphan(big_copy):
    data, folder = big_copy
    work = folder / COLLECTION / OPTIMIZING
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not builders_of(work):
            assert proc.poll() is None, "the build finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while builders_of(work):  # the child dies with its parent
        assert time.monotonic() < deadline, "the build child outlived its killed parent"
        time.sleep(0.05)
    with open_edge(folder) as index:
        assert index.count() == N
        assert index.describe()["indexed_vectors"] == 0
        q = data.vectors[11]
        assert [h.id for h in index.query(q, 10, exact=True)] == data.truth(q, 10)
    # no copy (optimizing/) nor old shard (shard.old/) left behind
    assert sorted(p.name for p in (folder / COLLECTION).iterdir()) == ["graph.json", "model.json", "shard",
                                                                      "state.json"]


@pytest.mark.parametrize("build", ["optimize", "optimize_offline"])
def test_points_that_replace_deleted_ones_in_the_graph_are_built_again(small, monkeypatch, build):
    """A moved folder: every point deleted and upserted under a new id. The engine still
    counts the deleted points as indexed, so only the written-since-build count (kept
    across processes in graph.json) says the graph is stale; the next build covers the
    new points, and the count survives a reopen."""
    data, folder = small
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "400")
    with open_edge(folder) as index:
        assert getattr(index, build)() is True and not index.graph_pending()
        moved = [point_id(p.replace("/photos/", "/archive/")) for p in data.paths]
        index.delete(ids=data.ids)
        index.upsert(moved, data.vectors, [{**p, "path": p["path"].replace("/photos/", "/archive/")}
                                           for p in data.payloads])
        info = index.shard.info()
        assert info.indexed_vectors_count >= info.points_count  # the engine's measure sees nothing to do
        assert index.graph_pending()
    with open_edge(folder) as index:  # another process, as the next ingest is
        assert index.graph_pending()
        assert getattr(index, build)() is True
        assert not index.graph_pending()
        q = data.vectors[9]
        assert [h.id for h in index.query(q, 5)] == [moved[data.ids.index(i)] for i in data.truth(q, 5)]
    with open_edge(folder) as index:
        assert not index.graph_pending()
