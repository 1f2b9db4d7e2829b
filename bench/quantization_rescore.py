"""Recall@10 of a search over quantized vectors rescored with the originals, against
the oversampling factor: what CLIPSEARCH_OVERSAMPLING's default rests on.

    python bench/quantization_rescore.py --points 1000000

No Qdrant server runs here and the embedded engine is not given quantization, so this
models the quantization alone, in numpy, as Qdrant computes it: int8 scalar quantization
(one value range for the collection, query quantized the same way) and binary
quantization (one sign bit per dimension, query too). The candidates are the exact top
oversampling x 10 by the quantized score, rescored with the float vectors; recall is
against exact float search. On a server the HNSW graph adds its own loss on top
(recall@10 0.98 at 1M with hnsw_ef=256, BENCHMARKS.md). Data and text-like queries as
bench/hnsw_ef.py makes them (clustered 512-d, queries shifted along one direction).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.index_scale import DIM, clustered  # noqa: E402

K = 10
FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0, 8.0)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def int8_codes(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Qdrant's scalar quantization: 256 levels over the collection's value range."""
    return np.clip(np.rint((x - low) / (high - low) * 255), 0, 255).astype(np.uint8)


def top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n best per row, best first."""
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    centers = unit(rng.normal(0, 1, (max(100, args.points // 1000), DIM)).astype(np.float32))
    data = np.concatenate([clustered(min(args.chunk, args.points - s), rng, centers)
                           for s in range(0, args.points, args.chunk)])
    gap = unit(rng.normal(0, 1, DIM).astype(np.float32))
    queries = {"image_like": clustered(args.queries, rng, centers),
               "text_like": unit(clustered(args.queries, rng, centers) + 1.2 * gap)}
    low, high = float(data.min()), float(data.max())
    step = (high - low) / 255
    widest = int(max(FACTORS) * K)
    results: dict = {"points": args.points, "dim": DIM}
    started = time.perf_counter()
    for name, q in queries.items():
        q_int8 = low + int8_codes(q, low, high).astype(np.float32) * step
        q_bits = np.where(q > 0, 1.0, -1.0).astype(np.float32)
        exact, by_int8, by_bits = [], [], []
        for s in range(0, args.points, args.chunk):  # scores chunk by chunk: a 1M float copy at a time at most
            part = data[s:s + args.chunk]
            exact.append(part @ q.T)
            by_int8.append((low + int8_codes(part, low, high).astype(np.float32) * step) @ q_int8.T)
            by_bits.append(np.where(part > 0, 1.0, -1.0).astype(np.float32) @ q_bits.T)
        exact_scores = np.concatenate(exact).T
        truth = top(exact_scores, K)
        rows = {}
        for kind, scores in (("int8", np.concatenate(by_int8).T), ("binary", np.concatenate(by_bits).T)):
            # Ties broken at random, as a graph walk would meet equal scores (binary has many).
            scores = scores + rng.uniform(0, 1e-6, scores.shape).astype(np.float32)
            candidates = top(scores, widest)
            row = {}
            for factor in FACTORS:
                pool = candidates[:, :int(factor * K)]
                rescored = np.take_along_axis(exact_scores, pool, axis=1)
                found = np.take_along_axis(pool, np.argsort(-rescored, axis=1)[:, :K], axis=1)
                row[f"x{factor:g}"] = round(float(np.mean([len(set(a) & set(b)) / K
                                                          for a, b in zip(truth, found)])), 4)
            rows[kind] = row
        results[name] = rows
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
