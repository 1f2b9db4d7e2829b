"""Ingest through the ONNX image tower (issue 16): torch, ONNX fp32 and ONNX int8 in one run.

    python bench/onnx_ingest.py [--large N] [--small N] [--new 32] [--runs 3] [--plans]
    python bench/onnx_ingest.py --model tiny --large 8 --small 8 --new 4 --runs 1   # a smoke test

1. Steady ingest rate of the `clipsearch ingest` command on the 4000x3000 and 640x480
   JPEG sets (bench/photos.py), each path a fresh index, interleaved per round so
   all three see the same machine: torch (CLIPSEARCH_FAST_PATH=0), ONNX fp32 (the
   default on a CPU), ONNX int8 (--precision int8). Steady rate as in
   bench/ingest_speed.py: (N - B) / (seconds - first_batch_seconds), B = one batch.
2. The whole command, wall clock, for `--new` new 4000x3000 photos into an index that
   already holds other photos, with the model's identity cached and the exports
   present (the everyday case: today's photos), for the same three paths.
3. With --plans: the steady rate on the large set for onnxruntime thread counts and
   decoding worker counts of 1..cores (the Python API, one process), which is what
   ingest/cores.py's plan rests on.

The model is a random-init ViT-B/32 (the real model's size and cost, not its quality);
the exports are made once before any timing, into bench/out/onnx-cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.photos import OUT, make_photos, vit_b_32_model  # noqa: E402

BATCH = 32
CLIPSEARCH = Path(sys.executable).parent / "clipsearch"
PATHS = {  # name -> (extra environment, extra flags)
    "torch": ({"CLIPSEARCH_FAST_PATH": "0"}, []),
    "onnx fp32": ({}, []),
    "onnx int8": ({}, ["--precision", "int8"]),
}


def ingest(folder: Path, index: Path, model: Path, env: dict, flags: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([str(CLIPSEARCH), "ingest", str(folder), "--index", str(index), "--model", str(model),
                           "--batch-size", str(BATCH), "--json", "-q", *flags], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ingest failed: {done.stderr[-2000:]}")
    return wall, json.loads(done.stdout.splitlines()[-1])


def steady(summary: dict) -> float:
    return (summary["embedded"] - BATCH) / max(summary["seconds"] - summary["first_batch_seconds"], 1e-9)


def median(values: list[float]) -> float:
    return round(float(np.median(values)), 2)


def rates(model: Path, folder: Path, env: dict, runs: int) -> dict:
    got: dict[str, list[float]] = {name: [] for name in PATHS}
    for _ in range(runs):
        for name, (extra, flags) in PATHS.items():
            with tempfile.TemporaryDirectory() as index:
                _, summary = ingest(folder, Path(index), model, dict(env, **extra), flags)
            got[name].append(round(steady(summary), 2))
    result: dict = {name: {"img_s": values, "median": median(values)} for name, values in got.items()}
    for name in ("onnx fp32", "onnx int8"):
        result[f"{name} / torch"] = round(result[name]["median"] / result["torch"]["median"], 2)
    return result


def new_photos_into_an_index(model: Path, existing: Path, new: Path, env: dict, runs: int) -> dict:
    walls: dict[str, list[float]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory() as work:
        pristine = {}
        for name, (extra, flags) in PATHS.items():  # one existing index per precision
            pristine[name] = Path(work) / f"index-{name.replace(' ', '-')}"
            ingest(existing, pristine[name], model, dict(env, **extra), flags)
        for _ in range(runs):
            for name, (extra, flags) in PATHS.items():
                index = Path(work) / "index"
                shutil.rmtree(index, ignore_errors=True)
                shutil.copytree(pristine[name], index)
                wall, summary = ingest(new, index, model, dict(env, **extra), flags)
                assert summary["embedded"] == len(os.listdir(new)), summary
                walls[name].append(round(wall, 2))
    result: dict = {name: {"wall_s": values, "median": median(values)} for name, values in walls.items()}
    for name in ("onnx fp32", "onnx int8"):
        result[f"torch / {name}"] = round(result["torch"]["median"] / result[name]["median"], 2)
    return result


def plans(model: Path, folder: Path) -> dict:
    """Steady rate for each (onnxruntime threads, decoding workers), in this process."""
    from clipsearch.config import Settings
    from clipsearch.encoders import LazyEncoder
    from clipsearch.ingest import IngestOptions
    from clipsearch.ingest import ingest as run_ingest

    cores = os.cpu_count() or 1
    result = {}
    for threads in range(1, cores + 1):
        for workers in range(0, cores + 1):
            with tempfile.TemporaryDirectory() as index:
                settings = Settings.resolve(model=str(model), index=index, device="cpu")
                encoder = LazyEncoder(str(model), "cpu", threads=threads, spin=False)
                summary = run_ingest([str(folder)], encoder, settings=settings,
                                     options=IngestOptions(workers=workers, batch_size=BATCH, quiet=True,
                                                                         shard=None, max_megapixels=100.0))
            result[f"threads {threads}, workers {workers}"] = round(steady(summary.__dict__), 2)
            print(f"threads {threads}, workers {workers}: {result[f'threads {threads}, workers {workers}']} img/s",
                  flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=96)
    parser.add_argument("--small", type=int, default=256)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plans", action="store_true")
    parser.add_argument("--model", choices=["vit-b-32", "tiny"], default="vit-b-32",
                        help="tiny: a smoke test of this script, not a measurement")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.model == "tiny":
        from clipsearch.testing.random_clip import build_random_clip

        model = OUT / "clip-tiny-random"
        if not (model / "model.safetensors").is_file():
            build_random_clip(model, size="tiny", seed=0)
    else:
        model = vit_b_32_model()
    cache = OUT / "onnx-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, CLIPSEARCH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    os.environ["CLIPSEARCH_CACHE_DIR"] = str(cache)

    # The exports (and the identity record), once, before anything is timed.
    warm = make_photos("small", 4)
    started = time.perf_counter()
    for extra, flags in PATHS.values():
        with tempfile.TemporaryDirectory() as index:
            ingest(warm, Path(index), model, dict(env, **extra), flags)
    results: dict = {"cores": os.cpu_count(), "model": f"random-init CLIP {args.model}", "batch_size": BATCH,
                     "load_average_before": load_before, "exports_s": round(time.perf_counter() - started, 1)}
    for kind, count in (("large", args.large), ("small", args.small)):
        results[f"steady_{kind}"] = rates(model, make_photos(kind, count), env, args.runs)
        print(kind, json.dumps(results[f"steady_{kind}"]), flush=True)
    results[f"whole_command_{args.new}_new_photos"] = new_photos_into_an_index(
        model, make_photos("small", max(args.new, 8)), make_photos("large", args.new), env, args.runs)
    if args.plans:
        results["plans_large"] = plans(model, make_photos("large", args.large))
    results["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
