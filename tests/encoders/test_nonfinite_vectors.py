"""A model of NaN weights gives NaN vectors: every encoder path says so in one line
naming the model, rather than handing them on to be stored or compared."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoders.torch_clip import Encoder
from clipsearch.encoders.vectors import require_finite
from clipsearch.errors import ClipsearchError

from support import nan_copy


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, tiny_model_dir):
    return nan_copy(tiny_model_dir, tmp_path_factory.mktemp("broken") / "nan-clip")


def test_require_finite_names_the_model_and_the_rows():
    good = np.eye(3, dtype=np.float32)
    assert require_finite(good, "m") is good
    bad = good.copy()
    bad[1, 0] = np.nan
    bad[2, 2] = np.inf
    with pytest.raises(ClipsearchError, match=r"model m gives vectors that are not finite numbers .* for 2 of 3 "
                                              r"images"):
        require_finite(bad, "m", "images")


def test_the_torch_encoder_refuses_the_vectors_of_nan_weights(nan_model):
    encoder = Encoder(str(nan_model), "cpu")
    image = Image.new("RGB", (40, 30), "red")
    for encode in (lambda: encoder.encode_images([image]), lambda: encoder.encode_texts(["a red thing"]),
                   lambda: encoder.encode_pixels(np.zeros((1, 3, encoder.image_size, encoder.image_size),
                                                          dtype=np.float32))):
        with pytest.raises(ClipsearchError) as caught:
            encode()
        assert str(nan_model) in str(caught.value) and "not finite" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_the_onnx_image_path_refuses_them_too(nan_model):
    from clipsearch.encoders.lazy import LazyEncoder

    encoder = LazyEncoder(str(nan_model), "cpu")
    image = Image.new("RGB", (40, 30), "red")
    with pytest.raises(ClipsearchError, match="not finite numbers"):
        encoder.encode_images([image])
