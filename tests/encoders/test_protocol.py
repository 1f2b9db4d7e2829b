"""Every encoder keeps the one written contract (clipsearch/encoders/protocol.py), and
they agree with each other on the vectors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import Settings
from clipsearch.encoders import Encoder, ImageTextEncoder, LazyEncoder, QueryEncoders

from support import fast_encoder_for

TEXTS = ["a red circle", "a blue square on white", "x"]


def check_contract(candidate, reference: Encoder) -> None:
    assert isinstance(candidate, ImageTextEncoder)
    assert candidate.identity == reference.identity
    assert candidate.dim == reference.dim and isinstance(candidate.dim, int)
    assert candidate.image_size == reference.image_size
    texts = candidate.encode_texts(TEXTS)
    assert texts.shape == (len(TEXTS), reference.dim) and texts.dtype == np.float32
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert np.max(1.0 - np.sum(texts * reference.encode_texts(TEXTS), axis=1)) < 1e-4
    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    vectors = candidate.encode_images(images)
    assert vectors.shape == (2, reference.dim)
    assert np.max(1.0 - np.sum(vectors * reference.encode_images(images), axis=1)) < 1e-4
    assert candidate.encode_texts([]).shape == (0, reference.dim)


def test_the_full_encoder(encoder):
    check_contract(encoder, encoder)


def test_the_lazy_encoder(tiny_model_dir, encoder):
    check_contract(LazyEncoder(str(tiny_model_dir), "cpu"), encoder)


def test_the_query_encoders_fast_and_full(tiny_model_dir, encoder, monkeypatch):
    settings = Settings.resolve(model=str(tiny_model_dir), index=":memory:", device="cpu")
    monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")
    full = QueryEncoders(settings).get()
    check_contract(full, encoder)
    monkeypatch.delenv("CLIPSEARCH_FAST_PATH")
    check_contract(fast_encoder_for(tiny_model_dir, encoder), encoder)


def test_something_else_does_not_pass_for_an_encoder():
    class TextOnly:
        identity = dim = image_size = None

        def encode_texts(self, texts, batch_size=64):
            return np.zeros((len(texts), 4))

    assert not isinstance(TextOnly(), ImageTextEncoder)


@pytest.mark.parametrize("module", ["torch", "sentence_transformers", "onnxruntime", "qdrant_client",
                                    "clipsearch.index", "clipsearch.ingest", "clipsearch.search"])
def test_importing_the_encoders_package_loads_nothing_heavy(module):
    import subprocess
    import sys

    probe = f"import sys, clipsearch.encoders; print({module!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
