"""`clipsearch duplicates --similar` at scale: wall time, images per second, and the
planted near-duplicate pairs found, on an embedded index with its HNSW graph built.

    python bench/duplicates_speed.py --points 100000

The vectors are bench/index_scale.py's clustered 512-d unit vectors (cosine to their
cluster neighbours about 0.5), plus --pairs planted near-duplicates: a copy of a
vector with noise that leaves it 0.97-0.995 alike, as a resized or re-encoded photo
is under a real CLIP. Upserted straight into an EdgeIndex, which then builds HNSW
(optimize()); the command runs in this process as a user would run it, and its JSON
output is checked against the planted pairs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.index_scale import BATCH, DIM, clustered  # noqa: E402


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def vectors_with_pairs(points: int, pairs: int, rng) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """`points` vectors, the last `pairs` of them near-copies of distinct earlier ones."""
    centers = unit(rng.normal(0, 1, (max(100, points // 1000), DIM)).astype(np.float32))
    base = clustered(points - pairs, rng, centers)
    originals = rng.choice(points - pairs, pairs, replace=False)
    # cosine = 1 / sqrt(1 + DIM * sigma^2): sigma 0.0044-0.011 gives about 0.995-0.97
    sigma = rng.uniform(0.0044, 0.011, (pairs, 1)).astype(np.float32)
    copies = unit(base[originals] + rng.normal(0, 1, (pairs, DIM)).astype(np.float32) * sigma)
    planted = [(int(o), points - pairs + i) for i, o in enumerate(originals)]
    return np.concatenate([base, copies]), planted


def build(folder: Path, vectors: np.ndarray) -> dict:
    """The embedded index, filled and optimized; facts about its graph."""
    from clipsearch.encoders.identity import ModelIdentity
    from clipsearch.index.edge import EdgeIndex

    # The graph is built from this many points (default 20,000): a small run gets one too.
    os.environ["CLIPSEARCH_HNSW_MIN_POINTS"] = str(min(20_000, max(1000, len(vectors) // 2)))
    index = EdgeIndex(str(folder), "images", create=True)
    try:
        index.ensure_collection(ModelIdentity("synthetic", "bench", "bench", DIM))
        for start in range(0, len(vectors), BATCH):
            stop = min(start + BATCH, len(vectors))
            index.upsert([str(uuid.UUID(int=i + 1)) for i in range(start, stop)], vectors[start:stop],
                         [{"path": f"/bench/{i}.jpg", "size": 1000 + i} for i in range(start, stop)])
        t = time.perf_counter()
        index.optimize()
        built = time.perf_counter() - t
        facts = index.describe()
    finally:
        index.close()
    return {"hnsw_build_s": round(built, 1), "indexed_vectors": facts.get("indexed_vectors")}


def run_command(folder: Path, threshold: float) -> tuple[float, list[dict], str]:
    """`clipsearch duplicates --similar THRESHOLD -f json -q` in this process."""
    from click.testing import CliRunner

    from clipsearch.cli import CliGroup
    from clipsearch.search.duplicates_command import duplicates

    group = CliGroup(commands=[duplicates])
    t = time.perf_counter()
    result = CliRunner().invoke(group, ["duplicates", "--index", str(folder), "--collection", "images",
                                        "--similar", str(threshold), "-f", "json", "-q"], catch_exceptions=False)
    wall = time.perf_counter() - t
    if result.exit_code != 0:
        raise SystemExit(f"duplicates failed: {result.output}")
    return wall, [json.loads(line) for line in result.stdout.splitlines()], result.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=None, help="planted near-duplicate pairs (default: 1%%)")
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--keep", action="store_true", help="leave the index folder behind")
    args = parser.parse_args()
    pairs = args.pairs if args.pairs is not None else max(1, args.points // 100)
    vectors, planted = vectors_with_pairs(args.points, pairs, np.random.default_rng(7))
    folder = args.workdir / f"duplicates-{args.points}"
    shutil.rmtree(folder, ignore_errors=True)
    facts = build(folder, vectors)
    wall, groups, summary = run_command(folder, args.threshold)
    found = {frozenset(f["path"] for f in g["files"]) for g in groups if g["kind"] == "similar"}
    wanted = {frozenset({f"/bench/{a}.jpg", f"/bench/{b}.jpg"}) for a, b in planted}
    print(json.dumps({
        "points": args.points, "threshold": args.threshold, **facts,
        "wall_s": round(wall, 2), "points_per_s": round(args.points / wall, 1),
        "planted_pairs": len(wanted), "groups_found": len(groups), "planted_found": len(found & wanted),
        "other_groups": len(found - wanted), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                  / 1024),
        "summary": summary,
    }))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
