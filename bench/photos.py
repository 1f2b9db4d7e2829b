"""Benchmark photo sets made from real photos that ship in scikit-image.

Full-size: 4000x3000 JPEGs of a few MB, like a camera's (upscaled photos plus sensor-
like noise, so they compress like real ones). Small: 640x480 JPEGs. Made once and
cached under bench/out/.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "out"


def _sources() -> list[Image.Image]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
             "hubble_deep_field.jpg", "retina.jpg", "coins.png", "camera.png", "moon.png"]
    return [Image.open(data / n).convert("RGB") for n in names if (data / n).is_file()]


def make_photos(kind: str, count: int, seed: int = 0) -> Path:
    size = {"large": (4000, 3000), "small": (640, 480)}[kind]
    folder = OUT / f"photos-{kind}-{count}"
    if folder.is_dir() and len(os.listdir(folder)) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _sources()
    for i in range(count):
        src = sources[i % len(sources)]
        # A different crop of each source per image, so no two files are alike.
        w, h = src.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = src.crop((left, top, left + w * 3 // 4, top + h * 3 // 4)).resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(crop, dtype=np.int16)
        noise = rng.normal(0, 6, size=pixels.shape).astype(np.int16)
        img = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
        img.save(folder / f"{kind}-{i:04d}.jpg", quality=92)
    return folder


def vit_b_32_model() -> Path:
    """A randomly initialised CLIP ViT-B/32: the real model's size and cost, not its quality."""
    from clipsearch.testing.random_clip import build_random_clip

    folder = OUT / "clip-vit-b-32-random"
    if not (folder / "model.safetensors").is_file():
        build_random_clip(folder, size="vit-b-32", seed=0)
    return folder
