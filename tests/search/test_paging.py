"""Pages of one query (offset + k, as serve's page and API ask) neither repeat nor skip
an image when scores tie: byte-identical copies share one vector, so a run of equal
scores crosses page boundaries, and the index orders ties as it meets them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search.engine import Searcher, settled

from support import draw_collection, draw_image, settings_for


@pytest.fixture(params=["edge", "memory"])
def library(request, tmp_path, tiny_model_dir, encoder):
    photos = tmp_path / "photos"
    original = draw_image(photos / "copies" / "c00.png", "red", "circle")
    for i in range(1, 41):
        shutil.copy(original, photos / "copies" / f"c{i:02d}.png")
    draw_collection(photos / "others", 20)
    settings = settings_for(request.param, tmp_path, tiny_model_dir)
    index = open_index(settings, create=True)
    ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
    yield Searcher(encoder, index), original
    index.close()


def test_pages_of_tied_scores_cover_every_image_once(library):
    searcher, original = library
    vector = searcher.image_vector(str(original))
    pages = [searcher.by_vector(vector, offset + 5)[offset:] for offset in range(0, 61, 5)]
    paths = [hit.path for page in pages for hit in page]
    assert len(paths) == len(set(paths)) == 61  # the 41 copies and the 20 others, once each
    whole = [hit.path for hit in searcher.by_vector(vector, 61)]
    assert paths == whole  # page by page as in one answer
    scores = [hit.score for page in pages for hit in page]
    assert scores == sorted(scores, reverse=True)


def test_a_run_of_ties_is_fetched_whole_and_ordered_by_id():
    from clipsearch.index import Hit

    pool = [Hit(id=f"{i:03d}", score=1.0 if i % 7 else 0.5, payload={}) for i in range(60)]
    asked = []

    def fetch(n):  # an index that meets ties in a scrambled order
        asked.append(n)
        ranked = sorted(pool, key=lambda h: (-h.score, (int(h.id) * 37) % 61))
        return ranked[:n]

    top = settled(fetch, 5)
    ties = sorted(h.id for h in pool if h.score == 1.0)
    assert [h.id for h in top] == ties[:5]
    assert asked[-1] > len(ties)  # asked until the last hit scored below the run
    assert settled(lambda n: fetch(n)[:3], 5) == sorted(fetch(3), key=lambda h: (-h.score, h.id))  # fewer than k
    assert np.all(np.diff([h.score for h in settled(fetch, 60)]) <= 0)
