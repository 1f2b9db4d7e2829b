"""Ingest speed: the full `clipsearch ingest` against the ideal rate and a naive pipeline.

    python bench/ingest_speed.py [--large N] [--small N]

For each photo set (full-size 4000x3000 JPEGs, small 640x480 JPEGs), all in one run:
- model-only rate: the model's forward pass on ready pixel tensors;
- per-image CPU cost (core-seconds) of decode+preprocess as ingest does it, and of
  encoding through sentence-transformers, each measured single-process;
- ideal rate = cores / (decode cost + encode cost): every core busy, no overhead;
- naive rate: one process, full PIL decode, then encode, in batches;
- full rate: the `clipsearch ingest` command (fresh index), images over its own clock;
  the steady rate takes the run's start-up off (loading the model, starting the decode
  workers, the first batch), as the command's JSON summary reports it
  (`first_batch_seconds`): (N - B) / (seconds - first_batch_seconds), B = one batch.
Reports efficiency (full/ideal), speed-up (full/naive) and full/model-only, on the
steady rate (what a folder of thousands of photos sees), and the whole-run figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from bench.photos import make_photos, vit_b_32_model  # noqa: E402

BATCH = 32


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_only_rate(encoder, n: int = 96) -> float:
    import torch

    size = encoder.image_size
    pixels = torch.randn(BATCH, 3, size, size)
    with torch.inference_mode():
        encoder.clip.get_image_features(pixel_values=pixels[:4])  # warm-up
        start = time.perf_counter()
        done = 0
        while done < n:
            encoder.clip.get_image_features(pixel_values=pixels)
            done += BATCH
    return done / (time.perf_counter() - start)


def decode_cost(files: list[Path], target: int) -> float:
    from clipsearch.images import load_image

    start = cpu_seconds()
    for f in files:
        load_image(str(f), target)
    return (cpu_seconds() - start) / len(files)


def encode_cost(encoder, files: list[Path]) -> float:
    from clipsearch.images import load_image

    images = [load_image(str(f), encoder.image_size).image for f in files]
    encoder.encode_images(images[:4])
    start = cpu_seconds()
    for i in range(0, len(images), BATCH):
        encoder.encode_images(images[i:i + BATCH], batch_size=BATCH)
    return (cpu_seconds() - start) / len(images)


def naive_rate(encoder, files: list[Path]) -> float:
    start = time.perf_counter()
    for i in range(0, len(files), BATCH):
        batch = [Image.open(f).convert("RGB") for f in files[i:i + BATCH]]
        encoder.encode_images(batch, batch_size=BATCH)
    return len(files) / (time.perf_counter() - start)


def full_rate(model: Path, folder: Path, extra_env: dict | None = None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as index:
        env = dict(os.environ, **(extra_env or {}))
        out = subprocess.run(
            [str(Path(sys.executable).parent / "clipsearch"), "ingest", str(folder), "--index", index,
             "--model", str(model), "--batch-size", str(BATCH), "--json", "-q"],
            capture_output=True, text=True, env=env, check=True)
    summary = json.loads(out.stdout)
    return summary["embedded"] / summary["seconds"], summary


def measure(encoder, model: Path, folder: Path, cores: int) -> dict:
    files = sorted(folder.iterdir())
    sample = files[: min(len(files), 48)]
    d_cost = decode_cost(sample, encoder.image_size)
    e_cost = encode_cost(encoder, sample)
    ideal = cores / (d_cost + e_cost)
    naive = naive_rate(encoder, files)
    model_only = model_only_rate(encoder)
    whole, summary = full_rate(model, folder)
    # The command's own clock: after its first batch (model load, decoder start, and
    # that batch, which nothing overlaps), the rate a large folder sees.
    full = (summary["embedded"] - BATCH) / (summary["seconds"] - summary["first_batch_seconds"])
    return {
        "images": len(files),
        "decode_core_s_per_image": round(d_cost, 4),
        "encode_core_s_per_image": round(e_cost, 4),
        "model_only_img_s": round(model_only, 2),
        "ideal_img_s": round(ideal, 2),
        "naive_img_s": round(naive, 2),
        "full_img_s": round(full, 2),
        "efficiency_full_over_ideal": round(full / ideal, 3),
        "speedup_full_over_naive": round(full / naive, 2),
        "full_over_model_only": round(full / model_only, 3),
        "whole_run_img_s": round(whole, 2),
        "whole_run_seconds": round(summary["seconds"], 2),
        "first_batch_seconds": round(summary["first_batch_seconds"], 2),
        "whole_run_over_ideal": round(whole / ideal, 3),
        "whole_run_over_naive": round(whole / naive, 2),
        "whole_run_over_model_only": round(whole / model_only, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=96)
    parser.add_argument("--small", type=int, default=256)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    from clipsearch.encoders import Encoder

    cores = os.cpu_count() or 1
    model = vit_b_32_model()
    encoder = Encoder(str(model), device="cpu")
    results = {"cores": cores, "model": "random-init CLIP ViT-B/32", "batch_size": BATCH}
    for kind, count in (("large", args.large), ("small", args.small)):
        folder = make_photos(kind, count)
        results[kind] = measure(encoder, model, folder, cores)
        print(kind, json.dumps(results[kind]), flush=True)
    results["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
