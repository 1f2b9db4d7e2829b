"""Unchanged re-ingest: `clipsearch ingest` over N files that are all in the index already.

    python bench/reingest_unchanged.py --files 100000

Makes N small image files, records them in an embedded index as ingest would (same
ids, same size/mtime payloads; the vectors are random since they are never compared),
then times the full CLI command, cold process included, which must find every file
unchanged and decode nothing.
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

import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from PIL import Image

    from clipsearch.config import Settings
    from clipsearch.encoder import Encoder
    from clipsearch.index import ancestor_dirs, open_index, point_id
    from clipsearch.random_clip import build_random_clip
    from ingest.walk import walk_images

    model = OUT / "clip-tiny-random"
    if not (model / "model.safetensors").is_file():
        build_random_clip(model, size="tiny")
    photos = OUT / f"unchanged-{args.files}"
    if not photos.is_dir() or sum(len(f) for _, _, f in os.walk(photos)) != args.files:
        shutil.rmtree(photos, ignore_errors=True)
        template = OUT / "template.png"
        Image.new("RGB", (8, 8), (200, 30, 30)).save(template)
        data = template.read_bytes()
        for i in range(args.files):  # 1000 files a folder, like a camera's DCIM
            folder = photos / f"{i // 1000:04d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            (folder / f"IMG_{i:06d}.png").write_bytes(data)
    index_dir = OUT / f"unchanged-index-{args.files}"
    shutil.rmtree(index_dir, ignore_errors=True)
    settings = Settings.resolve(index=str(index_dir), model=str(model))
    identity = Encoder(str(model), device="cpu").identity
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    with open_index(settings, create=True) as index:
        index.ensure_collection(identity)
        batch = []
        for entry in walk_images([str(photos)]):
            batch.append(entry)
            if len(batch) == 2000:
                vectors = rng.normal(size=(len(batch), identity.dim)).astype(np.float32)
                index.upsert([point_id(e.path) for e in batch], vectors, [
                    {"path": e.path, "dirs": ancestor_dirs(e.path), "size": e.size, "mtime": e.mtime,
                     "mtime_ns": e.mtime_ns, "width": 8, "height": 8} for e in batch])
                batch = []
        assert not batch
        assert index.count() == args.files
    print(f"prepared {args.files} points in {time.perf_counter() - t:.1f} s", flush=True)

    walls, inner = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = subprocess.run([str(Path(sys.executable).parent / "clipsearch"), "ingest", str(photos),
                              "--index", str(index_dir), "--model", str(model), "--json", "-q"],
                             capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        summary = json.loads(out.stdout)
        assert summary["unchanged"] == args.files and summary["embedded"] == 0, summary
        inner.append(summary["seconds"])
    print(json.dumps({"files": args.files, "wall_s": [round(w, 2) for w in walls],
                      "wall_s_median": round(float(np.median(walls)), 2),
                      "ingest_run_s_median": round(float(np.median(inner)), 2)}))


if __name__ == "__main__":
    main()
