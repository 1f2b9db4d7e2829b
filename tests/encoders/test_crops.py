"""Issue 19: the model's preprocessing as data, for ingest's decoders: read from the
model folder without transformers, split into the uint8 crop (decoders) and the
normalize (the encoding process), with transformers' own arithmetic; the full model
takes the crops without its image processor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoders.onnx_image import CropsMismatch, Preprocess, preprocess_from_config, preprocess_from_folder


def _noise(rng, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) % 97 * 2.6], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def test_the_folder_preprocessing_is_the_models_own(tiny_model_dir, tiny_st_model_dir, encoder):
    from clipsearch.encoders.image_export import preprocess_of

    assert preprocess_from_folder(tiny_model_dir) == preprocess_of(encoder)
    assert preprocess_from_folder(tiny_st_model_dir) == preprocess_of(encoder)
    assert encoder.preprocess == preprocess_of(encoder)


def test_legacy_processor_files_read_as_transformers_reads_them():
    legacy = preprocess_from_config({"size": 224, "crop_size": 224, "do_center_crop": True})
    assert (legacy.shortest_edge, legacy.crop, legacy.resample) == (224, (224, 224), 3)
    assert legacy.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    with pytest.raises(ValueError):
        preprocess_from_config({"image_processor_type": "SiglipImageProcessor"})


def test_normalize_matches_the_per_image_arithmetic(encoder):
    preprocess = encoder.preprocess
    rng = np.random.default_rng(0)
    images = [Image.fromarray(_noise(rng, 40 + i * 7, 33 + i * 11)) for i in range(4)]
    batch = preprocess(images)
    crops = np.stack([preprocess.crop_pixels(image) for image in images])
    assert np.array_equal(preprocess.normalize(crops), batch)
    processor = encoder.st[0].processor.image_processor
    expected = np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
    assert np.abs(batch - expected).max() <= 1e-6


def test_crops_go_straight_into_the_full_model(encoder):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(_noise(rng, 30 + i * 9, 50 - i * 4)) for i in range(5)]
    preprocess = encoder.preprocess
    crops = np.stack([preprocess.crop_pixels(image) for image in images])
    got = encoder.encode_crops(crops, preprocess.geometry)
    expected = encoder.encode_images(images)
    assert (1.0 - np.sum(got * expected, axis=1)).max() <= 1e-5
    other = Preprocess(**{**preprocess.to_dict(), "resample": 2})
    with pytest.raises(CropsMismatch):
        encoder.encode_crops(crops, other.geometry)
