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

    @property
    def geometry(self) -> tuple:
        """What decides the pixels a decoder hands over (resize and crop): two
        preprocessings with the same geometry take the same uint8 crops, and differ at
        most in rescale and normalize, which the encoding process applies."""
        return (self.shortest_edge, self.size, self.resample, self.crop)

    def crop_pixels(self, image: "Image.Image") -> np.ndarray:
        """(height, width, 3) uint8, contiguous: the tower's input before rescale and
        normalize. What a decoding worker hands the encoding process (ingest/pipeline.py)."""
        pixels = self.resized(image)
        if pixels.shape[:2] != self.output_size:
            raise ValueError(f"preprocessing gave {pixels.shape[:2]}, the tower takes {self.output_size}")
        return np.ascontiguousarray(pixels)

    def normalize(self, crops: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(n, height, width, 3) uint8 crops -> (n, 3, height, width) float32, the
        tower's input: one table lookup per channel over the whole batch (the same
        values as transformers' per-pixel arithmetic, see `tables`)."""
        crops = np.asarray(crops, dtype=np.uint8)
        if crops.ndim != 4 or crops.shape[3] != 3:
            raise ValueError(f"expected (n, height, width, 3) uint8 crops, got shape {crops.shape}")
        tables = self.tables
        planes = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))  # channels first, still bytes
        out = np.empty(planes.shape, dtype=np.float32)
        for channel in range(3):  # 0.36 ms an image for 224x224 (np.take, or one flat table: slower)
            out[:, channel] = tables[channel][planes[:, channel]]
        return out

    def __call__(self, images: Sequence["Image.Image"]) -> np.ndarray:
        """(n, 3, height, width) float32, the tower's input."""
        height, width = self.output_size
        if not images:
            return np.empty((0, 3, height, width), dtype=np.float32)
        return self.normalize([self.crop_pixels(image) for image in images])


# transformers' CLIPImageProcessor defaults (OPENAI_CLIP_MEAN and _STD), for the keys a
# saved processor leaves out.
CLIP_DEFAULTS = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
                 "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                 "image_std": [0.26862954, 0.26130258, 0.27577711]}


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and value.get("height") and value.get("width"):
        return int(value["height"]), int(value["width"])
    raise ValueError(f"the image processor's size {value!r} is not a size this reproduces")


def preprocess_from_config(config: dict) -> Preprocess:
    """A CLIP image processor's saved settings (its preprocessor_config.json, or the
    "image_processor" of a processor_config.json) as a Preprocess, the way transformers
    reads them; ValueError for a processor that is not CLIP's or not reproducible."""
    kind = str(config.get("image_processor_type", "CLIPImageProcessor"))
    if not kind.startswith("CLIPImageProcessor"):
        raise ValueError(f"the image processor {kind} is not CLIP's")
    config = {**CLIP_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    shortest_edge = size = crop = None
    if config["do_resize"]:
        given = config["size"]
        if isinstance(given, dict) and given.get("shortest_edge") and not given.get("longest_edge"):
            shortest_edge = int(given["shortest_edge"])
        elif isinstance(given, int) and not config.get("default_to_square", False):
            shortest_edge = given
        else:
            size = _pair(given)
    if config["do_center_crop"]:
        crop = _pair(config["crop_size"])
    mean = std = None
    if config["do_normalize"]:
        mean = tuple(float(v) for v in config["image_mean"])
        std = tuple(float(v) for v in config["image_std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("the image processor does not normalize three channels")
    return Preprocess(shortest_edge=shortest_edge, size=size, resample=int(config["resample"]), crop=crop,
                      rescale=float(config["rescale_factor"]) if config["do_rescale"] else None,
                      mean=mean, std=std)  # type: ignore[arg-type]


def preprocess_from_folder(folder: Path) -> Preprocess | None:
    """The preprocessing a model folder's processor files describe (a transformers CLIP
    folder, or the first module of a sentence-transformers one), read without
    transformers; None where the files do not say or describe something else. Used
    to start the decoders before the model is loaded; the encoding process checks it
    against the model's own (ingest/pipeline.py redoes any crop that differs)."""
    import json

    try:
        folder = Path(folder)
        if not (folder / "config.json").is_file() and (folder / "modules.json").is_file():
            modules = json.loads((folder / "modules.json").read_text())
            folder = folder / str(modules[0]["path"])
        if (folder / "preprocessor_config.json").is_file():
            config = json.loads((folder / "preprocessor_config.json").read_text())
        else:
            config = json.loads((folder / "processor_config.json").read_text())["image_processor"]
        return preprocess_from_config(config)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


class CropsMismatch(ValueError):
    """Crops made with a resize and crop other than the model's (ingest's decoders
    started from the model folder's files before the model was loaded, and the two
    differ), or a model that takes only whole images: the caller makes them again."""


def check_geometry(preprocess: Preprocess | None, geometry: tuple) -> Preprocess:
    """`preprocess` when crops made with `geometry` are its own; else CropsMismatch."""
    if preprocess is None or preprocess.geometry != tuple(geometry):
        raise CropsMismatch(f"crops made with {tuple(geometry)}, the model's preprocessing is "
                            f"{preprocess.geometry if preprocess is not None else 'whole images only'}")
    return preprocess


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
