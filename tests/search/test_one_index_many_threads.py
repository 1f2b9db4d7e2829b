"""An app that searches from many threads. The one-call search() opens the embedded
index each time, and an index is open in one place at a time: a call while it is open
elsewhere in this process is told so (and how to share it), never "in use by pid
<this process>" or "pid unknown". The README's long-lived pattern (one open_index, one
Searcher over the exported text tower) answers every thread."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from clipsearch import ClipsearchError, IngestOptions, QueryEncoders, Searcher, Settings, open_index
from clipsearch.encoders import FastTextEncoder
from clipsearch.ingest import ingest
from clipsearch.search import search

from support import draw_collection

TEXTS = ["a red circle", "a blue square", "a green triangle", "a yellow thing", "black", "white", "purple", "orange"]
IN_THIS_PROCESS = "already open in this process: open it once (open_index) and search through it (Searcher)"


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    settings = Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir), device="cpu")
    draw_collection(tmp_path / "photos", 12)
    ingest(tmp_path / "photos", settings=settings, options=IngestOptions(workers=0, quiet=True))
    search("a photo", settings=settings)  # exports the text tower: the threads below take the fast path
    return settings


def outcome(settings: Settings, text: str) -> str:
    try:
        search(text, k=3, settings=settings)
    except ClipsearchError as exc:
        return str(exc)
    return "answered"


def test_one_call_searches_from_threads_are_told_to_share_one_index(settings):
    with ThreadPoolExecutor(8) as threads:
        outcomes = list(threads.map(lambda text: outcome(settings, text), TEXTS * 5))
    refused = [o for o in outcomes if o != "answered"]
    assert "answered" in outcomes
    for message in refused:
        assert IN_THIS_PROCESS in message and "pid unknown" not in message, message


def test_a_search_inside_an_open_index_is_told_to_use_it(settings):
    with open_index(settings) as index:
        with pytest.raises(ClipsearchError, match=re.escape(IN_THIS_PROCESS)):
            search("a red circle", settings=settings)
        assert index.count() == 12  # the refused open did not touch the holder


def test_one_searcher_answers_every_thread(settings):
    with open_index(settings) as index:
        searcher = Searcher(QueryEncoders(settings).get(), index)
        assert isinstance(searcher.encoder, FastTextEncoder)
        alone = {text: [hit.path for hit in searcher.text(text, k=5)] for text in TEXTS}
        with ThreadPoolExecutor(8) as threads:
            together = list(threads.map(lambda text: (text, [hit.path for hit in searcher.text(text, k=5)]),
                                        TEXTS * 25))
    assert all(paths == alone[text] for text, paths in together)
