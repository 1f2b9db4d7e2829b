"""The embedded (edge) backend's own promises: one process at a time per collection,
with a clear message naming the holder; a lock that dies with its holder; folders
that are not indexes are refused; reads create nothing; data survives a reopen.

Other processes are real subprocesses (flock is per open file, so a second process is
what the lock exists for). No model is needed: identities are built directly.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import Settings
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.errors import ClipsearchError
from clipsearch.index import ancestor_dirs, open_index, point_id
from clipsearch.index.edge import MARKER, EdgeIndex
from clipsearch.index.lockfile import InUseError

DIM = 16
IDENTITY = ModelIdentity(name="/models/tiny", image_fingerprint="f" * 64, text_fingerprint="t" * 64, dim=DIM)
COLLECTION = "images"

# A child process: open the collection, report, and either exit or hold it.
#   argv: index collection mode(read|create|hold) [n_points]
CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from clipsearch.config import Settings
    from clipsearch.errors import ClipsearchError
    from clipsearch.encoders.identity import ModelIdentity
    from clipsearch.index import ancestor_dirs, open_index, point_id

    index, collection, mode = sys.argv[1:4]
    settings = Settings(index=index, collection=collection).validated()
    try:
        idx = open_index(settings, create=mode != "read")
    except ClipsearchError as exc:
        print("ERROR " + str(exc), flush=True)
        sys.exit(3)
    if mode == "hold":
        n = int(sys.argv[4])
        idx.ensure_collection(ModelIdentity(name="/models/tiny", image_fingerprint="f" * 64,
                                            text_fingerprint="t" * 64, dim=16))
        paths = [f"/held/{i}.jpg" for i in range(n)]
        v = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        idx.upsert([point_id(p) for p in paths], v, [{"path": p, "dirs": ancestor_dirs(p)} for p in paths])
        print(f"HOLDING {os.getpid()}", flush=True)
        time.sleep(120)
        sys.exit(0)
    print(f"OPENED {idx.count() if idx.exists() else -1}", flush=True)
    idx.close()
""")


def settings(index: Path, collection: str = COLLECTION) -> Settings:
    return Settings(index=str(index), collection=collection).validated()


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def points(prefix: str, n: int, seed: int = 0):
    paths = [f"{prefix}/{i:04d}.jpg" for i in range(n)]
    payloads = [{"path": p, "dirs": ancestor_dirs(p), "size": i, "mtime": 1.5 + i, "width": 32, "height": 24}
                for i, p in enumerate(paths)]
    return [point_id(p) for p in paths], unit_vectors(n, seed), payloads


def run_child(index: Path, mode: str, collection: str = COLLECTION) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(index), collection, mode],
                          capture_output=True, text=True, timeout=60)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 30.0) -> str:
    """The first stdout line of `proc` that starts with `prefix`, without sleeping blindly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:  # the child exited before reporting
            raise AssertionError(f"child exited (rc={proc.wait()}) before {prefix!r}: {proc.stderr.read()}")
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} line from the child within {timeout} s")


@pytest.fixture
def holder_child(tmp_path):
    """Start a child that creates the index, upserts 25 points and holds it open."""
    procs = []

    def start(index: Path, n: int = 25) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(index), COLLECTION, "hold", str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


# -- (a) one process at a time ---------------------------------------------------------

def test_second_process_is_refused_while_the_holder_keeps_working(tmp_path):
    index = tmp_path / "index"
    ids, vectors, payloads = points("/photos", 40)
    holder = open_index(settings(index), create=True)
    try:
        holder.ensure_collection(IDENTITY)
        holder.upsert(ids[:30], vectors[:30], payloads[:30])

        for mode in ("create", "read"):  # an ingest and a search are both refused
            child = run_child(index, mode)
            assert child.returncode == 3, (child.stdout, child.stderr)
            lines = child.stdout.splitlines()
            assert len(lines) == 1 and lines[0].startswith("ERROR "), child.stdout
            message = lines[0][len("ERROR "):]
            assert f"in use by pid {os.getpid()}" in message
            assert str(index) in message and COLLECTION in message

        # The refused opens did not hurt the holder: it writes, flushes and closes cleanly.
        holder.upsert(ids[30:], vectors[30:], payloads[30:])
        holder.delete(ids=ids[:2])
        assert holder.count() == 38
    finally:
        holder.close()

    # Another process can open it now, and sees exactly what the holder wrote.
    child = run_child(index, "read")
    assert child.returncode == 0, (child.stdout, child.stderr)
    assert child.stdout.strip() == "OPENED 38"
    with open_index(settings(index)) as again:
        assert again.count() == 38
        assert again.stored_identity() == IDENTITY
        got = {r.id: r for r in again.retrieve(ids, with_vectors=True)}
        assert set(got) == set(ids[2:])
        for i in range(2, 40):
            assert got[ids[i]].payload == payloads[i]
            np.testing.assert_allclose(got[ids[i]].vector, vectors[i], atol=1e-5)


def test_second_open_in_the_same_process_is_refused_too(tmp_path):
    index = tmp_path / "index"
    with open_index(settings(index), create=True) as first:
        first.ensure_collection(IDENTITY)
        with pytest.raises(InUseError, match=f"in use by pid {os.getpid()};") as info:
            open_index(settings(index))
        assert isinstance(info.value, ClipsearchError)
        assert "\n" not in str(info.value)
        assert first.count() == 0  # still usable
    with open_index(settings(index)) as second:  # close() released it
        assert second.exists()


def test_the_lock_is_per_collection_and_beside_the_shard(tmp_path):
    index = tmp_path / "index"
    with open_index(settings(index, "one"), create=True) as one, \
            open_index(settings(index, "two"), create=True) as two:
        one.ensure_collection(IDENTITY)
        two.ensure_collection(IDENTITY)
        one.upsert(*points("/one", 3))
        two.upsert(*points("/two", 5))
        assert (one.count(), two.count()) == (3, 5)
        assert (index / "one.lock").is_file()
        assert (index / "two.lock").is_file()
        assert (index / "one.lock").read_text().strip() == str(os.getpid())
        assert not list((index / "one").rglob("*.lock"))  # nothing lock-like inside the shard


def test_lock_is_released_when_the_holder_closes_even_after_an_error(tmp_path):
    index = tmp_path / "index"
    with pytest.raises(RuntimeError):
        with open_index(settings(index), create=True) as idx:
            idx.ensure_collection(IDENTITY)
            raise RuntimeError("ingest crashed")
    child = run_child(index, "read")
    assert child.stdout.strip() == "OPENED 0", child.stderr


# -- (b) a killed holder leaves no stale lock ------------------------------------------

def test_lock_dies_with_a_killed_holder(tmp_path, holder_child):
    index = tmp_path / "index"
    proc = holder_child(index, n=25)
    line = wait_for_line(proc, "HOLDING ")
    assert line == f"HOLDING {proc.pid}"

    with pytest.raises(InUseError, match=f"in use by pid {proc.pid};"):
        open_index(settings(index))

    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

    with open_index(settings(index), create=True) as idx:
        assert idx.exists()
        assert idx.stored_identity() == IDENTITY
        # Upserts are in the WAL when upsert returns: a killed ingest loses nothing it upserted.
        assert idx.count() == 25
        idx.ensure_collection(IDENTITY)
        ids, vectors, payloads = points("/after", 4)
        idx.upsert(ids, vectors, payloads)
        before = idx.count()
        # The lock now names this process, not the dead one.
        child = run_child(index, "read")
        assert child.returncode == 3
        assert f"in use by pid {os.getpid()};" in child.stdout
        assert f"pid {proc.pid};" not in child.stdout
    with open_index(settings(index)) as idx:
        assert idx.count() == before
        assert len(idx.retrieve(ids)) == 4


# -- (c) what is and is not an index ---------------------------------------------------

@pytest.mark.parametrize("create", [True, False])
def test_a_folder_that_is_not_an_index_is_refused(tmp_path, create):
    folder = tmp_path / "holiday-photos"
    folder.mkdir()
    (folder / "IMG_0001.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(ClipsearchError, match="is not a clipsearch index") as info:
        open_index(settings(folder), create=create)
    assert str(folder) in str(info.value)
    assert MARKER in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == ["IMG_0001.jpg"]  # untouched: no marker, no lock


@pytest.mark.parametrize("create", [True, False])
def test_an_index_path_that_is_a_file_is_refused(tmp_path, create):
    path = tmp_path / "index"
    path.write_text("just a file")
    with pytest.raises(ClipsearchError, match="is a file") as info:
        open_index(settings(path), create=create)
    assert str(path) in str(info.value)
    assert path.read_text() == "just a file"


def test_reading_a_missing_index_creates_nothing(tmp_path):
    index = tmp_path / "nowhere" / "index"
    with open_index(settings(index)) as idx:
        assert isinstance(idx, EdgeIndex)
        assert idx.exists() is False
        assert idx.stored_identity() is None
        assert idx.describe()["exists"] is False
        assert idx.describe()["points"] == 0
        with pytest.raises(ClipsearchError, match="clipsearch ingest"):
            idx.count()
        with pytest.raises(ClipsearchError, match="clipsearch ingest"):
            idx.query(unit_vectors(1, 0)[0], 3)
        with pytest.raises(ClipsearchError):  # a read-only handle never creates a collection
            idx.ensure_collection(IDENTITY)
    assert not (tmp_path / "nowhere").exists()


def test_reading_an_empty_folder_creates_nothing(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with open_index(settings(folder)) as idx:
        assert idx.exists() is False
    assert list(folder.iterdir()) == []


def test_creating_writes_the_marker_and_accepts_an_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with open_index(settings(folder), create=True) as idx:
        assert idx.exists() is False  # the folder is an index now; the collection comes with ingest
        idx.ensure_collection(IDENTITY)
    marker = json.loads((folder / MARKER).read_text())
    assert marker["format"] == 1
    assert json.loads((folder / COLLECTION / "model.json").read_text()) == IDENTITY.to_dict()
    # Once marked, it opens read-only as an index even though it is no longer empty.
    with open_index(settings(folder)) as idx:
        assert idx.exists()


# -- (d) data survives close and reopen ------------------------------------------------

def test_data_survives_close_and_reopen(tmp_path):
    index = tmp_path / "index"
    ids, vectors, payloads = points("/photos/trip", 50, seed=3)
    with open_index(settings(index), create=True) as idx:
        idx.ensure_collection(IDENTITY)
        idx.upsert(ids, vectors, payloads)
        idx.delete(ids=ids[-5:])
    for create in (False, True, False):  # several reopen cycles, read-only and writable
        with open_index(settings(index), create=create) as idx:
            assert idx.exists()
            assert idx.stored_identity() == IDENTITY
            idx.check_identity(IDENTITY)
            assert idx.count() == 45
            assert idx.count(under="/photos") == 45
            records = {r.id: r for r in idx.scroll(batch_size=8, with_vectors=True)}
            assert set(records) == set(ids[:45])
            for i in range(45):
                assert records[ids[i]].payload == payloads[i]
                np.testing.assert_allclose(records[ids[i]].vector, vectors[i], atol=1e-5)
            q = unit_vectors(1, seed=9)[0]
            scores = vectors[:45] @ q
            best = np.argsort(-scores)[:5]
            hits = idx.query(q, 5)
            assert [h.id for h in hits] == [ids[i] for i in best]
            np.testing.assert_allclose([h.score for h in hits], scores[best], atol=1e-4)


def test_close_is_idempotent_and_releases_the_lock(tmp_path):
    index = tmp_path / "index"
    idx = open_index(settings(index), create=True)
    idx.ensure_collection(IDENTITY)
    idx.upsert(*points("/x", 3))
    idx.close()
    idx.close()
    with open_index(settings(index)) as again:
        assert again.count() == 3


def keyword_indexes(idx) -> dict:
    """{field: on_disk} for the shard's `path` and `dirs` indexes, as the engine reports
    them (the photo-fact indexes beside them are another test's business)."""
    schema = idx.shard.info().payload_schema
    return {name: bool(getattr(info.params, "on_disk", False)) for name, info in schema.items()
            if name in ("path", "dirs")}


def test_keyword_indexes_are_made_on_disk(tmp_path):
    # In memory, the `path` index is read whole at every open: the bulk of a cold query.
    with open_index(settings(tmp_path / "index"), create=True) as idx:
        idx.ensure_collection(IDENTITY)
        assert keyword_indexes(idx) == {"path": True, "dirs": True}


def test_an_index_with_in_memory_keyword_indexes_is_moved_on_disk_by_a_write(tmp_path):
    import qdrant_edge as e

    index = tmp_path / "index"
    ids, vectors, payloads = points("/photos/trip", 30, seed=4)
    more = points("/photos/home", 20, seed=5)
    with open_index(settings(index), create=True) as idx:
        idx.ensure_collection(IDENTITY)
        idx.upsert(ids, vectors, payloads)
        # What earlier versions made: Qdrant's default, in-memory keyword indexes.
        for name in ("path", "dirs"):
            idx.shard.update(e.UpdateOperation.delete_field_index(name))
            idx.shard.update(e.UpdateOperation.create_field_index(name, e.PayloadSchemaType.Keyword))
        assert keyword_indexes(idx) == {"path": False, "dirs": False}
    with open_index(settings(index)) as idx:  # a read (search) changes nothing
        assert keyword_indexes(idx) == {"path": False, "dirs": False}
        assert idx.count(under="/photos/trip") == 30
    with open_index(settings(index), create=True) as idx:  # a write (ingest) moves them
        idx.ensure_collection(IDENTITY)
        idx.upsert(*more)
        assert keyword_indexes(idx) == {"path": True, "dirs": True}
    with open_index(settings(index)) as idx:
        assert keyword_indexes(idx) == {"path": True, "dirs": True}
        assert idx.count() == 50
        assert idx.count(under="/photos/trip") == 30
        assert idx.count(under="/photos/home") == 20
        q = vectors[7]
        assert idx.query(q, 1, under="/photos/trip")[0].id == ids[7]
        assert all(h.path.startswith("/photos/home/") for h in idx.query(q, 5, under="/photos/home"))


def test_reading_a_collection_that_is_not_there_leaves_no_lock_file(tmp_path):
    folder = tmp_path / "index"
    with open_index(settings(folder), create=True) as idx:
        idx.ensure_collection(IDENTITY)
    before = sorted(p.name for p in folder.iterdir())
    with open_index(settings(folder, "typo")) as idx:
        assert idx.exists() is False
        with pytest.raises(ClipsearchError, match="does not exist"):
            idx.count()
    assert sorted(p.name for p in folder.iterdir()) == before


def test_an_index_on_a_read_only_file_system_is_one_line_saying_so(tmp_path):
    folder, mounted = tmp_path / "index", tmp_path / "snapshot"
    with open_index(settings(folder), create=True) as idx:
        idx.ensure_collection(IDENTITY)
    mounted.mkdir()
    if subprocess.run(["mount", "--bind", str(folder), str(mounted)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        with pytest.raises(ClipsearchError) as raised:
            open_index(settings(mounted)).close()
        message = str(raised.value)
        assert "\n" not in message and f"{mounted} is on a read-only file system" in message
        assert "remove that path" not in message  # the lock file is not what is wrong
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
