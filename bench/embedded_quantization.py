"""int8 quantization on the embedded index: recall@10, latency and memory against float.

    python bench/embedded_quantization.py --points 1000000

Issue 18: qdrant-edge keeps int8 copies of the vectors (in RAM) beside the originals
(here on disk: `--quantization int8 --vectors-on-disk`), searches the copies and
rescores `oversampling x k` candidates with the originals. The same clustered vectors
(bench/index_scale.py) go into two collections of one index, one float, one int8 with
the originals on disk; each gets its HNSW graph. Queries as bench/hnsw_ef.py makes
them: image-like (from the data's clusters) and text-like (shifted along one common
direction, as CLIP's captions sit apart from its images). The truth is an exact float
search. For each oversampling factor (the setting CLIPSEARCH_OVERSAMPLING), recall@10
against the truth and per-query latency (p50, p95), at hnsw_ef 256 and wider, beside the float collection's HNSW search. Memory: a fresh process opens each
collection and runs the queries; its peak resident set (anonymous and mapped files)
and the collection's size on disk are reported. `--keep` keeps the index, and a second
run measures it again without building.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.index_scale import DIM, clustered, disk_mb  # noqa: E402

OVERSAMPLING = (1.0, 1.5, 2.0, 3.0)
LAYOUTS = {"float": {}, "int8": {"quantization": "int8", "vectors_on_disk": True}}


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def queries(points: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    centers = _centers(points)
    gap = unit(rng.normal(0, 1, DIM).astype(np.float32))
    return {"image_like": clustered(count, rng, centers),
            "text_like": unit(clustered(count, rng, centers) + 1.2 * gap)}


def _centers(points: int) -> np.ndarray:
    return unit(np.random.default_rng(1).normal(0, 1, (max(100, points // 1000), DIM)).astype(np.float32))


def build(folder: Path, points: int) -> dict:
    from clipsearch.encoders.identity import ModelIdentity
    from clipsearch.index.edge import EdgeIndex
    from clipsearch.index.layout import Layout

    seconds = {}
    for name, layout in LAYOUTS.items():
        rng = np.random.default_rng(3)  # the same vectors in both collections
        centers = _centers(points)
        index = EdgeIndex(str(folder), name, create=True, layout=Layout(**layout))
        index.ensure_collection(ModelIdentity("synthetic", "bench", "bench", DIM))
        started = time.perf_counter()
        for start in range(0, points, 5000):
            n = min(5000, points - start)
            index.upsert([str(uuid.UUID(int=start + i + 1)) for i in range(n)], clustered(n, rng, centers),
                         [{"path": f"/p/{start + i}.jpg"} for i in range(n)])
        loaded = time.perf_counter()
        index._shard.optimize()
        seconds[name] = {"load_s": round(loaded - started, 1), "hnsw_build_s": round(time.perf_counter() - loaded, 1)}
        index.close()
        print(f"built {name}: {seconds[name]}", file=sys.stderr, flush=True)
    return seconds


# (collection, oversampling, hnsw_ef): 256 (the default beam until this benchmark showed
# text-like queries need more at 1M) at every oversampling factor, and wider beams.
VARIANTS = [("float", None, 256), ("float", None, 512), ("float", None, 1024),
            *(("int8", factor, 256) for factor in OVERSAMPLING), ("int8", 2.0, 512), ("int8", 2.0, 1024)]


def measure(folder: Path, points: int, count: int) -> dict:
    from clipsearch.index.edge import EdgeIndex

    asked = queries(points, count)
    with EdgeIndex(str(folder), "float") as exact_index:
        truth = {kind: [[h.id for h in exact_index.query(q, 10, exact=True)] for q in qs]
                 for kind, qs in asked.items()}
    results: dict = {}
    for name in LAYOUTS:
        with EdgeIndex(str(folder), name) as index:
            for kind, qs in asked.items():
                index.query(qs[0], 10)  # pages in what a first query maps
                for collection, factor, ef in VARIANTS:
                    if collection != name:
                        continue
                    if factor is not None:
                        index.oversampling = factor
                    times, found = [], []
                    for q in qs:
                        t = time.perf_counter()
                        found.append([h.id for h in index.query(q, 10, hnsw_ef=ef)])
                        times.append(time.perf_counter() - t)
                    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth[kind], found)])
                    results.setdefault(kind, []).append({
                        "collection": name, "oversampling": factor, "hnsw_ef": ef,
                        "recall_at_10": round(float(recall), 4),
                        "ms_p50": round(float(np.percentile(times, 50) * 1000), 2),
                        "ms_p95": round(float(np.percentile(times, 95) * 1000), 2)})
    return results


def memory(folder: Path, name: str, points: int, count: int) -> dict:
    """In a fresh process: open the collection, run the queries; its peak resident set
    (VmHWM: ru_maxrss would carry this process's over the fork) and, at the end, how
    much of it is the process's own memory and how much mapped files."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
              "from bench.embedded_quantization import queries\n"
              "from clipsearch.index.edge import EdgeIndex\n"
              f"with EdgeIndex({str(folder)!r}, {name!r}) as index:\n"
              f"    for qs in queries({points}, {count}).values():\n"
              "        for q in qs: index.query(q, 10)\n"
              "    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
              "print(*(int(status[k].split()[0]) for k in ('VmHWM', 'RssAnon', 'RssFile')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak, anon, files = (int(v) / 1024 for v in done.stdout.split()[-3:])
    return {"peak_rss_mb": round(peak, 1), "anonymous_mb": round(anon, 1), "mapped_files_mb": round(files, 1),
            "disk_mb": round(disk_mb(folder / name), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--keep", action="store_true", help="keep the index (to measure again without building)")
    args = parser.parse_args()
    folder = args.workdir / f"embedded-quantization-{args.points}"
    results: dict = {"points": args.points, "queries_per_kind": args.queries,
                     "command": " ".join(["python", "bench/embedded_quantization.py", *sys.argv[1:]])}
    if not all((folder / name / "model.json").is_file() for name in LAYOUTS):
        shutil.rmtree(folder, ignore_errors=True)
        results["build"] = build(folder, args.points)
    results["search"] = measure(folder, args.points, args.queries)
    results["memory"] = {name: memory(folder, name, args.points, args.queries) for name in LAYOUTS}
    results["load_average"] = os.getloadavg()
    out = args.workdir / f"embedded_quantization_{args.points}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
