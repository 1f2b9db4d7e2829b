"""Issue 16: the image tower exported to ONNX for ingest. Its vectors match the torch
model's (the index stays valid for either path), its preprocessing is the image
processor's, a damaged export is rebuilt and never used, a failed one is remembered
and torch answers, and int8 is a precision of its own in the model identity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoders import Encoder, cache, location
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.encoders.image_export import INT8_TOLERANCE, export_image_tower, parity_images, preprocess_of
from clipsearch.encoders.image_towers import ImageTowers
from clipsearch.encoders.lazy import LazyEncoder
from clipsearch.encoders.onnx_image import OnnxImageTower, Preprocess
from clipsearch.errors import ClipsearchError
from clipsearch.images import load_image
from clipsearch.testing.random_clip import build_random_clip

from support import draw_collection, draw_image


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1.0 - np.sum(a * b, axis=1)


def export(model_dir, encoder, precision="fp32") -> cache.TowerEntry:
    folder, key, _ = location.locate(str(model_dir))
    export_image_tower(encoder, key, folder, str(model_dir), precision)
    entry = cache.read_entry(key, cache.image_kind(precision))
    assert entry is not None and not entry.failed
    return entry


def tower_of(entry: cache.TowerEntry) -> OnnxImageTower:
    m = entry.manifest
    return OnnxImageTower(entry.onnx_path, Preprocess.from_dict(m["preprocess"]), threads=2,
                          probe=(m["probe"]["side"], m["probe"]["vector"]))


def photos_as_ingest_decodes_them(folder, size: int) -> list[Image.Image]:
    """Real files of several sizes and formats, decoded the way ingest's workers do."""
    paths = draw_collection(folder, 10)
    paths += [draw_image(folder / "wide.jpg", "blue", "square", size=(400, 90), fmt="JPEG"),
              draw_image(folder / "tall.png", "green", "triangle", size=(50, 300)),
              draw_image(folder / "tiny.png", "orange", "circle", size=(9, 7))]
    return [load_image(str(p), target=size).image for p in paths]


class Said(list):
    def __call__(self, text: str) -> None:
        self.append(text)


# -- vector parity -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["transformers", "sentence-transformers"])
def test_onnx_image_vectors_match_torch_tiny(layout, tiny_model_dir, tiny_st_model_dir, encoder, tmp_path):
    model_dir = tiny_model_dir if layout == "transformers" else tiny_st_model_dir
    full = encoder if layout == "transformers" else Encoder(str(model_dir), "cpu")
    entry = export(model_dir, full)
    assert entry.identity == full.identity and entry.manifest["precision"] == "fp32"
    assert entry.manifest["parity_max_cosine_distance"] <= 1e-5
    images = photos_as_ingest_decodes_them(tmp_path / "photos", full.image_size)
    fast = tower_of(entry).encode_images(images, batch_size=4)  # several batches, one partial
    assert cosine_distances(fast, full.encode_images(images)).max() <= 1e-4
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_onnx_image_vectors_match_torch_vit_b_32(tmp_path_factory, tmp_path):
    model_dir = build_random_clip(tmp_path_factory.mktemp("models") / "vit-b-32", size="vit-b-32", seed=0)
    full = Encoder(str(model_dir), "cpu")
    entry = export(model_dir, full)
    images = photos_as_ingest_decodes_them(tmp_path / "photos", full.image_size)
    fast = tower_of(entry).encode_images(images)
    assert fast.shape == (len(images), 512)
    assert cosine_distances(fast, full.encode_images(images)).max() <= 1e-4
    int8 = tower_of(export(model_dir, full, "int8"))
    quantized = np.concatenate([int8.encode_images([image]) for image in images])
    assert cosine_distances(quantized, fast).max() <= INT8_TOLERANCE


def test_preprocessing_is_the_image_processors(encoder):
    """Pixel for pixel what transformers gives the model, on every branch: shrink,
    enlarge, wide, tall, odd sizes, and a crop larger than the resized image."""
    processor = encoder.st[0].processor.image_processor
    ours = preprocess_of(encoder)
    images = parity_images(encoder.image_size) + [
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in ((33, 31), (31, 33), (5, 97), (640, 480), (1, 1))]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours(images), expected, rtol=0, atol=1e-6)

    padded = Preprocess(shortest_edge=8, size=None, resample=3, crop=(12, 10), rescale=1 / 255,
                        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert padded(images[:2]).shape == (2, 3, 12, 10)


def test_a_processor_it_cannot_reproduce_is_an_export_failure(encoder, monkeypatch):
    from clipsearch.encoders.tower_export import ExportError

    processor = encoder.st[0].processor.image_processor
    monkeypatch.setattr(processor, "size", {"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(ExportError, match="not a size"):
        preprocess_of(encoder)


# -- the choice ingest makes -------------------------------------------------------------------


def towers_for(model_dir, device="cpu", precision="fp32", said=None) -> tuple[LazyEncoder, Said]:
    said = Said() if said is None else said
    lazy = LazyEncoder(str(model_dir), device, precision=precision, say=said, tell=said, threads=1)
    lazy.identity  # noqa: B018 - as Ingestor does before anything else
    return lazy, said


def test_first_use_exports_once_and_later_runs_load_no_model(tiny_model_dir, encoder, tmp_path):
    images = photos_as_ingest_decodes_them(tmp_path / "photos", encoder.image_size)
    first, said = towers_for(tiny_model_dir)
    vectors = first.encode_images(images)
    assert first.towers.path == "onnx" and first.loaded  # loaded to export
    assert sum("exported the image tower to ONNX in" in line for line in said) == 1, said
    second, said = towers_for(tiny_model_dir)
    assert second.image_size == encoder.image_size  # from the manifest
    np.testing.assert_allclose(second.encode_images(images), vectors, atol=1e-6)
    assert second.towers.path == "onnx" and second.cached and not second.loaded
    assert not any("exported" in line for line in said)


DAMAGE = {
    "weights flipped": lambda e: flip_bytes(e.folder / "image.onnx.data"),
    "weights cut short": lambda e: (e.folder / "image.onnx.data").write_bytes(
        (e.folder / "image.onnx.data").read_bytes()[:1000]),
    "graph not ONNX": lambda e: (e.folder / "image.onnx").write_bytes(
        b"x" * (e.folder / "image.onnx").stat().st_size),
    "manifest missing": lambda e: (e.folder / "manifest.json").unlink(),
    "manifest not JSON": lambda e: (e.folder / "manifest.json").write_text("{"),
}


def flip_bytes(path) -> None:
    """Same size, different weights: only the probe image can tell."""
    data = bytearray(path.read_bytes())
    block = np.frombuffer(bytes(data[4096:4096 + 4096]), dtype=np.float32).copy()
    block[np.isfinite(block)] *= -3.0
    data[4096:4096 + 4096] = block.tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_export_is_rebuilt_never_used(damage, tiny_model_dir, encoder, tmp_path):
    entry = export(tiny_model_dir, encoder)
    DAMAGE[damage](entry)
    images = photos_as_ingest_decodes_them(tmp_path / "photos", encoder.image_size)
    lazy, said = towers_for(tiny_model_dir)
    vectors = lazy.encode_images(images)
    assert any("damaged" in line for line in said), said
    assert any("exported the image tower" in line for line in said), said
    assert cosine_distances(vectors, encoder.encode_images(images)).max() <= 1e-4
    rebuilt = cache.read_entry(entry.folder.name, cache.IMAGE)
    assert rebuilt is not None and not rebuilt.failed and tower_of(rebuilt) is not None


def test_a_failed_export_is_remembered_and_torch_answers(tiny_model_dir, encoder, tmp_path, monkeypatch):
    import clipsearch.encoders.image_export as image_export
    from clipsearch.encoders.tower_export import ExportError

    def refuse(*args, **kwargs):
        raise ExportError("this model's image tower cannot be traced")

    monkeypatch.setattr(image_export, "export_image_tower", refuse)
    images = photos_as_ingest_decodes_them(tmp_path / "photos", encoder.image_size)
    lazy, said = towers_for(tiny_model_dir)
    vectors = lazy.encode_images(images)
    assert lazy.towers.path == "torch" and "cannot be traced" in lazy.towers.why_torch
    assert any("torch" in line and "cannot be traced" in line for line in said), said
    np.testing.assert_allclose(vectors, encoder.encode_images(images), atol=1e-6)
    again, said = towers_for(tiny_model_dir)  # not tried again until the model's files change
    again.encode_images(images[:1])
    assert again.towers.path == "torch" and "failed before" in again.towers.why_torch


def test_a_full_cache_is_not_remembered_as_a_failed_export(tiny_model_dir, encoder, tmp_path, monkeypatch):
    import errno

    import clipsearch.encoders.image_export as image_export

    def full(*args, **kwargs):
        raise cache.CacheFull(errno.ENOSPC, "No space left on device", str(tmp_path))

    monkeypatch.setattr(image_export, "export_image_tower", full)
    lazy, said = towers_for(tiny_model_dir)
    lazy.encode_images(photos_as_ingest_decodes_them(tmp_path / "photos", encoder.image_size)[:2])
    assert lazy.towers.path == "torch" and "once there is room" in lazy.towers.why_torch
    monkeypatch.undo()
    key = location.locate(str(tiny_model_dir))[1]
    assert cache.read_entry(key, cache.IMAGE) is None  # nothing recorded: the next run exports


def test_fast_path_off_and_gpus_keep_torch(tiny_model_dir, monkeypatch):
    import clipsearch.encoders.image_towers as image_towers

    def reason(device="cpu"):
        return ImageTowers(str(tiny_model_dir), device, "fp32", lambda: None, lambda: None).blocker()

    assert reason() is None
    assert "--device cuda" in reason("cuda") and "--device cuda:1" in reason("cuda:1")
    monkeypatch.setattr(image_towers, "torch_would_use_a_gpu", lambda: True)
    assert "found a GPU" in reason("auto")
    monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")
    assert "CLIPSEARCH_FAST_PATH=0" in reason()
    with pytest.raises(ClipsearchError, match="int8 needs the ONNX image tower"):
        LazyEncoder(str(tiny_model_dir), "cpu", precision="int8").identity  # noqa: B018


def test_finding_out_whether_torch_would_use_a_gpu_imports_no_torch():
    code = ("import sys, json\nfrom clipsearch.encoders.image_towers import torch_would_use_a_gpu\n"
            "print(json.dumps([torch_would_use_a_gpu(), 'torch' in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    uses_gpu, imported = json.loads(done.stdout)
    assert imported is False
    import torch

    assert uses_gpu == torch.cuda.is_available()


# -- int8 and the identity ---------------------------------------------------------------------


def test_int8_is_its_own_export_close_to_fp32(tiny_model_dir, encoder, tmp_path):
    images = photos_as_ingest_decodes_them(tmp_path / "photos", encoder.image_size)
    lazy, said = towers_for(tiny_model_dir, precision="int8")
    assert lazy.identity.precision == "int8" and lazy.identity.image_fingerprint == encoder.identity.image_fingerprint
    quantized = lazy.encode_images(images)
    assert lazy.towers.path == "onnx" and any("int8 image tower" in line for line in said), said
    key = location.locate(str(tiny_model_dir))[1]
    int8 = cache.read_entry(key, cache.IMAGE_INT8)
    fp32 = cache.read_entry(key, cache.IMAGE)  # made first: int8 is quantized from it
    assert int8 is not None and fp32 is not None and int8.folder != fp32.folder
    assert int8.manifest["precision"] == "int8"
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8.onnx_path), load_external_data=False).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # the weight MatMuls; attention's stay float
    distances = cosine_distances(quantized, encoder.encode_images(images))
    assert 0 < distances.max() <= INT8_TOLERANCE


def test_fp32_identity_is_byte_compatible_and_precisions_do_not_mix(encoder):
    fp32 = encoder.identity
    old_record = {"name": fp32.name, "image_fingerprint": fp32.image_fingerprint,
                  "text_fingerprint": fp32.text_fingerprint, "dim": fp32.dim}
    assert json.dumps(fp32.to_dict()) == json.dumps(old_record)  # what collections hold today
    assert ModelIdentity.from_dict(old_record).precision == "fp32"
    int8 = fp32.with_precision("int8")
    assert ModelIdentity.from_dict(int8.to_dict()).precision == "int8"
    assert not int8.is_compatible_with(fp32) and not fp32.is_compatible_with(int8)
    for ours, stored in ((int8, fp32), (fp32, int8)):
        with pytest.raises(ClipsearchError) as caught:
            ours.check_against(stored, "photos")
        message = str(caught.value)
        assert "\n" not in message and "precision mismatch" in message and f"--precision {stored.precision}" in message
    query = fp32.for_queries()  # text vectors do not depend on the image precision
    assert query.is_compatible_with(int8) and query.is_compatible_with(fp32)
    assert query.to_dict() == fp32.to_dict()
    with pytest.raises(ClipsearchError, match="damaged"):
        ModelIdentity.from_dict({**old_record, "precision": "int4"})
