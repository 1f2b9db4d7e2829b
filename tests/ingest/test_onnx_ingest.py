"""Issue 16: `clipsearch ingest` on a CPU encodes with the ONNX image tower. The first
run that has files to embed exports it (one stderr line, with the time); later runs
import neither torch nor sentence-transformers; the vectors are the torch path's;
--precision int8 is a collection of its own; CLIPSEARCH_FAST_PATH=0 and --verbose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from clipsearch.config import Settings
from clipsearch.images import load_image
from clipsearch.index import open_index
from clipsearch.ingest.cores import plan_cores

from support import draw_collection, draw_image

HEAVY = {"torch", "sentence_transformers", "transformers"}
CLIPSEARCH = Path(sys.executable).parent / "clipsearch"  # the installed console script


def clipsearch(*args, env: dict | None = None, importtime: bool = False) -> subprocess.CompletedProcess:
    """The real console script in a fresh process, with this test's cache folder
    (conftest.isolated_env). `importtime`: Python reports every module it imports
    (what ends up in sys.modules) on stderr, as `python -X importtime` would."""
    full_env = dict(os.environ, **(env or {}))
    if importtime:
        full_env["PYTHONPROFILEIMPORTTIME"] = "1"
    return subprocess.run([str(CLIPSEARCH), *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=300)


def imported_packages(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:")}


def messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def new_photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    """Pictures unlike any earlier ones (ingest would take an equal file for a copy)."""
    return [draw_image(folder / f"new-{i:03d}.jpg", "purple", "triangle", size=(120 + i, 90), fmt="JPEG")
            for i in range(start, start + count)]


def stored_vectors(index: Path, model: Path, collection: str = "images") -> dict[str, np.ndarray]:
    settings = Settings.resolve(model=str(model), index=str(index), collection=collection)
    with open_index(settings) as opened:
        return {r.payload["path"]: np.asarray(r.vector) for r in opened.scroll(with_vectors=True)}


def test_once_exported_ingest_imports_no_torch(tmp_path, tiny_model_dir):
    photos, index = tmp_path / "photos", tmp_path / "index"
    draw_collection(photos, 6)
    args = ["ingest", photos, "--index", index, "--model", tiny_model_dir, "-w", "0", "--json"]

    first = clipsearch(*args, importtime=True)
    assert summary(first)["embedded"] == 6
    assert "torch" in imported_packages(first.stderr)  # the check below can fail: the export needs torch
    [line] = [m for m in messages(first.stderr) if "ONNX" in m]
    assert line.startswith("clipsearch: exported the image tower to ONNX in ") and " s, once" in line, line
    assert "torch" in line

    new_photos(photos, 5)
    second = clipsearch(*args, importtime=True)
    assert (summary(second)["embedded"], summary(second)["unchanged"]) == (5, 6)
    assert not imported_packages(second.stderr) & HEAVY, sorted(imported_packages(second.stderr) & HEAVY)
    assert "onnxruntime" in imported_packages(second.stderr)
    assert not any("export" in m for m in messages(second.stderr)), second.stderr[-2000:]


def test_onnx_and_torch_vectors_are_interchangeable_in_one_collection(tmp_path, tiny_model_dir, encoder):
    """A collection started by torch takes ONNX vectors and the other way round: same
    vectors, same model identity, byte for byte the record torch wrote."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    torch_made = draw_collection(photos, 5)
    args = ["ingest", photos, "--index", index, "--model", tiny_model_dir, "-w", "0", "-q", "-v"]
    record = index / "images" / "model.json"

    by_torch = clipsearch(*args, env={"CLIPSEARCH_FAST_PATH": "0"})
    assert by_torch.returncode == 0, by_torch.stderr
    assert "image tower: torch" in by_torch.stderr and "CLIPSEARCH_FAST_PATH=0" in by_torch.stderr
    written_by_torch = record.read_bytes()
    assert b"precision" not in written_by_torch

    onnx_made = new_photos(photos, 4)
    by_onnx = clipsearch(*args)
    assert by_onnx.returncode == 0, by_onnx.stderr
    assert "image tower: onnxruntime fp32" in by_onnx.stderr
    assert record.read_bytes() == written_by_torch  # the identity did not change

    stored = stored_vectors(index, tiny_model_dir)
    paths = torch_made + onnx_made
    expected = encoder.encode_images([load_image(str(p), target=encoder.image_size).image for p in paths])
    got = np.stack([stored[os.path.realpath(p)] for p in paths])
    assert (1.0 - np.sum(got * expected, axis=1)).max() <= 1e-4


def test_a_damaged_export_is_rebuilt_by_the_next_ingest(tmp_path, tiny_model_dir, encoder):
    photos, index, cache = tmp_path / "photos", tmp_path / "index", Path(os.environ["CLIPSEARCH_CACHE_DIR"])
    draw_collection(photos, 3)
    args = ["ingest", photos, "--index", index, "--model", tiny_model_dir, "-w", "0", "--json", "-v"]
    summary(clipsearch(*args))
    [data] = (cache / "image-towers").glob("*/image.onnx.data")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # a partial export

    fresh = new_photos(photos, 2)
    again = clipsearch(*args)
    assert summary(again)["embedded"] == 2
    assert "damaged" in again.stderr and "exported the image tower" in again.stderr, again.stderr
    stored = stored_vectors(index, tiny_model_dir)
    expected = encoder.encode_images([load_image(str(p), target=encoder.image_size).image for p in fresh])
    got = np.stack([stored[os.path.realpath(p)] for p in fresh])
    assert (1.0 - np.sum(got * expected, axis=1)).max() <= 1e-4


def test_int8_is_a_collection_of_its_own(tmp_path, tiny_model_dir):
    photos, index = tmp_path / "photos", tmp_path / "index"
    draw_collection(photos, 6)
    base = ["ingest", photos, "--index", index, "--model", tiny_model_dir, "-w", "0", "-q"]

    made = clipsearch(*base[:-1], "-c", "quantized", "--json", env={"CLIPSEARCH_PRECISION": "int8"})
    assert summary(made)["embedded"] == 6
    assert json.loads((index / "quantized" / "model.json").read_text())["precision"] == "int8"
    assert "exported the int8 image tower" in made.stderr and "WARNING" not in made.stderr, made.stderr

    fp32 = clipsearch(*base, "-c", "quantized", "--precision", "fp32")
    assert fp32.returncode == 1
    assert fp32.stderr.count("\n") == 1 and "precision mismatch" in fp32.stderr and "--precision int8" in fp32.stderr

    # Named nowhere, the collection's own: a nightly `clipsearch ingest` keeps adding int8 vectors.
    draw_image(photos / "later.png", "green", "square", mark=400)
    nightly = clipsearch(*base[:-1], "-c", "quantized", "--json")
    assert nightly.returncode == 0, nightly.stderr
    assert summary(nightly)["embedded"] == 1
    assert "collection 'quantized' holds int8 image vectors: embedding int8 ones" in nightly.stderr
    assert json.loads((index / "quantized" / "model.json").read_text())["precision"] == "int8"

    summary(clipsearch(*base, "-c", "plain", "--json"))
    int8 = clipsearch(*base, "-c", "plain", "--precision", "int8")
    assert int8.returncode == 1
    assert int8.stderr.count("\n") == 1 and "precision mismatch" in int8.stderr and "--precision fp32" in int8.stderr

    found = clipsearch("search", "a red circle", "--index", index, "-c", "quantized", "--model", tiny_model_dir,
                       "-k", "3")
    assert found.returncode == 0, found.stderr  # queries read a collection of either precision
    assert len(found.stdout.strip().splitlines()) == 3
    status = {c: clipsearch("status", "--index", index, "-c", c).stdout for c in ("quantized", "plain")}
    assert ", int8 vectors)" in status["quantized"] and " vectors)" not in status["plain"]  # the table says it too


def test_int8_without_the_onnx_tower_is_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    photos, index = tmp_path / "photos", tmp_path / "index"
    draw_collection(photos, 2)
    done = clipsearch("ingest", photos, "--index", index, "--model", tiny_model_dir, "--precision", "int8", "-q",
                      env={"CLIPSEARCH_FAST_PATH": "0"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "int8 needs the ONNX image tower" in done.stderr and "CLIPSEARCH_FAST_PATH=0" in done.stderr
    assert not (index / "images").exists()


def test_device_cuda_takes_the_torch_path(tmp_path, tiny_model_dir):
    import torch

    photos = tmp_path / "photos"
    draw_collection(photos, 2)
    args = ["ingest", photos, "--index", tmp_path / "index", "--model", tiny_model_dir, "-w", "0", "-q", "-v"]
    assert clipsearch(*args).returncode == 0  # the export exists, and the identity is cached
    new_photos(photos, 1)
    done = clipsearch(*args, "--device", "cuda")
    assert "image tower: torch" in done.stderr and "--device cuda" in done.stderr, done.stderr
    if not torch.cuda.is_available():  # torch answered, and said there is no GPU
        assert done.returncode == 1 and "no CUDA device" in done.stderr


def test_the_core_plan_gives_onnxruntime_every_core_and_workers_override():
    plan = plan_cores(cores=2)
    assert (plan.workers, plan.threads, plan.spin) == (2, 2, False)
    assert plan_cores(workers=0, cores=4).workers == 0 and plan_cores(workers=0, cores=4).threads == 4
    assert plan_cores(workers=3, cores=2).workers == 3
