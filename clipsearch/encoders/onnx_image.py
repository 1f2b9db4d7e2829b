"""A CLIP image tower exported to ONNX, run by onnxruntime, with the model's preprocessing.

No torch, sentence-transformers or transformers: ingest through this tower starts in
about a second and encodes faster than torch on a CPU. encoders/image_export.py writes
the tower and records the preprocessing of the model's image processor (`Preprocess`)
in its manifest; encoders/lazy.py decides when ingest uses it.

`Preprocess` does what transformers' CLIP image processor (the PIL one) does, step for
step and in the same arithmetic: resize the shortest side with the same PIL filter,
center crop, rescale in float64 then cast to float32, normalize in float32. The export
checks the result against the full model on images of several shapes before the
tower is kept, so a processor it does not reproduce is an export failure, not
different vectors.

Imports numpy and PIL at import time; onnxruntime on first use.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .vectors import l2_normalize

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

# How far the tower's output for its probe image may move before the export counts as
# damaged: fp32 reproduces it to about 1e-7; int8 to about as much, since the probe
# runs alone (dynamic quantization scales activations per batch).
PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Preprocess:
    """The image processor's steps, as the manifest records them."""

    shortest_edge: int | None  # resize so that the shorter side is this; else to `size`
    size: tuple[int, int] | None  # (height, width) of a fixed-size resize
    resample: int  # PIL filter number
    crop: tuple[int, int] | None  # (height, width) of the center crop, None: no crop
    rescale: float | None  # multiply pixels by this (1/255), None: no rescale
    mean: tuple[float, float, float] | None  # normalize, None: no normalize
    std: tuple[float, float, float] | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        def pair(value):
            return None if value is None else (int(value[0]), int(value[1]))

        def triple(value):
            return None if value is None else tuple(float(v) for v in value)

        return cls(shortest_edge=None if data["shortest_edge"] is None else int(data["shortest_edge"]),
                   size=pair(data["size"]), resample=int(data["resample"]), crop=pair(data["crop"]),
                   rescale=None if data["rescale"] is None else float(data["rescale"]),
                   mean=triple(data["mean"]), std=triple(data["std"]))

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the tower takes."""
        if self.crop is not None:
            return self.crop
        if self.size is not None:
            return self.size
        raise ValueError("a shortest-edge resize without a crop gives images of different sizes")

    @cached_property
    def tables(self) -> np.ndarray:
        """(3, 256) float32: each channel's value for each byte, computed exactly as
        transformers does per pixel (float64 rescale, cast, float32 normalize), once."""
        values = np.arange(256, dtype=np.float64)
        if self.rescale is not None:
            values = values * self.rescale
        values32 = np.repeat(values.astype(np.float32)[None, :], 3, axis=0)
        if self.mean is not None and self.std is not None:
            mean = np.asarray(self.mean, dtype=np.float32)[:, None]
            std = np.asarray(self.std, dtype=np.float32)[:, None]
            values32 = (values32 - mean) / std
        return values32.astype(np.float32)

    def resized(self, image: "Image.Image") -> np.ndarray:
        """(height, width, 3) uint8: resized and cropped, before rescale and normalize."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        if self.shortest_edge is not None:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
        elif self.size is not None:
            new_h, new_w = self.size
        else:
            new_h, new_w = h, w
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=self.resample)
        pixels = np.asarray(image)
        return pixels if self.crop is None else center_crop(pixels, self.crop)

    def __call__(self, images: Sequence["Image.Image"]) -> np.ndarray:
        """(n, 3, height, width) float32, the tower's input."""
        tables = self.tables
        height, width = self.output_size
        out = np.empty((len(images), 3, height, width), dtype=np.float32)
        for row, image in enumerate(images):
            pixels = self.resized(image)
            if pixels.shape[:2] != (height, width):
                raise ValueError(f"preprocessing gave {pixels.shape[:2]}, the tower takes {(height, width)}")
            for channel in range(3):
                out[row, channel] = tables[channel][pixels[:, :, channel]]
        return out


def center_crop(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """transformers' center_crop on (h, w, c): the same offsets, and zero padding
    around an image smaller than the crop."""
    height, width = pixels.shape[:2]
    crop_h, crop_w = size
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width:
        return pixels[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w) + pixels.shape[2:], dtype=pixels.dtype)
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[top_pad:top_pad + height, left_pad:left_pad + width] = pixels
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def probe_image(side: int) -> "Image.Image":
    """A fixed picture (gradients and a bright square) whose vector the manifest
    records: drawn, not stored, so the entry holds no image file."""
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / max(side - 1, 1)
    pixels = np.stack([x * 255, y * 255, (1 - x) * (1 - y) * 255], axis=-1)
    pixels[side // 4: side // 2, side // 4: side // 2] = (250, 240, 30)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


class OnnxImageTower:
    """An exported image tower in an onnxruntime session, with its preprocessing.

    `threads`: onnxruntime's intra-op threads (None: its default, one per core).
    `spin`: let idle threads busy-wait for the next run; off when decoding processes
    share the cores, which spinning threads would starve. `probe`: (side, vector) of
    probe_image, checked on load: weights damaged on disk since the export fail
    here, before any vector is stored."""

    def __init__(self, onnx_path: Path, preprocess: Preprocess, threads: int | None = None, spin: bool = True,
                 probe: tuple[int, Sequence[float]] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Optimized once at export time; loading skips the optimizer.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.preprocess = preprocess
        if probe is not None:
            self.check_probe(*probe)

    def check_probe(self, side: int, vector: Sequence[float]) -> None:
        got = self.encode_images([probe_image(side)])[0]
        expected = l2_normalize(np.asarray(vector, dtype=np.float32))[0]
        distance = float(1.0 - got @ expected)
        if not distance <= PROBE_TOLERANCE:
            raise ValueError(f"its output for a known image moved by cosine distance {distance:.1e}: "
                             "the files changed since the export")

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Unit vectors for a preprocessed (n, 3, h, w) batch."""
        return l2_normalize(self.session.run(None, {self.input_name: pixels})[0])

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 32) -> np.ndarray:
        images = list(images)
        out = [self.run(self.preprocess(images[start:start + batch_size]))
               for start in range(0, len(images), batch_size)]
        if not out:
            return np.zeros((0, int(self.session.get_outputs()[0].shape[-1])), dtype=np.float32)
        return np.concatenate(out)
