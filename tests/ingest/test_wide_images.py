"""16-bit (and 32-bit) grey images, as scientific, medical and scanned images often are:
their real range is stretched onto 8 bits. Pillow's own conversion clips every value
above 255, so each such image came out solid white and all of them got one vector
(issue #15, defect 2)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.images import load_image

SIZE = (96, 80)


def picture(kind: str) -> np.ndarray:
    """A grey picture in 0..1: a disc on a gradient, or bars."""
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]] / np.array(SIZE[::-1]).reshape(2, 1, 1)
    if kind == "disc":
        return np.where((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08, 0.9, 0.2 + 0.3 * x)
    return np.where((x * 6).astype(int) % 2 == 0, 0.85, 0.1) * (0.5 + 0.5 * y)


def save_wide(path, values: np.ndarray, mode: str):
    """`values` in 0..1 as a file in `mode`, using only the lower part of its range, as
    a 12-bit sensor's 16-bit file does."""
    if mode == "I;16":
        image = Image.fromarray((values * 4095).astype(np.uint16))
    elif mode == "I;16B":
        image = Image.fromarray((values * 4095).astype(">u2"))
    else:  # "I": 32-bit integers
        image = Image.fromarray((values * 40000).astype(np.int32))
    image.save(path)
    with Image.open(path) as reloaded:
        if reloaded.mode != mode:
            pytest.skip(f"this Pillow writes {mode} to {path.suffix} as {reloaded.mode}")
    return path


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_wide_grey_images_keep_their_picture(tmp_path, encoder, mode, suffix):
    disc = save_wide(tmp_path / f"disc{suffix}", picture("disc"), mode)
    bars = save_wide(tmp_path / f"bars{suffix}", picture("bars"), mode)
    twin = tmp_path / "disc-8bit.png"
    Image.fromarray((picture("disc") * 255).astype(np.uint8)).save(twin)

    decoded = [load_image(str(p), 64).image for p in (disc, bars, twin)]
    pixels = np.asarray(decoded[0], dtype=np.float32)
    assert pixels.std() > 20 and pixels.min() < 30 and pixels.max() > 225  # the range is used, not white
    disc_v, bars_v, twin_v = encoder.encode_images(decoded)
    assert float(disc_v @ bars_v) < 0.995  # two pictures, two vectors (they were one before)
    assert float(disc_v @ twin_v) > float(disc_v @ bars_v)  # and it looks like its 8-bit twin
    assert float(disc_v @ twin_v) > 0.98


def test_a_flat_wide_image_is_black_not_an_error(tmp_path):
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((20, 30), 1234, dtype=np.uint16)).save(flat)
    assert np.asarray(load_image(str(flat)).image).max() == 0
