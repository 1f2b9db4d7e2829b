"""Export a loaded model's image tower to ONNX (fp32, and int8 on request) for ingest.

Runs once per model (as its files are now), when an ingest first has files to embed
and finds no export: it loads the full model for this (torch), and from then on
ingest on a CPU encodes through onnxruntime (encoders/lazy.py). Tracing, optimizing
and publishing the entry are tower_export.py's, shared with the text tower.

fp32: the vision tower and its projection, traced with a dynamic batch axis, and the
model's preprocessing recorded as data (onnx_image.Preprocess). Checked before it is
kept: on PARITY_SHAPES (synthetic pictures of several sizes and aspect ratios) the
exported tower and our preprocessing must give the full model's vectors within
PARITY_TOLERANCE cosine distance, so an index built by either path stays valid for
the other and the collection's model identity does not change.

int8 (`--precision int8`): the fp32 export with onnxruntime's dynamic quantization of
its MatMul weights (int8 weights, activations quantized per batch at run time). Its
vectors differ from fp32 ones (the manifest records by how much on the parity set),
which is why the collection's identity records the precision. Dynamic, not static
with calibration: it needs no sample of the user's photos before the first one is
embedded, and it quantizes the weights that hold nearly all of a ViT's compute.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np

from . import cache
from .identity import FP32, INT8
from .onnx_image import OnnxImageTower, Preprocess, preprocess_from_config, probe_image
from .tower_export import ExportError, build_entry, largest_cosine_distance, onnx_sizes, optimize, trace

ONNX_FILE = "image.onnx"
ONNX_DATA = "image.onnx.data"
# (width, height) as multiples of the model's input side: square, wide, tall, just
# over, and smaller than the input (upscaled), so every branch of the resize and crop runs.
PARITY_SHAPES = ((1.0, 1.0), (2.0, 1.0), (1.0, 1.5), (1.2, 1.1), (0.6, 0.5), (3.1, 1.7))
# Cosine distance allowed between the exported fp32 tower and the full model (the contract is 1e-4).
PARITY_TOLERANCE = 1e-5
# int8 vectors drift from fp32 ones; beyond this on the parity set the quantized
# tower is broken rather than approximate, and is not kept.
INT8_TOLERANCE = 0.05
# Only MatMul: the transformer's linear layers, nearly all of the compute. A quantized
# Conv (the patch embedding) runs as ConvInteger, which onnxruntime does not speed up.
INT8_OPS = ["MatMul"]


def _image_processor(encoder):
    processor = getattr(encoder.st[0], "processor", None)
    return getattr(processor, "image_processor", processor)


def preprocess_of(encoder) -> Preprocess:
    """The model's image preprocessing as data, or ExportError for a processor whose
    steps onnx_image.Preprocess does not reproduce: the loaded processor's settings,
    read as the decoders read a model folder's (onnx_image.preprocess_from_config)."""
    processor = _image_processor(encoder)
    if processor is None or not hasattr(processor, "to_dict"):
        raise ExportError("the model has no image processor to reproduce")
    config = processor.to_dict()
    config["image_processor_type"] = config.get("image_processor_type") or type(processor).__name__
    try:
        return preprocess_from_config(config)
    except ValueError as exc:  # its message names the step
        raise ExportError(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise ExportError(f"the image processor's settings are not ones this export reproduces ({exc!r})") from None


def parity_images(side: int) -> list:
    """Synthetic pictures of PARITY_SHAPES: smooth gradients, hard edges and noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i, (fw, fh) in enumerate(PARITY_SHAPES):
        w, h = max(2, round(side * fw)), max(2, round(side * fh))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        pixels = np.stack([x / w * 255, y / h * 255, np.full((h, w), 40.0 * i)], axis=-1)
        pixels[h // 3: h // 2, w // 5: w // 2] = rng.integers(0, 256, 3)
        pixels += rng.normal(0, 12, pixels.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return images


def _image_tower(clip):
    """The image tower as its own module: pixels in, projected vector out."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            out = self.clip.get_image_features(pixel_values=pixel_values)
            return out if torch.is_tensor(out) else out.pooler_output

    return ImageTower(clip).eval()


@contextlib.contextmanager
def _root_logger_silenced():
    """onnxruntime.quantization advises, through the root logger, running its
    pre-processing (shape inference and the optimizer): the fp32 export was optimized
    already. A bare logging.warning() would also install a stderr handler on the root
    logger for the rest of the process; a NullHandler meanwhile keeps it from doing so.
    The advice is dropped by a filter on the root logger, which only records logged to
    it directly pass: logging.disable would silence every logger of the process
    meanwhile, and its level, the app's own, is not ours to reset."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    advice = _BelowError()
    root.addHandler(guard)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        root.removeHandler(guard)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _versions() -> dict:
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def export_image_tower(encoder, key: str, folder: Path, model: str, precision: str = FP32) -> tuple[Path, float]:
    """Write the cache entry `key` for `encoder`'s image tower at `precision` (int8
    exports fp32 first when it is not there yet); return the entry's folder and the
    largest cosine distance to the full model seen on the parity images."""
    if precision != INT8:
        return _export_fp32(encoder, key, folder, model)
    source, _ = cache.read_or_discard(key, cache.IMAGE)
    if source is None:
        _export_fp32(encoder, key, folder, model)
        source, _ = cache.read_or_discard(key, cache.IMAGE)
    if source is None or source.failed:
        raise ExportError(f"the fp32 image tower it is quantized from is not available"
                          f"{': ' + source.failed if source is not None and source.failed else ''}")
    return _export_int8(encoder, key, source)


def _export_fp32(encoder, key: str, folder: Path, model: str) -> tuple[Path, float]:
    import torch

    preprocess = preprocess_of(encoder)
    identity = encoder.identity  # hashes the weights: ingest on the fast path never has to
    side = int(encoder.image_size)
    images = parity_images(side)
    measured: dict[str, float] = {}

    def build(tmp: Path) -> dict:
        clip = encoder.clip
        param = next(clip.parameters())
        height, width = preprocess.output_size
        sample = torch.zeros((2, 3, height, width), dtype=param.dtype, device=param.device)
        raw = tmp / "raw.onnx"
        trace(_image_tower(clip), (sample,), raw, input_names=["pixel_values"], output_names=["image_embeds"],
              dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
        optimize(raw, tmp / ONNX_FILE, ONNX_DATA)
        raw.unlink()
        tower = OnnxImageTower(tmp / ONNX_FILE, preprocess)
        fast = tower.encode_images(images)
        probe = tower.encode_images([probe_image(side)])[0]
        del tower
        distance = measured["distance"] = largest_cosine_distance(fast, encoder.encode_images(images))
        if not distance <= PARITY_TOLERANCE:
            raise ExportError(f"the exported image tower differs from the model (cosine distance {distance:.2e})")
        return {"model": model, "folder": str(folder), "identity": identity.to_dict(), "precision": FP32,
                "image_size": side, "preprocess": preprocess.to_dict(),
                "onnx_sizes": onnx_sizes(tmp, ONNX_FILE, ONNX_DATA), "parity_max_cosine_distance": distance,
                "probe": {"side": side, "vector": [float(x) for x in probe]}, **_versions(), "created": time.time()}

    return build_entry(cache.IMAGE, key, build), measured["distance"]


def _export_int8(encoder, key: str, source: cache.TowerEntry) -> tuple[Path, float]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = source.manifest
    preprocess = Preprocess.from_dict(m["preprocess"])
    side = int(m["image_size"])
    images = parity_images(side)
    measured: dict[str, float] = {}

    def build(tmp: Path) -> dict:
        with _root_logger_silenced():
            quantize_dynamic(source.onnx_path, tmp / ONNX_FILE, weight_type=QuantType.QInt8,
                             op_types_to_quantize=INT8_OPS)
        tower = OnnxImageTower(tmp / ONNX_FILE, preprocess)
        # One image per run: dynamic quantization scales a run's activations together,
        # so the vectors checked here are the ones each image would get alone.
        quantized = np.concatenate([tower.encode_images([image]) for image in images])
        probe = tower.encode_images([probe_image(side)])[0]
        del tower
        distance = measured["distance"] = largest_cosine_distance(quantized, encoder.encode_images(images))
        if not distance <= INT8_TOLERANCE:
            raise ExportError(f"the int8 image tower is too far from the model (cosine distance {distance:.2e})")
        return {**{k: m[k] for k in ("model", "folder", "identity", "image_size", "preprocess")}, "precision": INT8,
                "onnx_sizes": onnx_sizes(tmp, ONNX_FILE, ONNX_DATA), "int8_ops": INT8_OPS,
                "parity_max_cosine_distance": distance,
                "probe": {"side": side, "vector": [float(x) for x in probe]}, **_versions(), "created": time.time()}

    return build_entry(cache.IMAGE_INT8, key, build), measured["distance"]
