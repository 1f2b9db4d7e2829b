"""An embedded index an app forgets to close (its exception path skips close()) is
closed when it is dropped, with a ResourceWarning as an unclosed file gives: it held
its lock, and the index could not be opened again in that process. And a closed index
says it is closed, not that its collection does not exist."""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest

from clipsearch import ClipsearchError, IngestOptions, Settings, open_index
from clipsearch.ingest import ingest

from support import BACKENDS, draw_collection, settings_for


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    settings = Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir), device="cpu")
    draw_collection(tmp_path / "photos", 4)
    ingest(tmp_path / "photos", settings=settings, options=IngestOptions(workers=0, quiet=True))
    return settings


def app_that_fails(settings: Settings) -> None:
    index = open_index(settings)
    index.count()
    raise RuntimeError("the app's own bug, before its close()")


def test_an_index_dropped_unclosed_is_closed_with_a_warning(settings):
    with pytest.warns(ResourceWarning, match=r"index .* \(collection 'images'\) was not closed"):
        try:
            app_that_fails(settings)
        except RuntimeError:
            pass
        gc.collect()
    with open_index(settings) as again:  # the lock was given back
        assert again.count() == 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use", ["count", "query", "scroll", "describe", "exists"])
def test_a_closed_index_says_so(backend, use, tmp_path, tiny_model_dir):
    """On every backend: a server client's calls after close() would fail on a closed
    connection, and :memory:'s shared client would go on answering as if open."""
    settings = settings_for(backend, tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest(tmp_path / "photos", settings=settings, options=IngestOptions(workers=0, quiet=True))
    index = open_index(settings)
    dim = index.stored_identity().dim
    index.close()
    calls = {"count": index.count, "query": lambda: index.query(np.ones(dim, dtype=np.float32), 3),
             "scroll": lambda: list(index.scroll()), "describe": index.describe, "exists": index.exists}
    with pytest.raises(ClipsearchError, match=rf"^index {re.escape(settings.index)}.* \(collection "
                                              rf"{settings.collection!r}\) is closed"):
        calls[use]()
    index.close()  # closing again is harmless
