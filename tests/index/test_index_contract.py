"""The Index contract: the same calls, the same answers, on every backend.

Runs on edge (embedded, a folder), memory (qdrant-client ':memory:') and, when
QDRANT_URL is set, a Qdrant server. Vectors are random unit vectors of a small
dimension, and every ranking is checked against numpy's cosine ground truth; no
model is needed except for the one test that compares two real models' identities.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clipsearch.encoders.identity import ModelIdentity
from clipsearch.errors import ClipsearchError
from clipsearch.index import Hit, Record, ancestor_dirs, canonical_path, open_index, point_id
from clipsearch.index.base import POINT_NAMESPACE

DIM = 16
IDENTITY = ModelIdentity(name="/models/tiny-clip", image_fingerprint="img-" + "a" * 60,
                         text_fingerprint="txt-" + "b" * 60, dim=DIM)


# -- helpers ------------------------------------------------------------------------

def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def payload_for(path: str, i: int = 0) -> dict:
    return {"path": path, "dirs": ancestor_dirs(path), "size": 1000 + i, "mtime": 1_700_000_000.25 + i,
            "width": 64 + i, "height": 48 + i}


class Corpus:
    """Points under <root>/a, <root>/a/deep, <root>/ab (a name that shares a's
    prefix but is not below it) and <root>/b."""

    def __init__(self, root: str, n: int = 60, seed: int = 1):
        folders = [os.path.join(root, "a"), os.path.join(root, "a", "deep"),
                   os.path.join(root, "ab"), os.path.join(root, "b")]
        self.root = root
        self.folders = dict(zip(("a", "deep", "ab", "b"), folders))
        self.paths = [os.path.join(folders[i % 4], f"img{i:04d}.jpg") for i in range(n)]
        self.ids = [point_id(p) for p in self.paths]
        self.vectors = unit_vectors(n, seed)
        self.payloads = [payload_for(p, i) for i, p in enumerate(self.paths)]

    def below(self, folder: str) -> np.ndarray:
        prefix = folder.rstrip(os.sep) + os.sep
        return np.array([p.startswith(prefix) for p in self.paths])

    def truth(self, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        scores = self.vectors @ query
        order = [i for i in np.argsort(-scores) if mask is None or mask[i]]
        return [(self.ids[i], float(scores[i])) for i in order[:k]]


@pytest.fixture
def index(backend_settings):
    with open_index(backend_settings, create=True) as idx:
        yield idx


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    return Corpus(canonical_path(tmp_path / "photos"))


@pytest.fixture
def loaded(index, corpus):
    index.ensure_collection(IDENTITY)
    index.upsert(corpus.ids, corpus.vectors, corpus.payloads)
    return index


def assert_hits_match(hits: list[Hit], expected: list[tuple[str, float]]) -> None:
    assert [h.id for h in hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], atol=1e-4)


# -- point ids ----------------------------------------------------------------------

def test_point_id_is_uuid5_of_the_canonical_path(tmp_path):
    import uuid

    real = tmp_path / "photos" / "cat.jpg"
    real.parent.mkdir()
    real.write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "photos")
    canonical = os.path.realpath(real)
    expected = str(uuid.uuid5(POINT_NAMESPACE, canonical))

    assert point_id(real) == expected
    assert point_id(str(real)) == expected
    assert point_id(tmp_path / "link" / "cat.jpg") == expected  # through a symlink
    assert point_id(tmp_path / "photos" / ".." / "photos" / "." / "cat.jpg") == expected
    # A relative spelling from another working directory.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "photos")
        assert point_id("cat.jpg") == expected
        assert point_id("../link/cat.jpg") == expected
    finally:
        os.chdir(cwd)
    assert point_id(tmp_path / "photos" / "dog.jpg") != expected
    # The namespace is fixed forever: a changed namespace would duplicate every index.
    assert POINT_NAMESPACE == uuid.uuid5(uuid.NAMESPACE_URL, "clipsearch:image-path")


def test_ancestor_dirs_lists_every_folder_up_to_the_root():
    assert ancestor_dirs("/x/y/z.jpg") == ["/x/y", "/x", "/"]


# -- collection and identity --------------------------------------------------------

def test_ensure_collection_creates_then_accepts_the_same_identity(index, backend_settings):
    assert not index.exists()
    index.ensure_collection(IDENTITY)
    assert index.exists()
    assert index.stored_identity() == IDENTITY
    assert index.count() == 0
    index.ensure_collection(IDENTITY)  # idempotent
    index.check_identity(IDENTITY)
    assert index.stored_identity() == IDENTITY
    # A fresh handle (as a later command would open) sees the same record.
    index.close()
    with open_index(backend_settings, create=True) as again:
        assert again.exists()
        again.ensure_collection(IDENTITY)
        assert again.stored_identity() == IDENTITY


@pytest.mark.parametrize("other_model", [False, True])
def test_two_writers_creating_one_collection_at_once(backend_settings, other_model):
    """Both see no collection, both create it: the second finds the first's and goes on
    when the model matches, or refuses the model when it does not (server backends: two
    ingests started together)."""
    if backend_settings.backend != "server":
        pytest.skip("one process owns an embedded or in-memory index")
    first, second = open_index(backend_settings, create=True), open_index(backend_settings, create=True)
    try:
        assert not first.exists() and not second.exists()  # both checked before either created
        first.ensure_collection(IDENTITY)
        theirs = replace(IDENTITY, image_fingerprint="img-" + "b" * 60) if other_model else IDENTITY
        if other_model:
            with pytest.raises(ClipsearchError, match="model mismatch"):
                second._create(theirs)
        else:
            second._create(theirs)  # what ensure_collection does after its check said "missing"
            assert second.exists() and second.stored_identity() == IDENTITY
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("change", [
    {"image_fingerprint": "img-" + "c" * 60},
    {"dim": DIM * 2},
    {"image_fingerprint": "img-" + "c" * 60, "name": IDENTITY.name},  # same name, other weights
])
def test_a_different_image_model_is_refused(index, backend_settings, change):
    index.ensure_collection(IDENTITY)
    index.upsert([point_id("/p/1.jpg")], unit_vectors(1, 0), [payload_for("/p/1.jpg")])
    other = replace(IDENTITY, **change)
    with pytest.raises(ClipsearchError) as info:
        index.ensure_collection(other)
    message = str(info.value)
    assert "model mismatch" in message
    assert backend_settings.collection in message
    assert "\n" not in message
    with pytest.raises(ClipsearchError, match="model mismatch"):
        index.check_identity(other)
    # Refusal changes nothing.
    assert index.stored_identity() == IDENTITY
    assert index.count() == 1


def test_a_text_only_change_is_accepted(index):
    """A fine-tune with a frozen vision tower keeps the image vectors valid."""
    index.ensure_collection(IDENTITY)
    text_tuned = replace(IDENTITY, text_fingerprint="txt-" + "d" * 60, name="/models/finetuned")
    index.ensure_collection(text_tuned)
    index.check_identity(text_tuned)
    assert index.stored_identity() == IDENTITY  # the record is the creator's, unchanged


def test_real_models_with_other_weights_are_refused(index, backend_settings, encoder, other_model_dir):
    from clipsearch.encoders import Encoder

    mine = encoder.identity
    other = Encoder(str(other_model_dir), device="cpu").identity
    assert mine.dim == other.dim
    assert mine.image_fingerprint != other.image_fingerprint
    index.ensure_collection(mine)
    index.ensure_collection(Encoder(str(backend_settings.model), device="cpu").identity)  # same weights
    with pytest.raises(ClipsearchError, match="model mismatch") as info:
        index.ensure_collection(other)
    assert backend_settings.collection in str(info.value)


def test_a_collection_without_a_model_record_is_refused(backend_settings):
    """A collection clipsearch did not make (or whose record is gone) is never written to."""
    with open_index(backend_settings, create=True) as idx:
        if backend_settings.backend == "edge":
            idx.ensure_collection(IDENTITY)
            (Path(backend_settings.index) / backend_settings.collection / "model.json").unlink()
        else:
            from qdrant_client import models

            idx.client.create_collection(backend_settings.collection,
                                         vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    check = False
    if backend_settings.backend == "edge":
        # An embedded collection that lost its model.json is damage, refused at the open
        # with what to do; `status --check` (check=True) opens it to report that.
        with pytest.raises(ClipsearchError, match="model.json is missing.*ingest again"):
            open_index(backend_settings, create=True)
        check = True
    with open_index(backend_settings, create=True, check=check) as idx:
        assert idx.exists()
        assert idx.stored_identity() is None
        with pytest.raises(ClipsearchError, match="no clipsearch model record") as info:
            idx.ensure_collection(IDENTITY)
        assert backend_settings.collection in str(info.value)
        assert idx.describe()["model"] is None


def test_missing_collection_says_to_ingest(index, backend_settings):
    assert not index.exists()
    with pytest.raises(ClipsearchError, match="clipsearch ingest") as info:
        index.require_collection()
    assert backend_settings.collection in str(info.value)
    with pytest.raises(ClipsearchError, match="clipsearch ingest"):
        index.check_identity(IDENTITY)
    with pytest.raises(ClipsearchError, match="clipsearch ingest"):
        index.count()
    with pytest.raises(ClipsearchError, match="clipsearch ingest"):
        index.query(unit_vectors(1, 0)[0], 3)
    with pytest.raises(ClipsearchError, match="clipsearch ingest"):
        list(index.scroll())
    assert not index.exists()  # asking did not create it


def test_describe_names_backend_collection_points_and_model_but_no_key(backend_settings, corpus):
    key = backend_settings.api_key
    if backend_settings.backend != "server":
        key = "sekrit-key-0123456789"  # a key given where it is not needed must not leak either
        backend_settings = replace(backend_settings, api_key=key)
    with open_index(backend_settings, create=True) as idx:
        before = idx.describe()
        assert before["backend"] == backend_settings.backend
        assert before["collection"] == backend_settings.collection
        assert before["exists"] is False
        assert before["points"] == 0
        assert before["model"] is None

        idx.ensure_collection(IDENTITY)
        idx.upsert(corpus.ids[:7], corpus.vectors[:7], corpus.payloads[:7])
        facts = idx.describe()
    assert facts["backend"] == backend_settings.backend
    assert facts["collection"] == backend_settings.collection
    assert facts["exists"] is True
    assert facts["points"] == 7
    assert facts["model"] == IDENTITY.to_dict()
    if key:
        assert key not in repr(facts)
    assert not any("key" in str(name).lower() for name in facts)


# -- points -------------------------------------------------------------------------

def test_upsert_and_count(index, corpus):
    index.ensure_collection(IDENTITY)
    assert index.count() == 0
    index.upsert(corpus.ids[:10], corpus.vectors[:10], corpus.payloads[:10])
    assert index.count() == 10
    index.upsert(corpus.ids[10:], corpus.vectors[10:], corpus.payloads[10:])
    assert index.count() == len(corpus.ids)
    index.upsert([], np.zeros((0, DIM), dtype=np.float32), [])  # an empty batch is a no-op
    assert index.count() == len(corpus.ids)


def test_count_under_a_folder(loaded, corpus):
    for name, folder in corpus.folders.items():
        assert loaded.count(under=folder) == int(corpus.below(folder).sum()), name
    assert loaded.count(under=corpus.root) == len(corpus.ids)
    assert loaded.count(under=os.path.join(corpus.root, "nowhere")) == 0


def test_reupserting_the_same_paths_does_not_duplicate(loaded, corpus, tmp_path):
    n = len(corpus.ids)
    new_vectors = unit_vectors(n, seed=99)
    new_payloads = [dict(p, size=p["size"] + 1) for p in corpus.payloads]
    # The same files named another way: ids come from the canonical path.
    respelled = [point_id(os.path.join(os.path.dirname(p), "..", os.path.basename(os.path.dirname(p)),
                                       os.path.basename(p))) for p in corpus.paths]
    assert respelled == corpus.ids
    loaded.upsert(respelled, new_vectors, new_payloads)
    assert loaded.count() == n
    # The points were replaced in place: new vectors answer the query, new payloads come back.
    q = new_vectors[5]
    hits = loaded.query(q, 1, exact=True)
    assert hits[0].id == corpus.ids[5]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    record = loaded.retrieve([corpus.ids[5]])[0]
    assert record.payload["size"] == corpus.payloads[5]["size"] + 1


def test_reupsert_through_a_symlinked_folder_does_not_duplicate(index, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    files = [real / f"{i}.png" for i in range(5)]
    for f in files:
        f.write_bytes(b"png")
    index.ensure_collection(IDENTITY)
    ids = [point_id(f) for f in files]
    index.upsert(ids, unit_vectors(5, 1), [payload_for(canonical_path(f)) for f in files])
    via_alias = [point_id(tmp_path / "alias" / f.name) for f in files]
    index.upsert(via_alias, unit_vectors(5, 2), [payload_for(canonical_path(f)) for f in files])
    assert index.count() == 5
    assert sorted(r.id for r in index.scroll()) == sorted(ids)


@pytest.mark.parametrize("exact", [True, False])
def test_query_top_k_matches_numpy_cosine(loaded, corpus, exact):
    queries = unit_vectors(5, seed=7)
    for q in queries:
        for k in (1, 5, 10):
            hits = loaded.query(q, k, exact=exact)
            assert len(hits) == k
            assert_hits_match(hits, corpus.truth(q, k))
            by_id = dict(zip(corpus.ids, corpus.payloads))
            for h in hits:
                assert isinstance(h, Hit)
                assert h.payload == by_id[h.id]
                assert h.path == by_id[h.id]["path"]
    # Asking for more than there is returns everything, best first.
    hits = loaded.query(queries[0], len(corpus.ids) + 10, exact=exact)
    assert_hits_match(hits, corpus.truth(queries[0], len(corpus.ids)))


def test_query_accepts_an_unnormalized_row_vector(loaded, corpus):
    q = unit_vectors(1, seed=8)
    hits = loaded.query(q * 3.0, 4, exact=True)  # shape (1, dim), length 3
    assert_hits_match(hits, corpus.truth(q[0], 4))


@pytest.mark.parametrize("exact", [True, False])
def test_under_filter_restricts_to_a_subtree_before_top_k(loaded, corpus, exact):
    a = corpus.folders["a"]
    mask = corpus.below(a)
    assert 0 < mask.sum() < len(mask)
    # Twenty points in b/ that all beat every point of a/ for this query: the filter
    # must pick the best of a/ from inside the search, not filter a global top-k.
    q = unit_vectors(1, seed=21)[0]
    near = q + 0.05 * unit_vectors(20, seed=22)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    near_paths = [os.path.join(corpus.folders["b"], f"near{i:02d}.jpg") for i in range(20)]
    loaded.upsert([point_id(p) for p in near_paths], near, [payload_for(p) for p in near_paths])
    k = 5
    global_top = loaded.query(q, 2 * k, exact=True)
    assert {h.payload["path"] for h in global_top} <= set(near_paths)
    expected = corpus.truth(q, k, mask)
    hits = loaded.query(q, k, under=a, exact=exact)
    assert len(hits) == k
    assert_hits_match(hits, expected)
    for h in hits:
        assert h.payload["path"].startswith(a + os.sep)
    # a/ includes a/deep/ but not the sibling ab/ that shares its name's prefix.
    everything = loaded.query(q, len(corpus.ids), under=a, exact=exact)
    assert {h.id for h in everything} == {i for i, m in zip(corpus.ids, mask) if m}
    assert any(h.payload["path"].startswith(corpus.folders["deep"] + os.sep) for h in everything)
    assert not any(h.payload["path"].startswith(corpus.folders["ab"] + os.sep) for h in everything)
    assert loaded.query(q, 3, under=os.path.join(corpus.root, "nowhere"), exact=exact) == []


def test_exclude_ids(loaded, corpus):
    q = unit_vectors(1, seed=11)[0]
    truth = corpus.truth(q, 8)
    excluded = [truth[0][0], truth[2][0]]
    hits = loaded.query(q, 5, exclude_ids=excluded, exact=True)
    assert_hits_match(hits, [t for t in truth if t[0] not in excluded][:5])
    # Combined with a folder filter.
    a = corpus.folders["a"]
    a_truth = corpus.truth(q, 6, corpus.below(a))
    hits = loaded.query(q, 4, under=a, exclude_ids=[a_truth[0][0]], exact=True)
    assert_hits_match(hits, a_truth[1:5])
    # Excluding a point's own id in a "more like this" query.
    own = corpus.ids[3]
    hits = loaded.query(corpus.vectors[3], 3, exclude_ids=[own])
    assert own not in [h.id for h in hits]
    assert len(hits) == 3


def test_delete_by_ids(loaded, corpus):
    gone = corpus.ids[:4]
    loaded.delete(ids=gone)
    assert loaded.count() == len(corpus.ids) - 4
    assert loaded.retrieve(gone) == []
    kept = loaded.retrieve(corpus.ids[4:6])
    assert sorted(r.id for r in kept) == sorted(corpus.ids[4:6])
    hits = loaded.query(corpus.vectors[0], len(corpus.ids), exact=True)
    assert not set(gone) & {h.id for h in hits}
    loaded.delete(ids=gone)  # deleting what is gone is harmless
    loaded.delete()  # nothing asked, nothing done
    assert loaded.count() == len(corpus.ids) - 4


def test_delete_under_a_folder(loaded, corpus):
    a = corpus.folders["a"]
    in_a = int(corpus.below(a).sum())
    loaded.delete(under=a)
    assert loaded.count(under=a) == 0
    assert loaded.count(under=corpus.folders["deep"]) == 0
    assert loaded.count() == len(corpus.ids) - in_a
    # The prefix sibling ab/ and b/ are untouched.
    assert loaded.count(under=corpus.folders["ab"]) == int(corpus.below(corpus.folders["ab"]).sum())
    assert loaded.count(under=corpus.folders["b"]) == int(corpus.below(corpus.folders["b"]).sum())
    remaining = {r.id for r in loaded.scroll(batch_size=13)}
    assert remaining == {i for i, m in zip(corpus.ids, corpus.below(a)) if not m}


def test_retrieve_payloads_and_vectors(loaded, corpus):
    wanted = corpus.ids[::7]
    records = loaded.retrieve(wanted)
    assert sorted(r.id for r in records) == sorted(wanted)
    by_id = dict(zip(corpus.ids, zip(corpus.vectors, corpus.payloads)))
    for r in records:
        assert isinstance(r, Record)
        assert isinstance(r.id, str)
        assert r.payload == by_id[r.id][1]
        assert r.vector is None

    records = loaded.retrieve(wanted, with_vectors=True)
    assert sorted(r.id for r in records) == sorted(wanted)
    for r in records:
        assert r.payload == by_id[r.id][1]
        assert isinstance(r.vector, np.ndarray)
        assert r.vector.shape == (DIM,)
        np.testing.assert_allclose(r.vector, by_id[r.id][0], atol=1e-5)

    missing = point_id("/not/ingested.jpg")
    records = loaded.retrieve([missing, corpus.ids[0]])
    assert [r.id for r in records] == [corpus.ids[0]]
    assert loaded.retrieve([]) == []


@pytest.mark.parametrize("batch_size", [1, 7, 60, 1000])
def test_scroll_yields_every_point_once(loaded, corpus, batch_size):
    records = list(loaded.scroll(batch_size=batch_size))
    ids = [r.id for r in records]
    assert len(ids) == len(corpus.ids)
    assert set(ids) == set(corpus.ids)
    by_id = dict(zip(corpus.ids, corpus.payloads))
    for r in records:
        assert isinstance(r.id, str)
        assert r.payload == by_id[r.id]
        assert r.vector is None


def test_scroll_with_vectors_and_under(loaded, corpus):
    by_id = dict(zip(corpus.ids, corpus.vectors))
    records = list(loaded.scroll(batch_size=9, with_vectors=True))
    assert len(records) == len(corpus.ids)
    for r in records:
        np.testing.assert_allclose(r.vector, by_id[r.id], atol=1e-5)
    a = corpus.folders["a"]
    under = [r.id for r in loaded.scroll(batch_size=4, under=a)]
    assert len(under) == len(set(under))
    assert set(under) == {i for i, m in zip(corpus.ids, corpus.below(a)) if m}


def test_scroll_on_an_empty_collection(index):
    index.ensure_collection(IDENTITY)
    assert list(index.scroll(batch_size=5)) == []


def test_ids_come_back_as_str_everywhere(loaded, corpus):
    q = corpus.vectors[0]
    values = ([h.id for h in loaded.query(q, 5)] + [h.id for h in loaded.query(q, 5, exact=True)]
              + [r.id for r in loaded.retrieve(corpus.ids[:5])] + [r.id for r in loaded.scroll(batch_size=10)])
    assert values and all(type(v) is str for v in values)
    assert set(values) <= set(corpus.ids)  # the same spelling as point_id's: lower-case, hyphenated


def test_scores_are_cosine_for_stored_and_query_vectors(loaded, corpus):
    """The stored vector of a point is its own best match, with score 1."""
    for i in (0, 17, 42):
        hits = loaded.query(corpus.vectors[i], 1, exact=True)
        assert hits[0].id == corpus.ids[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    hits = loaded.query(-corpus.vectors[0], len(corpus.ids), exact=True)
    assert hits[-1].id == corpus.ids[0]
    assert hits[-1].score == pytest.approx(-1.0, abs=1e-4)


def test_data_is_visible_to_a_new_handle(backend_settings, corpus):
    with open_index(backend_settings, create=True) as idx:
        idx.ensure_collection(IDENTITY)
        idx.upsert(corpus.ids, corpus.vectors, corpus.payloads)
    with open_index(backend_settings) as idx:
        assert idx.exists()
        assert idx.count() == len(corpus.ids)
        assert idx.stored_identity() == IDENTITY
        q = unit_vectors(1, seed=5)[0]
        assert_hits_match(idx.query(q, 5, exact=True), corpus.truth(q, 5))


def test_recommend_ranks_near_the_liked_and_away_from_the_disliked(loaded, corpus):
    liked, disliked = corpus.vectors[0], corpus.vectors[1]
    # One positive example and no negative: the nearest neighbours of that example.
    assert [h.id for h in loaded.recommend([liked], [], 5)] == [i for i, _ in corpus.truth(liked, 5)]
    hits = loaded.recommend([liked], [disliked], 10, exclude_ids=[corpus.ids[0]])
    assert len(hits) == 10 and corpus.ids[0] not in [h.id for h in hits]
    # Best-score strategy: a point closer to the disliked example than to the liked one
    # ranks below every point that is not.
    by_id = dict(zip(corpus.ids, corpus.vectors))
    nearer_liked = [float(by_id[h.id] @ liked) > float(by_id[h.id] @ disliked) for h in hits]
    assert nearer_liked == sorted(nearer_liked, reverse=True)
    assert corpus.ids[1] not in [h.id for h in hits[:5]]
    # The folder filter applies as in query().
    below_a = loaded.recommend([liked], [disliked], 5, under=corpus.folders["a"])
    assert below_a and all(h.path.startswith(corpus.folders["a"] + os.sep) for h in below_a)


# -- photo facts: find by fingerprint, where filters --------------------------------------

def photo_payloads(corpus: Corpus) -> list[dict]:
    """Facts on some points, as ingest stores them: every third point shares a
    fingerprint with the one before it (a copy), taken dates in 2021-2024, two cameras,
    positions near Paris or Lyon; some points have none of it."""
    payloads = []
    for i, payload in enumerate(corpus.payloads):
        facts = {"fingerprint": f"p1:{i - (i % 3 == 2):04d}"}
        if i % 5:
            facts["taken"] = f"{2021 + i % 4}-0{1 + i % 9}-1{i % 10}T12:00:00"
            facts["camera_words"] = ["canon", "eos"] if i % 2 else ["nikon", "d750"]
            facts["location"] = {"lat": 48.85, "lon": 2.35} if i % 3 else {"lat": 45.76, "lon": 4.84}
        payloads.append({**payload, **facts})
    return payloads


@pytest.fixture
def photo_index(index, corpus):
    index.ensure_collection(IDENTITY)
    corpus.payloads = photo_payloads(corpus)
    index.upsert(corpus.ids, corpus.vectors, corpus.payloads)
    return index


def test_find_by_a_keyword_field(photo_index, corpus):
    wanted = ["p1:0001", "p1:0007", "p1:9999"]
    found = photo_index.find("fingerprint", wanted)
    expected = {corpus.ids[i] for i, p in enumerate(corpus.payloads) if p["fingerprint"] in wanted}
    assert {r.id for r in found} == expected and len(expected) == 4  # 1, 2 (its copy), 7, 8
    assert all(r.vector is None for r in found)
    with_vectors = {r.id: r.vector for r in photo_index.find("fingerprint", ["p1:0001"], with_vectors=True)}
    for pid, vector in with_vectors.items():
        assert np.allclose(vector, corpus.vectors[corpus.ids.index(pid)], atol=1e-6)
    assert len(photo_index.find("fingerprint", None)) == len(corpus.ids)  # any value
    assert len(photo_index.find("fingerprint", None, limit=7)) == 7
    assert photo_index.find("fingerprint", []) == []


def test_find_reads_only_the_fields_asked_for(photo_index, corpus):
    found = photo_index.find("fingerprint", ["p1:0001"], fields=("fingerprint", "path", "taken"))
    assert {r.id for r in found} == {corpus.ids[1], corpus.ids[2]}
    for record in found:
        full = corpus.payloads[corpus.ids.index(record.id)]
        assert record.payload == {k: full[k] for k in ("fingerprint", "path", "taken") if k in full}
        assert "dirs" not in record.payload and record.vector is None


def test_copy_points_gives_new_points_the_vectors_of_others(photo_index, corpus, tmp_path):
    sources = [corpus.ids[0], corpus.ids[5], corpus.ids[0]]  # one source copied twice
    paths = [str(tmp_path / "moved" / f"copy{i}.jpg") for i in range(3)]
    new_ids = [point_id(p) for p in paths]
    payloads = [payload_for(p, 100 + i) for i, p in enumerate(paths)]
    assert photo_index.copy_points(sources, new_ids, payloads) == set()
    assert photo_index.count() == len(corpus.ids) + 3
    copies = {r.id: r for r in photo_index.retrieve(new_ids, with_vectors=True)}
    for source, new_id, payload in zip(sources, new_ids, payloads):
        assert np.allclose(copies[new_id].vector, corpus.vectors[corpus.ids.index(source)], atol=1e-6)
        assert copies[new_id].payload == payload
    hit = photo_index.query(corpus.vectors[5], 2)  # the copy is searchable like its source
    assert {h.id for h in hit} == {corpus.ids[5], new_ids[1]}
    assert photo_index.retrieve([corpus.ids[0]])[0].payload == corpus.payloads[0]  # the source is untouched


def test_copy_points_reports_sources_that_are_gone(photo_index, corpus, tmp_path):
    photo_index.delete(ids=[corpus.ids[3]])
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    new_ids = [point_id(p) for p in paths]
    missing = photo_index.copy_points([corpus.ids[3], corpus.ids[4]], new_ids, [payload_for(p) for p in paths])
    assert missing == {new_ids[0]}
    assert [r.id for r in photo_index.retrieve(new_ids)] == [new_ids[1]]


def where_mask(corpus: Corpus, where) -> np.ndarray:
    """numpy's answer to a Where over the corpus's payloads."""
    from math import asin, cos, radians, sin, sqrt

    def km(a, b):
        la1, lo1, la2, lo2 = map(radians, (a[0], a[1], b[0], b[1]))
        h = sin((la2 - la1) / 2) ** 2 + cos(la1) * cos(la2) * sin((lo2 - lo1) / 2) ** 2
        return 2 * 6371.0088 * asin(sqrt(h))

    keep = []
    for p in corpus.payloads:
        ok = True
        if where.taken_from or where.taken_before:
            ok = "taken" in p and (not where.taken_from or p["taken"] >= where.taken_from) and (
                not where.taken_before or p["taken"] < where.taken_before)
        if where.camera_words:
            ok = ok and set(where.camera_words) <= set(p.get("camera_words", ()))
        if where.near:
            ok = ok and "location" in p and km(where.near[:2], (p["location"]["lat"], p["location"]["lon"])) * 1000 \
                <= where.near[2]
        keep.append(ok)
    return np.array(keep)


@pytest.mark.parametrize("where", [
    dict(taken_from="2022-01-01T00:00:00", taken_before="2024-01-01T00:00:00"),
    dict(camera_words=("canon",)),
    dict(camera_words=("nikon", "d750"), taken_from="2023-01-01T00:00:00"),
    dict(near=(48.8566, 2.3522, 50_000.0)),
    dict(near=(48.8566, 2.3522, 500_000.0), under="a"),
], ids=["dates", "camera", "camera-and-date", "near", "near-under"])
def test_where_filters_query_and_recommend_before_top_k(photo_index, corpus, where):
    from clipsearch.index.where import Where

    folder = where.pop("under", None)
    filters = Where(**where)
    mask = where_mask(corpus, filters)
    if folder:
        mask &= corpus.below(corpus.folders[folder])
    assert 0 < mask.sum() < len(mask)
    query = unit_vectors(1, seed=77)[0]
    under = corpus.folders[folder] if folder else None
    for exact in (True, False):
        hits = photo_index.query(query, 5, under=under, where=filters, exact=exact)
        assert [h.id for h in hits] == [i for i, _ in corpus.truth(query, 5, mask)]
    liked = photo_index.recommend([query], [], 5, under=under, where=filters)
    assert [h.id for h in liked] == [i for i, _ in corpus.truth(query, 5, mask)]
