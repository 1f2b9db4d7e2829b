"""Cold thin query: `clipsearch search --server URL "TEXT" -k 10`, a fresh process each
time, against a running `clipsearch serve`, beside the standalone cold
`clipsearch search "TEXT" -k 10` on the same index in the same run.

    python bench/serve_cold_query.py [--points 100000] [--runs 15]

- index and model: bench/cold_query.py's (random unit 512-d vectors with ingest-like
  payloads under a random CLIP ViT-B/32, HNSW built; made once under bench/out/ and
  reused). serve holds a copy of that index folder (an embedded index has one owner),
  made once; the standalone runs open the original.
- the standalone runs take the fast path (the cached ONNX text tower) with the
  query-vector cache off, as cold_query.py's "fast" mode; the thin runs ask serve,
  which keeps its model and index warm. Interleaved run by run.
- the cache (the exported text tower) is kept under bench/out/ between runs: a first
  start of serve exports it (timed as serve's start).
Prints one JSON line: p50/p95/min/max wall of each mode, the interpreter start, the
load average before and after, and whether both modes returned the same top 10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cold_query import CLI, QUERY, build_index, loadavg, python_wall  # noqa: E402
from bench.photos import OUT, vit_b_32_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_copy(index: Path) -> Path:
    """A copy of `index` for serve to hold, remade when the index was remade."""
    copy = index.with_name(index.name + "-served")
    marker = "bench-complete.json"
    if not (copy / marker).is_file() or (copy / marker).read_text() != (index / marker).read_text():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(index, copy, ignore=shutil.ignore_patterns(marker, "*.lock"))
        shutil.copy(index / marker, copy / marker)
    return copy


def start_serve(index: Path, model: Path, env: dict, log: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([CLI, "serve", "--index", str(index), "--model", str(model), "--port", str(port),
                                 "--quiet"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600  # a first start exports the ViT-B/32 text tower
    while True:
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
                if json.loads(response.read()).get("status") == "ok":
                    return proc, url, time.perf_counter() - start
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"serve did not come up:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def one(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([CLI, "search", QUERY, "-k", "10", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"query failed ({done.returncode}): {done.stderr}")
    return wall, done.stdout


def summary(walls: list[float]) -> dict:
    ordered = sorted(walls)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 else ordered[0]
    return {"wall_p50_s": round(statistics.median(ordered), 3), "wall_p95_s": round(p95, 3),
            "wall_min_s": round(ordered[0], 3), "wall_max_s": round(ordered[-1], 3),
            "walls_s": [round(w, 3) for w in walls]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (p50 over at least 5 runs)")

    model = vit_b_32_model()
    index = OUT / f"cold-query-index-{args.points}"
    build_index(index, args.points, model)
    copy = served_copy(index)
    cache = OUT / "serve-cold-query-cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    standalone_env = {**env, "CLIPSEARCH_QUERY_CACHE": "0"}
    standalone_args = ["--index", str(index), "--model", str(model)]

    load_before = loadavg()
    interpreter = python_wall("pass", max(5, args.runs))
    proc, url, serve_start = start_serve(copy, model, env, OUT / "serve-cold-query.log")
    try:
        one(standalone_args, standalone_env)  # warms the disk cache; a first use exports nothing more
        one(["--server", url], env)
        thin_walls, standalone_walls = [], []
        thin_out = standalone_out = ""
        for _ in range(args.runs):  # interleaved: a noisy neighbour hits both alike
            wall, thin_out = one(["--server", url], env)
            thin_walls.append(wall)
            wall, standalone_out = one(standalone_args, standalone_env)
            standalone_walls.append(wall)
    finally:
        stop(proc)

    def paths(out: str) -> list[str]:
        return [line.split()[-1] for line in out.splitlines()]

    print(json.dumps({
        "bench": "serve_cold_query", "points": args.points, "runs": args.runs, "cores": os.cpu_count(),
        "thin": summary(thin_walls), "standalone": summary(standalone_walls),
        "interpreter_start_p50_s": round(interpreter, 3), "serve_start_s": round(serve_start, 1),
        "same_top10": len(paths(thin_out)) == 10 and paths(thin_out) == paths(standalone_out),
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "command": f".venv/bin/python bench/serve_cold_query.py --points {args.points} --runs {args.runs}",
    }), flush=True)


if __name__ == "__main__":
    main()
