"""The query-vector cache under serve's threads: many threads putting the same and
different queries at once (each request answers in a worker thread) all succeed, with
no false 'cannot write' warning, and the cache stays within its limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clipsearch.encoders import cache
from clipsearch.encoders.query_vectors import VectorCache


def _put_many(vectors: VectorCache, texts: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda text: vectors.put(text, np.full(4, float(len(text)), dtype=np.float32)), texts))


def test_threads_putting_the_same_query_at_once_write_it_without_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", False)
    vectors = VectorCache("tower", dim=4)
    _put_many(vectors, ["a dog on the beach"] * 2000)
    assert "cannot write" not in capsys.readouterr().err
    assert vectors.get("a dog on the beach").tolist() == [18.0] * 4
    assert not list(vectors.folder.glob("*.tmp*"))  # no temporary file left behind


def test_threads_trimming_a_full_cache_at_once_keep_it_within_its_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_warned", False)
    vectors = VectorCache("tower", dim=4, limit=10)
    _put_many(vectors, [f"query {i}" for i in range(2000)])
    assert "cannot write" not in capsys.readouterr().err
    assert len(list(vectors.folder.glob("*.f32"))) <= 10
