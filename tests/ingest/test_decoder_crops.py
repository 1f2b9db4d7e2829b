"""Issue 19: ingest's decoders make the model's input itself (resize, centre crop, as a
uint8 crop), and the encoding process only normalizes it and runs the model, on the
ONNX and the torch paths alike. The vectors are the sentence-transformers path's
(Encoder.encode_images on load_image's picture) within 1e-4 cosine distance for
images of every size and mode, with and without decoding processes; the decoders
import no torch, transformers or onnxruntime."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.config import Settings
from clipsearch.encoders.lazy import LazyEncoder
from clipsearch.encoders.onnx_image import CropsMismatch, Preprocess
from clipsearch.images import Prepared, decoder_init, load_image, plain_preprocess, prepare_job
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, Ingestor

HEAVY = ("torch", "transformers", "sentence_transformers", "onnxruntime")


def _noise(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    """A smooth picture with detail: gradients plus noise, so crops and resizes matter."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width, 1) * 255, y / max(height, 1) * 255, (x + y) % 97 * 2.6][:channels], axis=-1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


def odd_images(folder: Path) -> list[Path]:
    """Every shape and mode the crops must get right."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    made: list[Path] = []

    def save(name: str, image: Image.Image, **kw) -> None:
        image.save(folder / name, **kw)
        made.append(folder / name)

    save("tall.png", Image.fromarray(_noise(rng, 300, 21)))
    save("wide.png", Image.fromarray(_noise(rng, 15, 410)))
    save("one-pixel.png", Image.fromarray(_noise(rng, 1, 1)))
    save("three-by-five.png", Image.fromarray(_noise(rng, 5, 3)))
    save("square-exact.png", Image.fromarray(_noise(rng, 32, 32)))
    save("just-over.png", Image.fromarray(_noise(rng, 35, 39)))
    save("palette.png", Image.fromarray(_noise(rng, 70, 90)).convert("P", palette=Image.Palette.ADAPTIVE))
    transparent = Image.fromarray(_noise(rng, 60, 50)).convert("P", palette=Image.Palette.ADAPTIVE)
    transparent.info["transparency"] = 3
    save("palette-transparent.png", transparent)
    rgba = np.concatenate([_noise(rng, 64, 80), rng.integers(0, 256, (64, 80, 1), dtype=np.uint8)], axis=-1)
    save("rgba.png", Image.fromarray(rgba))
    la = np.concatenate([_noise(rng, 50, 77, 1), rng.integers(0, 256, (50, 77, 1), dtype=np.uint8)], axis=-1)
    save("la.png", Image.fromarray(la))
    save("grey.png", Image.fromarray(_noise(rng, 40, 90, 1)[:, :, 0]))
    wide16 = (rng.integers(1000, 40000, (48, 72))).astype(np.uint16)
    save("sixteen-bit.png", Image.fromarray(wide16))
    save("cmyk.jpg", Image.fromarray(_noise(rng, 66, 88)).convert("CMYK"), quality=95)
    rotated = Image.fromarray(_noise(rng, 60, 100))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    save("exif-rotated.jpg", rotated, exif=exif.tobytes(), quality=95)
    save("large-draft.jpg", Image.fromarray(_noise(rng, 420, 630)), quality=90)  # JPEG draft mode
    save("small.jpg", Image.fromarray(_noise(rng, 48, 64)), quality=90)
    return made


def reference(encoder, paths: list[Path]) -> np.ndarray:
    """The sentence-transformers path: its image processor on the picture load_image makes."""
    return encoder.encode_images([load_image(str(p), target=encoder.image_size).image for p in paths])


def ingest_vectors(tmp_path: Path, model: Path, photos: Path, workers: int, encoder=None) -> dict[str, np.ndarray]:
    settings = Settings.resolve(model=str(model), index=str(tmp_path / f"index-{workers}"), device="cpu")
    encoder = encoder or LazyEncoder(str(model), "cpu")
    with open_index(settings, create=True) as index:
        summary = Ingestor(encoder, index, IngestOptions(batch_size=4, workers=workers, quiet=True)).run([photos])
        assert summary.skipped == 0 and summary.embedded == len(os.listdir(photos)), summary
        return {r.payload["path"]: np.asarray(r.vector) for r in index.scroll(with_vectors=True)}


def largest_distance(stored: dict[str, np.ndarray], expected: np.ndarray, paths: list[Path]) -> float:
    got = np.stack([stored[os.path.realpath(p)] for p in paths])
    return float((1.0 - np.sum(got * expected, axis=1)).max())


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_crops_give_the_sentence_transformers_vectors(tmp_path, tiny_model_dir, encoder, monkeypatch, path, workers):
    if path == "torch":
        monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")
    photos = tmp_path / "photos"
    paths = odd_images(photos)
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")

    def no_images(*_args, **_kwargs):
        raise AssertionError("the encoding process ran the image processor")

    monkeypatch.setattr(lazy.towers, "encode_images", no_images)
    stored = ingest_vectors(tmp_path, tiny_model_dir, photos, workers, lazy)
    assert lazy.towers.path == path
    assert largest_distance(stored, reference(encoder, paths), paths) <= 1e-4


def test_a_plain_encoder_takes_crops_too(tmp_path, tiny_st_model_dir):
    """The full model given to Ingestor directly (the sentence-transformers layout):
    crops through its vision model and projection, no image processor."""
    from clipsearch.encoders import Encoder

    full = Encoder(str(tiny_st_model_dir), "cpu")
    assert full.preprocess is not None
    photos = tmp_path / "photos"
    paths = odd_images(photos)
    expected = reference(full, paths)
    calls = []
    original = full.encode_images
    full.encode_images = lambda *a, **kw: calls.append(1) or original(*a, **kw)  # type: ignore[method-assign]
    stored = ingest_vectors(tmp_path, tiny_st_model_dir, photos, 2, full)
    assert not calls  # no image-processor pass in the encoding process
    assert largest_distance(stored, expected, paths) <= 1e-4


def test_crops_of_another_geometry_are_made_again(tmp_path, tiny_model_dir, encoder, monkeypatch):
    """The decoders start from the folder's files; where the loaded model says
    otherwise, what they made is redone with the model's own, never encoded as is."""
    photos = tmp_path / "photos"
    paths = odd_images(photos)
    wrong = Preprocess(shortest_edge=40, size=None, resample=2, crop=(40, 40), rescale=1 / 255,
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    monkeypatch.setattr(type(lazy.towers), "preprocess", property(
        lambda self: self._model_preprocess() if self.path else wrong))
    with pytest.raises(CropsMismatch):
        encoder.encode_crops(np.zeros((1, 40, 40, 3), np.uint8), wrong.geometry)
    stored = ingest_vectors(tmp_path, tiny_model_dir, photos, 2, lazy)
    assert largest_distance(stored, reference(encoder, paths), paths) <= 1e-4


def _heavy_modules() -> list[str]:
    import sys

    return sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)


def test_decoders_import_no_model_libraries(tmp_path, encoder):
    """A decoding process, after preparing crops, holds no torch, transformers or
    onnxruntime: each would cost it hundreds of MB for nothing."""
    photos = tmp_path / "photos"
    paths = odd_images(photos)
    plain = plain_preprocess(encoder.preprocess)
    with multiprocessing.get_context("spawn").Pool(1, initializer=decoder_init) as pool:
        outcomes = pool.map(prepare_job, [(str(p), encoder.image_size, 100.0, plain) for p in paths])
        assert pool.apply(_heavy_modules) == []
    assert all(isinstance(o[1], Prepared) for o in outcomes), [o[2] for o in outcomes]
    crop = outcomes[0][1]
    assert crop.pixels.dtype == np.uint8 and crop.pixels.shape == (32, 32, 3) and crop.pixels.flags.c_contiguous
    assert crop.fingerprint and crop.width == 21 and crop.height == 300
    rotated = next(o[1] for o in outcomes if o[0].endswith("exif-rotated.jpg"))
    assert (rotated.width, rotated.height) == (60, 100)  # as a viewer shows it
