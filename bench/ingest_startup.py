"""Ingest start-up: adding a few new photos, the whole `clipsearch ingest` command.

    git worktree add /tmp/clipsearch-base REV     # the revision to compare against
    python bench/ingest_startup.py --baseline-tree /tmp/clipsearch-base [--photos 32 96] [--runs 3]

The everyday case: today's photos into an index that already exists. For a handful
of files the command's time is mostly start-up (importing torch and
sentence-transformers, loading the model, starting the decode workers), not the
per-photo work that bench/ingest_speed.py measures. Each run ingests N full-size
JPEGs (4000x3000) into a fresh embedded index with the model's identity already in
the model cache (as after any earlier ingest or search), with a random-init ViT-B/32.
The same command runs from this tree and from the baseline tree (PYTHONPATH puts its
packages first; same interpreter and packages), interleaved so both see the same
machine.
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

from bench.photos import make_photos, vit_b_32_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def run_once(tree: Path, folder: Path, model: Path, env: dict) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as index:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "clipsearch", "ingest", str(folder), "--index", index,
                              "--model", str(model), "--json", "-q"], capture_output=True, text=True,
                             env=dict(env, PYTHONPATH=str(tree)), cwd=tree, check=True)
        wall = time.perf_counter() - started
    return wall, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--photos", type=int, nargs="+", default=[32, 96])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from clipsearch.encoders.lazy import LazyEncoder

    model = vit_b_32_model()
    cache = OUT / "startup-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, CLIPSEARCH_CACHE_DIR=str(cache))
    os.environ["CLIPSEARCH_CACHE_DIR"] = str(cache)
    LazyEncoder(str(model), "cpu").identity  # noqa: B018 - loads once and records the identity
    trees = {"this tree": ROOT, "baseline": args.baseline_tree.resolve()}
    results = {}
    for count in args.photos:
        folder = make_photos("large", count)
        walls: dict[str, list[float]] = {name: [] for name in trees}
        firsts: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                wall, summary = run_once(tree, folder, model, env)
                assert summary["embedded"] == count, summary
                walls[name].append(round(wall, 2))
                firsts[name].append(summary["first_batch_seconds"])
        median = {name: float(np.median(w)) for name, w in walls.items()}
        results[count] = {
            name: {"wall_s": walls[name], "wall_s_median": round(median[name], 2),
                   "first_batch_s_median": round(float(np.median(firsts[name])), 2)} for name in trees}
        results[count]["baseline / this tree"] = round(median["baseline"] / median["this tree"], 2)
    print(json.dumps({"load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                      "cores": os.cpu_count(), "photos": results}))


if __name__ == "__main__":
    main()
