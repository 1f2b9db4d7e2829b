"""serve encodes images at its collection's precision (issue #16): over an int8
collection, a watched ingest writes int8 vectors through the quantized image tower, and
an fp32 image encoder would be refused by the collection, never mixed into it."""

from __future__ import annotations

import pytest

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index, point_id
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.pipeline import Ingestor
from clipsearch.serve.service import load_encoder

from support import draw_collection, draw_image


def test_a_watched_ingest_into_an_int8_collection_writes_int8(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    draw_collection(photos, 6)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True, precision="int8"))
    with open_index(settings) as index:
        assert index.stored_identity().precision == "int8"
        # what serve did before: fp32 images, which the collection must refuse
        with pytest.raises(ClipsearchError, match="precision mismatch"):
            index.check_identity(load_encoder(settings, lambda _: None).identity)
        encoder = load_encoder(settings, lambda _: None, precision="int8")
        index.check_identity(encoder.identity)
        new = draw_image(photos / "new.png", "green", "square")
        summary = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True)).run_files([str(new)])
        assert summary.embedded == 1 and encoder.images.towers.path == "onnx"
        assert encoder.images.precision == "int8" and index.retrieve([point_id(new)])
        assert index.stored_identity().precision == "int8" and index.count() == 7
