"""HNSW recall and latency against the query-time beam width (hnsw_ef), for image-like
queries and for text-like ones that sit apart from the data (CLIP's modality gap).

    python bench/hnsw_ef.py --points 100000

Text embeddings of a CLIP are, roughly, image embeddings shifted along one common
direction: cosine between a caption and its image is ~0.3, between two similar images
~0.8. Such queries are out of the data's distribution, and graph search needs a wider
beam for them than for queries that look like the data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.index_scale import DIM, clustered  # noqa: E402
from clipsearch.encoders.identity import ModelIdentity  # noqa: E402
from clipsearch.index.edge import EdgeIndex  # noqa: E402


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    centers = unit(rng.normal(0, 1, (max(100, args.points // 1000), DIM)).astype(np.float32))
    folder = args.workdir / f"hnsw-ef-{args.points}"
    shutil.rmtree(folder, ignore_errors=True)
    index = EdgeIndex(str(folder), "images", create=True)
    index.ensure_collection(ModelIdentity("synthetic", "bench", "bench", DIM))
    for start in range(0, args.points, 2000):
        n = min(2000, args.points - start)
        index.upsert([str(uuid.UUID(int=start + i + 1)) for i in range(n)], clustered(n, rng, centers),
                     [{"path": f"/p/{start + i}.jpg"} for i in range(n)])
    t = time.perf_counter()
    index._shard.optimize()
    build = time.perf_counter() - t
    gap = unit(rng.normal(0, 1, DIM).astype(np.float32))
    image_like = clustered(args.queries, rng, centers)
    text_like = unit(clustered(args.queries, rng, centers) + 1.2 * gap)  # cosine to own cluster ~0.4
    results = {"points": args.points, "hnsw_build_s": round(build, 1)}
    for name, queries in (("image_like", image_like), ("text_like", text_like)):
        truth = [[h.id for h in index.query(q, 10, exact=True)] for q in queries]
        rows = []
        for ef in (None, 64, 128, 256, 512):
            times, found = [], []
            for q in queries:
                t = time.perf_counter()
                hits = index.query(q, 10, hnsw_ef=ef)
                times.append(time.perf_counter() - t)
                found.append([h.id for h in hits])
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
            rows.append({"hnsw_ef": ef or "qdrant default", "recall_at_10": round(float(recall), 4),
                         "ms_p50": round(float(np.percentile(times, 50) * 1000), 2),
                         "ms_p95": round(float(np.percentile(times, 95) * 1000), 2)})
        results[name] = rows
    index.close()
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
