"""serve encodes images at its collection's precision (issue #16): over an int8
collection, a watched ingest writes int8 vectors through the quantized image tower, and
an fp32 image encoder would be refused by the collection, never mixed into it. Its
watched ingest takes the decoders' crops, as ingest does (issue #19)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
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


def test_a_watched_ingest_sends_the_decoders_crops_to_the_model(tmp_path, tiny_model_dir, monkeypatch):
    """As ingest does (issue 19): serve's watched ingest hands the model the decoders'
    crops, with no second image-processor pass, and the vectors are ingest's own."""
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    made = draw_collection(photos, 4)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    with open_index(settings) as index:
        expected = {r.id: r.vector for r in index.retrieve([point_id(p) for p in made], with_vectors=True)}
        index.delete(ids=list(expected))
        encoder = load_encoder(settings, lambda _: None)
        calls = {"crops": 0, "images": 0}

        def counted(name):
            method = getattr(encoder.images, f"encode_{name}")

            def call(*args, **kwargs):
                calls[name] += 1
                return method(*args, **kwargs)
            return call

        for name in ("crops", "images"):
            monkeypatch.setattr(encoder.images, f"encode_{name}", counted(name))
        summary = Ingestor(encoder, index, IngestOptions(workers=0, quiet=True)).run_files([str(p) for p in made])
        assert summary.embedded == 4 and calls["crops"] >= 1 and calls["images"] == 0
        for record in index.retrieve(list(expected), with_vectors=True):
            assert float(record.vector @ expected[record.id]) > 1 - 1e-5


def test_serve_refuses_a_precision_the_environment_names_against_the_collection(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    """As ingest refuses it: CLIPSEARCH_PRECISION=int8 over an fp32 collection is a
    one-line error naming both, not a server that quietly embeds fp32 images."""
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    ingest([str(photos)], settings=settings, options=IngestOptions(workers=0, quiet=True))
    import clipsearch.serve.server as server

    def served(*_):  # what the bug did: start serving
        raise AssertionError("serve started over a collection of the other precision")

    monkeypatch.setattr(server, "serve_forever", served)
    args = ["serve", "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "--port", "18655"]
    refused = CliRunner().invoke(cli, args, env={"CLIPSEARCH_PRECISION": "int8"})
    assert refused.exit_code == 1, refused.output
    line = refused.output.strip().splitlines()[-1]  # after the model's progress lines
    assert line.startswith("Error:") and "precision mismatch" in line and "fp32" in line and "int8" in line
    assert "Traceback" not in refused.output
