"""The embedded index at scale: synthetic clustered 512-d vectors through EdgeIndex.

    python bench/index_scale.py --sizes 100000 1000000
    python bench/index_scale.py --sizes 1000000 --model vit-b-32 --keep   # twice: build, then re-measure

For each size: upsert rate into the index alone, HNSW build time, reopen time, query
latency p50/p95 exact and HNSW (with recall@10 against exact), process RSS and disk.
With --model, also the warm query latency a user sees: encode a text with that model
(a random-init ViT-B/32 has the real one's cost) plus the top-10 search.
Vectors are clustered like image embeddings (cosine to their neighbours 0.6-0.9), not
uniform noise, which would make every neighbour equally far and HNSW look worse than
it is on real collections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from clipsearch.encoders.identity import ModelIdentity  # noqa: E402
from clipsearch.index.edge import EdgeIndex  # noqa: E402

DIM = 512
BATCH = 2000
QUERIES = 200


def clustered(n: int, rng, centers: np.ndarray) -> np.ndarray:
    labels = rng.integers(0, len(centers), n)
    vectors = centers[labels] + rng.normal(0, 0.045, (n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def latencies(index: EdgeIndex, queries: np.ndarray, exact: bool, k: int = 10):
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.query(q, k, exact=exact)
        times.append(time.perf_counter() - start)
        results.append([h.id for h in hits])
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), results


TEXTS = [f"{a} {b} {c}" for a in ("a photo of", "a drawing of", "a close-up of", "a blurry picture of")
         for b in ("a red", "a small", "an old", "a happy", "two")
         for c in ("dog", "car on a street", "cat on a sofa", "mountain lake", "birthday cake")]


# The random model's tokenizer is CLIP's byte-level BPE with no merges (no pretrained
# vocabulary exists here): one token per letter, so a 7-word query is about 30 tokens,
# where CLIP's own BPE gives about one per common word plus start and end. The text
# tower's cost grows with the tokens, so the warm figures are also taken on queries cut
# to CLIP's length: as many letters as the query has words, plus the two markers.
CLIP_LENGTH_TEXTS = [text.replace(" ", "")[: len(text.split())] for text in TEXTS]


def warm_queries(index: EdgeIndex, encoder, exact: bool, k: int = 10, texts=TEXTS):
    """Text encode + top-k search per query, the way `clipsearch search` does it warm."""
    times, results = [], []
    for text in texts:
        start = time.perf_counter()
        vector = encoder.encode_texts([text])[0]
        hits = index.query(vector, k, exact=exact)
        times.append(time.perf_counter() - start)
        results.append([h.id for h in hits])
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), results


def run(n: int, workdir: Path, rng, encoder=None, keep: bool = False) -> dict:
    """With `keep`, the built index stays in `workdir` and a later run with `keep` on
    the same size and seed reuses it: only the queries are measured again (the same
    query vectors, regenerated from the seed), so a long HNSW build can run while the
    machine is busy and the latencies be taken when it is quiet."""
    centers = rng.normal(0, 1, (max(100, n // 1000), DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)  # unit centers
    folder = workdir / f"edge-{n}"
    built = folder / "bench-built.json"
    reuse = keep and built.is_file() and json.loads(built.read_text()).get("points") == n
    result: dict = {"points": n}
    if reuse:
        result.update(json.loads(built.read_text())["build"])
        result["reused_index"] = True
        for start in range(0, n, BATCH):  # the same draws, so that the queries below are the same
            clustered(min(BATCH, n - start), rng, centers)
        queries = clustered(QUERIES, rng, centers)
        index = EdgeIndex(str(folder), "images")
        p50, p95, exact_ids = latencies(index, queries, exact=True)
        result["exact_ms_p50"], result["exact_ms_p95"] = round(p50, 2), round(p95, 2)
        if encoder is not None:
            p50, p95, text_exact_ids = warm_queries(index, encoder, exact=True)
            result["warm_text_query_exact_ms_p50"], result["warm_text_query_exact_ms_p95"] = round(p50, 1), round(p95, 1)
        index.close()
    else:
        shutil.rmtree(folder, ignore_errors=True)
        identity = ModelIdentity("synthetic", "bench", "bench", DIM)
        index = EdgeIndex(str(folder), "images", create=True)
        index.ensure_collection(identity)
        upsert_seconds = 0.0
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            vectors = clustered(count, rng, centers)
            ids = [str(uuid.UUID(int=start + i + 1)) for i in range(count)]
            payloads = [{"path": f"/photos/{(start + i) // 1000:04d}/{start + i:07d}.jpg",
                         "dirs": [f"/photos/{(start + i) // 1000:04d}", "/photos", "/"]} for i in range(count)]
            t = time.perf_counter()
            index.upsert(ids, vectors, payloads)
            upsert_seconds += time.perf_counter() - t
        result["upsert_points_per_s"] = round(n / upsert_seconds)
        queries = clustered(QUERIES, rng, centers)
        p50, p95, exact_ids = latencies(index, queries, exact=True)
        result["exact_ms_p50"], result["exact_ms_p95"] = round(p50, 2), round(p95, 2)
        if encoder is not None:
            p50, p95, text_exact_ids = warm_queries(index, encoder, exact=True)
            result["warm_text_query_exact_ms_p50"], result["warm_text_query_exact_ms_p95"] = round(p50, 1), round(p95, 1)
        t = time.perf_counter()
        index._shard.optimize()  # bench builds HNSW at any size; ingest does so above HNSW_MIN_POINTS
        result["hnsw_build_s"] = round(time.perf_counter() - t, 1)
        index.close()
        if keep:
            built.write_text(json.dumps({"points": n, "build": {
                k: result[k] for k in ("upsert_points_per_s", "hnsw_build_s")}}))
    t = time.perf_counter()
    index = EdgeIndex(str(folder), "images")
    result["reopen_s"] = round(time.perf_counter() - t, 3)
    index.count()
    p50, p95, hnsw_ids = latencies(index, queries, exact=False)
    result["hnsw_ms_p50"], result["hnsw_ms_p95"] = round(p50, 2), round(p95, 2)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, hnsw_ids)])
    result["hnsw_recall_at_10"] = round(float(recall), 4)
    if encoder is not None:
        p50, p95, text_hnsw_ids = warm_queries(index, encoder, exact=False)
        result["warm_text_query_hnsw_ms_p50"], result["warm_text_query_hnsw_ms_p95"] = round(p50, 1), round(p95, 1)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(text_exact_ids, text_hnsw_ids)])
        result["warm_text_query_hnsw_recall_at_10"] = round(float(recall), 4)
        p50, p95, _ = warm_queries(index, encoder, exact=False, texts=CLIP_LENGTH_TEXTS)
        result["warm_clip_length_query_hnsw_ms_p50"] = round(p50, 1)
        result["warm_clip_length_query_hnsw_ms_p95"] = round(p95, 1)
    result["rss_mb_after_queries"] = round(rss_mb())
    result["disk_mb"] = round(disk_mb(folder))
    result["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    index.close()
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def onnx_text_encoder(encoder, model: str, cache: Path):
    """The query path's encoder (clipsearch/encoders/query.py), its tower exported into
    `cache` if not there yet, loaded as for many queries: weights pre-packed, all cores."""
    os.environ["CLIPSEARCH_CACHE_DIR"] = str(cache)
    os.environ["CLIPSEARCH_QUERY_CACHE"] = "0"  # every query is encoded
    from clipsearch.config import Settings
    from clipsearch.encoders import cache as model_cache
    from clipsearch.encoders import location
    from clipsearch.encoders.query import FastTextEncoder, QueryEncoders
    from clipsearch.encoders.text_export import export_text_tower

    folder, key, why = location.locate(model)
    if key is None:
        raise SystemExit(f"cannot export the text tower of {model}: {why}")
    if model_cache.read_identity(key) is None or model_cache.read_entry(key) is None:
        export_text_tower(encoder, key, folder, model)
    fast = QueryEncoders(Settings.resolve(model=model, index=":memory:")).get()
    assert isinstance(fast, FastTextEncoder), "the exported text tower did not load"
    fast._tower = fast._load_tower(many=True)
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--model", default=None,
                        help="CLIP folder for the warm text-query figures; 'vit-b-32' builds a random one")
    parser.add_argument("--encoder", choices=["onnx", "torch"], default="onnx",
                        help="text encoder for the warm figures: the exported ONNX text tower loaded for many "
                             "queries (what --queries and a long-lived process use), or torch")
    parser.add_argument("--keep", action="store_true",
                        help="keep each built index in --workdir, and reuse a kept one (only the queries are re-measured)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    encoder = None
    if args.model:
        from clipsearch.encoders import Encoder

        if args.model == "vit-b-32":
            from bench.photos import vit_b_32_model

            args.model = str(vit_b_32_model())
        encoder = Encoder(args.model, device="cpu")
        if args.encoder == "onnx":
            encoder = onnx_text_encoder(encoder, args.model, args.workdir / "index-scale-cache")
        encoder.encode_texts(["warm up"])
        encoder.encode_texts(["warm up again"])
    rng = np.random.default_rng(0)
    results = []
    for n in args.sizes:
        results.append(run(n, args.workdir, rng, encoder, keep=args.keep))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
