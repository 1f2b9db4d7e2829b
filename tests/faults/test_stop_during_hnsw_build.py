"""A stop (Ctrl-C, SIGTERM, SIGHUP) during the HNSW build. The engine's build holds the
GIL, so the signal is handled only once it returns: the build is done by then, and it
must be recorded (graph.json) before the stop is raised, or the next run announces a
build over every point and builds nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch.config import DEFAULT_COLLECTION
from clipsearch.index.edge import EdgeIndex

from faults.conftest import ChildRun, read_index
from support import draw_collection

MIN_POINTS = "300"


def loaded_index(folder: Path, identity, count: int) -> None:
    """`count` random unit vectors of the tiny model's, no graph yet."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(count, identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with EdgeIndex(str(folder), DEFAULT_COLLECTION, create=True) as index:
        index.ensure_collection(identity)
        ids = [f"00000000-0000-5000-8000-{i:012d}" for i in range(count)]
        for start in range(0, count, 1000):
            index.upsert(ids[start:start + 1000], vectors[start:start + 1000],
                         [{"path": f"/elsewhere/{i}.jpg", "dirs": ["/elsewhere", "/"]}
                          for i in range(start, min(count, start + 1000))])


class SignalledDuringBuild:
    """The engine's shard, whose build a Ctrl-C reaches. Sent from inside the call, the
    signal is handled after it returns, as one sent while the engine holds the GIL is."""

    def __init__(self, shard):
        self._shard = shard

    def __getattr__(self, name):
        return getattr(self._shard, name)

    def optimize(self):
        built = self._shard.optimize()
        os.kill(os.getpid(), signal.SIGINT)
        return built


def test_a_ctrl_c_during_the_build_is_raised_once_the_build_is_recorded(tmp_path, encoder, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", MIN_POINTS)  # before the index is made: no reload
    folder = tmp_path / "index"
    loaded_index(folder, encoder.identity, 1000)
    with EdgeIndex(str(folder), DEFAULT_COLLECTION) as index:
        assert index.graph_pending()
        index._shard = SignalledDuringBuild(index._shard)
        with pytest.raises(KeyboardInterrupt):
            index.optimize()
        index._shard = index._shard._shard
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    with EdgeIndex(str(folder), DEFAULT_COLLECTION) as index:
        assert not index.graph_pending()
        assert index.last_graph_build() is not None and index.last_graph_build()[0] == 1000


@pytest.mark.slow
def test_sigterm_during_the_build_keeps_it_and_the_next_run_builds_nothing(tmp_path, cli, encoder, monkeypatch):
    """1 trial: a build of 10004 points (~1.5 s here), SIGTERM 0.3 s after it is announced."""
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", MIN_POINTS)
    cli.settings["CLIPSEARCH_HNSW_MIN_POINTS"] = MIN_POINTS
    index = tmp_path / "index"
    loaded_index(index, encoder.identity, 10000)
    photos = tmp_path / "photos"
    draw_collection(photos, 4)
    run = ChildRun(cli, ["ingest", str(photos), "--index", str(index), "--model", str(cli.model), "--workers", "0"])
    run.wait_for(run.building.is_set, "the HNSW build")
    time.sleep(0.3)  # inside the engine's build, which holds the GIL
    run.process.send_signal(signal.SIGTERM)
    assert run.process.wait(timeout=120) == 128 + signal.SIGTERM
    run._reader.join(timeout=20)
    stderr = "".join(run.stderr)
    assert "Terminated; everything committed so far is kept." in stderr and "Traceback" not in stderr, stderr
    assert "the HNSW search index was built, nothing is left to do" in stderr, stderr
    assert read_index(index).indexed_vectors >= 10004

    again = cli.ingest(photos, index, "--json")
    assert again.returncode == 0, again.stderr
    assert "building the HNSW" not in again.stderr, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["unchanged"], summary["embedded"], summary["hnsw_built"]) == (4, 0, False)
