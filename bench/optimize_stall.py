"""Query stalls during the HNSW build: the blocking optimize() against optimize_offline().

    python bench/optimize_stall.py --points 100000

The same clustered 512-d points go into two fresh copies of one edge index. On each, a
thread queries (random unit vectors, k=10, through EdgeIndex.query) for the whole build:
(a) optimize(), in-process, which holds the GIL; (b) optimize_offline(), a child process
on a copy of the shard, swapped in under the lock the query thread also takes. For each:
the build's seconds, the queries answered, their p50/p95/max latency and the longest
stall (the longest time between two answers, from the start of the build to its end).
--pause-ms puts a pause between queries (a server's load rather than a spin loop, which
takes a core from the build).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.index_scale import BATCH, DIM, clustered  # noqa: E402
from clipsearch.encoders.identity import ModelIdentity  # noqa: E402
from clipsearch.index.edge import EdgeIndex  # noqa: E402


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def build(folder: Path, points: int, rng) -> float:
    centers = unit(rng.normal(0, 1, (max(100, points // 1000), DIM)).astype(np.float32))
    start = time.perf_counter()
    index = EdgeIndex(str(folder), "images", create=True)
    index.ensure_collection(ModelIdentity("synthetic", "bench", "bench", DIM))
    for first in range(0, points, BATCH):
        n = min(BATCH, points - first)
        index.upsert([str(uuid.UUID(int=first + i + 1)) for i in range(n)], clustered(n, rng, centers),
                     [{"path": f"/p/{first + i}.jpg"} for i in range(n)])
    index.close()
    return time.perf_counter() - start


def measure(folder: Path, offline: bool, pause: float, seed: int) -> dict:
    index = EdgeIndex(str(folder), "images")
    queries = unit(np.random.default_rng(seed).normal(0, 1, (256, DIM)).astype(np.float32))
    lock = threading.Lock()
    stop = threading.Event()
    latencies: list[float] = []
    answered: list[float] = []

    def loop() -> None:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            with lock:
                index.query(queries[i % len(queries)], 10)
            done = time.perf_counter()
            latencies.append(done - t)
            answered.append(done)
            i += 1
            if pause:
                time.sleep(pause)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.5)  # the loop is running before the build starts
    before = len(answered)
    start = time.perf_counter()
    built = index.optimize_offline(lock) if offline else index.optimize()
    end = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    thread.join()
    during = [t for t in answered if start <= t <= end]
    marks = [start, *during, end]
    # The latencies of the queries answered from the build's start to its end (the
    # one that waited out a blocking build ends just after it: take it too).
    window = latencies[before:before + len(during) + 1]
    facts = index.describe()
    phases = {k: round(v, 3) for k, v in index.last_offline_phases.items()}
    index.close()
    ms = np.array(window) * 1000
    return {
        "built": built,
        "build_s": round(end - start, 2),
        "indexed_vectors": facts["indexed_vectors"],
        "queries_during_build": len(during),
        "qps_during_build": round(len(during) / (end - start), 1),
        "ms_p50": round(float(np.percentile(ms, 50)), 2),
        "ms_p95": round(float(np.percentile(ms, 95)), 2),
        "ms_max": round(float(ms.max()), 2),
        "longest_stall_s": round(max(b - a for a, b in zip(marks, marks[1:])), 3),
        **({"phases": phases} if offline else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--pause-ms", type=float, default=0.0, help="pause between queries")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    base = args.workdir / f"optimize-stall-{args.points}"
    shutil.rmtree(base, ignore_errors=True)
    upsert_s = build(base / "blocking", args.points, np.random.default_rng(1))
    shutil.copytree(base / "blocking", base / "offline")
    results = {"points": args.points, "dim": DIM, "pause_ms": args.pause_ms, "upsert_s": round(upsert_s, 1),
               "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    for name in ("blocking", "offline"):
        results[name] = measure(base / name, name == "offline", args.pause_ms / 1000, seed=2)
    results["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
