"""Re-ingest after renaming the top folder (issue #14): moved files keep their vectors.

    python bench/reingest_moved.py --files 100000 [--runs 3]

Makes N small, distinct image files, records them in an embedded index as ingest
would (same ids and payloads, fingerprints included; vectors clustered like image
embeddings, as in bench/index_scale.py: the HNSW build's cost depends on it), then times the
whole `clipsearch ingest` command, cold process included, in three ways, interleaved:

- unchanged: the folder as it is, every file unchanged (the baseline, 6.6 s at 100k in
  bench/reingest_unchanged.py);
- moved: the top folder renamed first, so every file is a new path whose content is
  indexed: its point's vector is copied and the old point removed. Nothing may be
  decoded or embedded (asserted from the summary). The HNSW graph is then rebuilt
  over the new point ids, as a user's run does;
- moved, the graph left for later: the same, what relinking alone costs.

Also: the time to fingerprint every file alone (the reading share of a moved run), and
what embedding the files again would cost at --encode-ms per image (the model alone,
ViT-B/32 on 2 cores: 53.4 ms, BENCHMARKS.md).
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


def make_files(folder: Path, count: int) -> None:
    from PIL import Image

    if folder.is_dir() and sum(len(f) for _, _, f in os.walk(folder)) == count:
        return
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):  # 1000 files a folder, like a camera's DCIM; each its own colour
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, i // 65536 % 256)).save(sub / f"IMG_{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--encode-ms", type=float, default=53.4)
    args = parser.parse_args()

    from bench.embedded_quantization import _centers
    from bench.index_scale import clustered
    from bench.photos import vit_b_32_model
    from clipsearch.config import Settings
    from clipsearch.encoders.lazy import LazyEncoder
    from clipsearch.fingerprint import fingerprint
    from clipsearch.index import open_index, point_id
    from clipsearch.ingest.relink import place_payload
    from clipsearch.ingest.walk import walk_images
    from clipsearch.photo_facts import FACTS_VERSION

    model = vit_b_32_model()
    os.environ["CLIPSEARCH_CACHE_DIR"] = str(OUT / "moved-cache")
    base = OUT / f"moved-{args.files}"
    names = [base / "photos", base / "photos-renamed"]
    if names[1].exists() and not names[0].exists():
        names[1].rename(names[0])
    make_files(names[0], args.files)
    index_dir = OUT / f"moved-index-{args.files}"
    shutil.rmtree(index_dir, ignore_errors=True)
    settings = Settings.resolve(index=str(index_dir), model=str(model))
    identity = LazyEncoder(str(model), device="cpu").identity  # loads the model once; caches its identity
    rng = np.random.default_rng(0)
    centers = _centers(args.files)
    started = time.perf_counter()
    with open_index(settings, create=True) as index:
        index.ensure_collection(identity)
        batch: list = []

        def flush():
            vectors = clustered(len(batch), rng, centers)
            index.upsert([point_id(e.path) for e in batch], vectors,
                         [{**place_payload(e), "width": 8, "height": 8, "fingerprint": fingerprint(e.path, e.size),
                 "facts_version": FACTS_VERSION}
                          for e in batch])
            batch.clear()

        for entry in walk_images([str(names[0])]):
            batch.append(entry)
            if len(batch) == 2000:
                flush()
        if batch:
            flush()
        assert index.count() == args.files
        index.optimize()  # the graph an ingest of these files would have left
    prepared = time.perf_counter() - started

    files = [e.path for e in walk_images([str(names[0])])]
    started = time.perf_counter()
    for path in files:
        fingerprint(path)
    fingerprint_all = time.perf_counter() - started

    def ingest(folder: Path, env: dict | None = None) -> tuple[float, dict]:
        command = [str(Path(sys.executable).parent / "clipsearch"), "ingest", str(folder), "--index", str(index_dir),
                   "--model", str(model), "--json", "-q"]
        t = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
        return time.perf_counter() - t, json.loads(out.stdout)

    def build_graph() -> None:
        with open_index(settings) as index:
            index.optimize()

    def moved_run(env: dict | None = None) -> tuple[float, dict]:
        nonlocal current
        names[current].rename(names[1 - current])
        current = 1 - current
        wall, summary = ingest(names[current], env)
        assert (summary["moved"], summary["embedded"], summary["unchanged"]) == (args.files, 0, 0), summary
        return wall, summary

    # Each round: the unchanged baseline; a move as a user runs it (the HNSW graph rebuilt
    # over the moved points' new ids at the end); a move with the graph left for later
    # (CLIPSEARCH_HNSW_MIN_POINTS above the count: what relinking alone costs), after
    # which the graph is built untimed so that the next baseline finds it.
    current = 0
    walls: dict[str, list[float]] = {"unchanged": [], "moved": [], "moved_graph_later": []}
    for _ in range(args.runs):
        wall, summary = ingest(names[current])
        assert summary["unchanged"] == args.files and summary["embedded"] == 0, summary
        assert not summary["hnsw_built"], summary
        walls["unchanged"].append(wall)
        wall, summary = moved_run()
        assert summary["hnsw_built"], summary
        walls["moved"].append(wall)
        wall, summary = moved_run({"CLIPSEARCH_HNSW_MIN_POINTS": str(10 * args.files)})
        assert not summary["hnsw_built"], summary
        walls["moved_graph_later"].append(wall)
        build_graph()
    unchanged, moved, relinked = (float(np.median(walls[k])) for k in ("unchanged", "moved", "moved_graph_later"))
    print(json.dumps({
        "files": args.files, "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "prepare_s": round(prepared, 1),
        "unchanged_wall_s": [round(w, 2) for w in walls["unchanged"]],
        "moved_wall_s": [round(w, 2) for w in walls["moved"]],
        "moved_graph_later_wall_s": [round(w, 2) for w in walls["moved_graph_later"]],
        "moved_over_unchanged": round(moved / unchanged, 2),
        "moved_graph_later_over_unchanged": round(relinked / unchanged, 2),
        "fingerprint_all_files_s": round(fingerprint_all, 2),
        "fingerprint_share_of_moved": round(fingerprint_all / moved, 2),
        "re_embedding_estimate_s": round(args.files * args.encode_ms / 1000, 0),
    }))


if __name__ == "__main__":
    main()
