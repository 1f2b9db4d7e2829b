"""Reindex against ingest: the same images embedded by the same new model, in one run.

    python bench/reindex_speed.py [--photos 400] [--runs 2]

Issue 17: `clipsearch reindex --model NEW` takes its images from the paths the
collection stores, with no folder walk and no per-file lookup in the index, so it
should be at least as fast as `clipsearch ingest` of the same folder with NEW into a
fresh index. Both are the whole console command (cold process, model load, decoders,
encoder, upserts), interleaved, `--runs` times each:

- ingest: `clipsearch ingest PHOTOS --model NEW` into a fresh index;
- reindex: a copy of an index made with OLD (prepared once, not timed), then
  `clipsearch reindex --model NEW --drop-old` on it (the switch and the drop included).

OLD and NEW are two randomly initialised CLIP ViT-B/32 (the real model's size and
cost). Both commands share one model cache, warmed first (the ONNX image tower of NEW
exported), so neither pays a first-time export. Photos: 640x480 JPEGs (bench/photos.py).
Prints a table and writes bench/out/reindex_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUT = Path(__file__).resolve().parent / "out"
CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")


def _run(*args: str, env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run([CLIPSEARCH, *args, "--json", "--quiet"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"clipsearch {' '.join(args)} failed:\n{result.stderr}")
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    from bench.photos import make_photos, vit_b_32_model
    from clipsearch.testing.random_clip import build_random_clip

    photos = make_photos("small", args.photos)
    old = vit_b_32_model()
    new = OUT / "clip-vit-b-32-random-seed1"
    if not (new / "model.safetensors").is_file():
        build_random_clip(new, size="vit-b-32", seed=1)
    work = OUT / "reindex-speed"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPSEARCH_", "QDRANT_"))}
    env.update(CLIPSEARCH_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1")

    # Prepared once: the index made with OLD, and NEW's image tower in the cache.
    _run("ingest", str(photos), "--index", str(work / "old-index"), "--model", str(old), env=env)
    _run("ingest", str(photos), "--index", str(work / "warm-up"), "--model", str(new), env=env)

    rows = []
    for run in range(args.runs):
        fresh = work / f"ingest-{run}"
        ingest_seconds, ingest = _run("ingest", str(photos), "--index", str(fresh), "--model", str(new), env=env)
        copy = work / f"reindex-{run}"
        shutil.copytree(work / "old-index", copy)
        reindex_seconds, reindex = _run("reindex", "--index", str(copy), "--model", str(new), "--drop-old",
                                        env=env)
        assert ingest["embedded"] == reindex["embedded"] == args.photos, (ingest, reindex)
        rows.append({"run": run, "ingest_seconds": round(ingest_seconds, 2),
                     "reindex_seconds": round(reindex_seconds, 2),
                     "ingest_rate": round(args.photos / ingest_seconds, 2),
                     "reindex_rate": round(args.photos / reindex_seconds, 2),
                     "reindex_over_ingest": round(ingest_seconds / reindex_seconds, 3),
                     "load_average": os.getloadavg()[0]})
        print(f"run {run}: ingest {ingest_seconds:.1f} s ({args.photos / ingest_seconds:.1f} img/s), "
              f"reindex {reindex_seconds:.1f} s ({args.photos / reindex_seconds:.1f} img/s), "
              f"reindex rate / ingest rate {ingest_seconds / reindex_seconds:.3f}, load {os.getloadavg()[0]:.2f}")
    result = {"photos": args.photos, "size": "640x480", "runs": rows,
              "command": " ".join(["python", "bench/reindex_speed.py", *sys.argv[1:]])}
    (OUT / "reindex_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
