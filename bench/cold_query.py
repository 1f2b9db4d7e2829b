"""Cold query latency: `clipsearch search "TEXT" -k 10`, a fresh process each time,
against an embedded index of 100k images, fast path vs full path in the same run.

    python bench/cold_query.py [--points 100000] [--runs 7] [--write bench/COLD_QUERY_RESULTS.md]

- index: 100k random unit 512-d vectors with ingest-like payloads, upserted through
  the Index API under the identity of a random CLIP ViT-B/32 (bench/photos.py), HNSW
  built as ingest does; made once under bench/out/ and reused.
- first use: the cache is emptied and one query runs the full path, then exports
  the text tower (timed as a whole).
- then, interleaved run by run: fast (cached ONNX text tower, the query-vector cache
  off: every run encodes), full (CLIPSEARCH_FAST_PATH=0: torch + sentence-transformers),
  fast with the query vector served from the cache, and fast on a copy of the index
  without the keyword payload index on `path` (what that index costs).
- breakdown per run from the command's own phase clock (CLIPSEARCH_TIMINGS): interpreter
  start (a bare `python -c pass`, p50 of its own runs), CLI module imports (spawn to the
  command's first line, less interpreter start), imports inside the command, model load,
  encode, index open (open + collection, model and count checks), search, index close,
  output, and process exit. p50 of each over the runs.
Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.photos import OUT, vit_b_32_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "clipsearch")
QUERY = "a dog running on the beach"
PHASES = ["interpreter start", "CLI module imports", "imports", "model load", "encode",
          "encode, overlapped with index open", "index open",
          "search", "index close", "output", "process exit"]


def build_index(folder: Path, n: int, model: Path) -> None:
    """`n` random unit vectors with ingest's payload fields, under the model's identity."""
    done = folder / "bench-complete.json"
    if done.is_file() and json.loads(done.read_text()).get("points") == n and \
            json.loads(done.read_text()).get("keyword_indexes") == "on_disk":
        return
    from clipsearch.encoders import Encoder
    from clipsearch.index import ancestor_dirs, point_id
    from clipsearch.index.edge import EdgeIndex

    if folder.exists():
        shutil.rmtree(folder)
    identity = Encoder(str(model), "cpu").identity
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with EdgeIndex(str(folder), "images", create=True) as index:
        index.ensure_collection(identity)
        for lo in range(0, n, 2000):
            count = min(2000, n - lo)
            vectors = rng.standard_normal((count, identity.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            paths = [f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg" for i in range(lo, lo + count)]
            payloads = [{"path": p, "dirs": ancestor_dirs(p), "size": 3_000_000 + i, "mtime_ns": 1_700_000_000 * 10**9 + i,
                         "width": 4000, "height": 3000} for i, p in zip(range(lo, lo + count), paths)]
            index.upsert([point_id(p) for p in paths], vectors, payloads)
        index.optimize()
    done.write_text(json.dumps({"points": n, "seconds": round(time.perf_counter() - start, 1),
                                "keyword_indexes": "on_disk"}))


def with_in_memory_keyword_indexes(index: Path) -> Path:
    """A copy of `index` whose keyword payload indexes (path, dirs) are in memory, as
    clipsearch made them before they went on disk: what that choice saves a cold query."""
    copy = index.with_name(index.name + "-in-memory-keyword-indexes")
    marker = "bench-complete.json"
    if not (copy / marker).is_file() or (copy / marker).read_text() != (index / marker).read_text():
        import qdrant_edge

        from clipsearch.index.base import KEYWORD_FIELDS

        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(index, copy, ignore=shutil.ignore_patterns(marker))
        shard = qdrant_edge.EdgeShard.load(str(copy / "images" / "shard"))
        for name in KEYWORD_FIELDS:
            shard.update(qdrant_edge.UpdateOperation.delete_field_index(name))
            shard.update(qdrant_edge.UpdateOperation.create_field_index(name, qdrant_edge.PayloadSchemaType.Keyword))
        shard.flush()
        shard.close()
        shutil.copy(index / marker, copy / marker)
    return copy


def python_wall(code: str, runs: int) -> float:
    """p50 wall time of `python -c CODE` in a fresh interpreter."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_query(args: list[str], env: dict, interpreter: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        timings_file = handle.name
    env = {**env, "CLIPSEARCH_TIMINGS": timings_file}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spawned = time.time()
    start = time.perf_counter()
    done = subprocess.run([CLI, "search", QUERY, "-k", "10", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ended = spawned + wall
    if done.returncode != 0:
        raise SystemExit(f"query failed ({done.returncode}): {done.stderr}")
    data = json.loads(Path(timings_file).read_text())
    os.unlink(timings_file)
    phases = dict(data["phases"])
    phases["interpreter start"] = interpreter
    phases["CLI module imports"] = max(0.0, data["started"] - spawned - interpreter)
    phases["process exit"] = max(0.0, ended - data["ended"])
    return {"wall": wall, "cpu": cpu, "path": data.get("path"), "phases": phases, "stdout": done.stdout}


def summarize(mode: str, runs: list[dict]) -> dict:
    walls = [r["wall"] for r in runs]
    names = [p for p in PHASES if any(p in r["phases"] for r in runs)]
    return {
        "mode": mode,
        "runs": len(runs),
        "path": sorted({r["path"] for r in runs}),
        "wall_p50_s": round(statistics.median(walls), 3),
        "wall_min_s": round(min(walls), 3),
        "wall_max_s": round(max(walls), 3),
        "walls_s": [round(w, 3) for w in walls],
        "cpu_p50_s": round(statistics.median(r["cpu"] for r in runs), 3),
        "breakdown_p50_s": {p: round(statistics.median(r["phases"].get(p, 0.0) for r in runs), 3) for p in names},
    }


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def write_markdown(path: Path, results: list[dict], first_use: dict, facts: dict) -> None:
    modes = [r["mode"] for r in results]
    lines = [
        "# Cold query: `clipsearch search \"TEXT\" -k 10`, a fresh process per query",
        "",
        f"Index: embedded (qdrant-edge), {facts['points']:,} random unit 512-d vectors with ingest's payload "
        "fields, HNSW built; model: a randomly initialised CLIP ViT-B/32 (bench/photos.py), so the model's "
        "size and cost are real and its rankings are noise.",
        f"Machine: {os.cpu_count()} cores; load average {facts['load_before']} before the run, "
        f"{facts['load_after']} after. Calibration: `import numpy` took {facts['numpy_import']:.3f} s "
        "(p50, interpreter start taken off) in this run: compare it across runs to judge how busy the machine was. "
        "Disk cache warm (the same files are read on every run).",
        "",
        "Command:",
        "",
        "```sh",
        f"{facts['command']}",
        "```",
        "",
        "| | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
        "| **wall p50** | " + " | ".join(f"**{r['wall_p50_s']:.3f} s**" for r in results) + " |",
        "| wall min / max | " + " | ".join(f"{r['wall_min_s']:.3f} / {r['wall_max_s']:.3f} s" for r in results) + " |",
        "| CPU time p50 (user+sys) | " + " | ".join(f"{r['cpu_p50_s']:.3f} s" for r in results) + " |",
    ]
    for phase in PHASES:
        cells = [f"{r['breakdown_p50_s'][phase]:.3f}" if phase in r["breakdown_p50_s"] else "-" for r in results]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines += [
        "| runs | " + " | ".join(str(r["runs"]) for r in results) + " |",
        "",
        "CPU time is the query process's user+sys time (all its threads).",
        "",
        "Modes: **fast**: the cached ONNX text tower in onnxruntime, no torch (query-vector cache off, so every "
        "run encodes); **full**: `CLIPSEARCH_FAST_PATH=0`, torch + sentence-transformers load the model; "
        "**fast, cached vector**: the same query's vector read from the query-vector cache (no model at all); "
        "**fast, in-memory keyword indexes**: as *fast*, on a copy of the index whose keyword payload indexes "
        "(`path`, `dirs`) are in memory, as clipsearch made them before they went on disk "
        "(clipsearch/index/edge.py `_keyword_index`): the difference is what that choice saves.",
        "Breakdown cells are the p50 of each phase over the runs (they need not add up to the wall p50). "
        "Interpreter start is a bare `python -c pass`; CLI module imports are from spawn to the command's "
        "first line, less that; *imports* are those inside the command (the fast path: search, index, "
        "onnxruntime, tokenizers; the full path: also torch and sentence-transformers). *Index open* includes "
        "the model check and the count; *model load* on the full path includes hashing the weights for the "
        "model check. On the fast path the text is encoded in a thread while the index opens "
        "(*encode, overlapped with index open*: that thread's time); *encode* is then only the wait for it "
        "after the index is open.",
        "",
        f"First use (empty cache: the full path answers, then the text tower is exported): "
        f"{first_use['wall']:.1f} s wall in all, of which export {first_use['phases'].get('export', 0):.1f} s "
        "(after the results were printed).",
        "",
        f"Top-10 hits identical in all modes: {facts['same_hits']}.",
        "",
        "Wall times per run (s): " + "; ".join(f"{r['mode']}: {', '.join(f'{w:.3f}' for w in r['walls_s'])}"
                                                for r in results),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--write", type=Path, default=None, help="write a Markdown report here")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (p50 over at least 5 runs)")

    model = vit_b_32_model()
    index = OUT / f"cold-query-index-{args.points}"
    build_index(index, args.points, model)
    cache = OUT / "cold-query-cache"
    shutil.rmtree(cache, ignore_errors=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    base_env.update(CLIPSEARCH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    qargs = ["--index", str(index), "--model", str(model)]
    load_before = loadavg()
    interpreter = python_wall("pass", max(5, args.runs))
    # How busy the machine is: on a quiet one this machine imports numpy in about 0.08 s (DESIGN.md).
    numpy_import = python_wall("import numpy", max(5, args.runs)) - interpreter

    first_use = one_query(qargs, base_env, interpreter)
    assert first_use["path"] == "full", first_use
    in_memory_args = ["--index", str(with_in_memory_keyword_indexes(index)), "--model", str(model)]
    modes = {
        "fast": ({**base_env, "CLIPSEARCH_QUERY_CACHE": "0"}, qargs),
        "full": ({**base_env, "CLIPSEARCH_FAST_PATH": "0"}, qargs),
        "fast, cached vector": (base_env, qargs),
        "fast, in-memory keyword indexes": ({**base_env, "CLIPSEARCH_QUERY_CACHE": "0"}, in_memory_args),
    }
    one_query(qargs, base_env, interpreter)  # puts the query's vector into the cache
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(args.runs):  # interleaved, so that a noisy neighbour hits every mode alike
        for mode, (env, mode_args) in modes.items():
            runs[mode].append(one_query(mode_args, env, interpreter))
    results = [summarize(mode, rs) for mode, rs in runs.items()]
    hits = {mode: [line.split()[-1] for line in rs[0]["stdout"].splitlines()] for mode, rs in runs.items()}
    same = len(hits["fast"]) == 10 and all(h == hits["full"] for h in hits.values())
    for result in results:
        print(json.dumps({"bench": "cold_query", "points": args.points, **result}), flush=True)
    print(json.dumps({"bench": "cold_query", "numpy_import_p50_s": round(numpy_import, 3),
                      "first_use_wall_s": round(first_use["wall"], 2),
                      "first_use_export_s": round(first_use["phases"].get("export", 0.0), 2),
                      "same_top10_fast_full": same}), flush=True)
    if args.write:
        command = f".venv/bin/python bench/cold_query.py --points {args.points} --runs {args.runs}"
        if args.write:
            command += f" --write {args.write}"
        write_markdown(args.write, results, first_use, {
            "points": args.points, "load_before": load_before, "load_after": loadavg(), "numpy_import": numpy_import,
            "command": command, "same_hits": "yes" if same else "NO"})


if __name__ == "__main__":
    main()
