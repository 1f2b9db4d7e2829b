"""clipsearch serve under load: warm HTTP text queries at 100k points (HNSW), the
throughput with 1, 4 and 8 concurrent clients, and queries during a watched ingest of
2,000 new images against that ingest's rate alone.

    python bench/serve_speed.py [--points 100000] [--queries 300] [--seconds 20] [--ingest 2000]

- index: bench/cold_query.py's (random unit 512-d vectors with ingest-like payloads
  under a random CLIP ViT-B/32's identity, HNSW built), copied fresh for each server.
- warm: one client, one keep-alive connection, `GET /api/search?q=...&k=10`, each query
  a different text of 5-6 words ("a red dog near a beach"; the query-vector cache off),
  after 20 warm-up queries. Latency is
  the client's wall clock per request, on the same machine as the server.
- throughput: N client threads, each with its own connection, for --seconds each.
- during ingest: serve --watch on an empty folder; the 2,000 640x480 JPEGs of
  bench/photos.py are copied in, and one client queries until the watcher is idle.
  Ingest alone: `clipsearch ingest` of the same files into another copy, no queries.
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cold_query import build_index, loadavg  # noqa: E402
from bench.photos import OUT, make_photos, vit_b_32_model  # noqa: E402

BIN = Path(sys.executable).parent
WORDS = ["dog", "cat", "beach", "mountain", "car", "sunset", "forest", "city", "snow", "boat", "flower", "bridge",
         "child", "market", "river", "night", "kitchen", "train", "bird", "desert"]


ADJECTIVES = ["red", "old", "small", "happy", "dark", "wet", "busy", "quiet", "green", "tall"]


def text(i: int) -> str:
    """A different query each time, of the length people type (3-6 words)."""
    a, b, c = i % len(ADJECTIVES), (i // len(ADJECTIVES)) % len(WORDS), (i // 200) % len(WORDS)
    return f"a {ADJECTIVES[a]} {WORDS[b]} near a {WORDS[c]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Server:
    def __init__(self, index: Path, model: Path, env: dict, watch: Path | None = None):
        self.port = free_port()
        args = [str(BIN / "clipsearch"), "serve", "--index", str(index), "--model", str(model),
                "--port", str(self.port), "-q"]
        if watch is not None:
            args += ["--watch", str(watch)]
        self.log = open(index.parent / f"serve-{self.port}.log", "w")
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if self.get("/api/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("serve did not start in 600 s")

    def get(self, path: str, connection: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        own = connection is None
        connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            if own:
                connection.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def query_path(i: int) -> str:
    return "/api/search?" + urllib.parse.urlencode({"q": text(i), "k": 10})


def warm_latency(server: Server, queries: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for i in range(20):
        server.get(query_path(10_000 + i), connection)
    times, server_ms = [], []
    for i in range(queries):
        start = time.perf_counter()
        status, body = server.get(query_path(i), connection)
        times.append((time.perf_counter() - start) * 1000)
        assert status == 200, body[:200]
        server_ms.append(json.loads(body)["took_ms"])
    return {"queries": queries, "p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(percentile(times, 0.95), 2), "server_p50_ms": round(statistics.median(server_ms), 2)}


def throughput(server: Server, clients: int, seconds: float, offset: int) -> dict:
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        i = offset + n * 1_000_000
        while time.monotonic() < stop:
            status, _ = server.get(query_path(i), connection)
            counts[n] += status == 200
            errors[n] += status != 200
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"clients": clients, "queries_per_s": round(sum(counts) / elapsed, 1), "errors": sum(errors)}


def during_ingest(index: Path, model: Path, env: dict, photos: Path, work: Path) -> dict:
    watched = work / "watched"
    watched.mkdir()
    server = Server(index, model, env, watch=watched)
    try:
        for name in sorted(os.listdir(photos)):
            shutil.copy2(photos / name, watched / name)
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        times: list[float] = []
        i, first_embedded, done_at = 0, None, None
        total = len(os.listdir(photos))
        while time.monotonic() - started < 1800:
            t0 = time.perf_counter()
            status, _ = server.get(query_path(20_000 + i), connection)
            times.append((time.perf_counter() - t0) * 1000)
            assert status == 200
            i += 1
            if i % 10 == 0:
                state = json.loads(server.get("/api/ingest", connection)[1])
                if first_embedded is None and state.get("embedded", 0) > 0:
                    first_embedded = (time.monotonic(), state["embedded"])
                if state.get("embedded", 0) >= total and state.get("pending", 0) == 0:
                    done_at = time.monotonic()
                    break
            time.sleep(0.05)  # a person clicking through results, not a flood
        assert done_at is not None and first_embedded is not None, "the watched ingest did not finish"
        rate = (total - first_embedded[1]) / (done_at - first_embedded[0])
        return {"queries": len(times), "p50_ms": round(statistics.median(times), 2),
                "p95_ms": round(percentile(times, 0.95), 2), "max_ms": round(max(times), 1),
                "ingest_rate_img_s": round(rate, 2), "seconds": round(done_at - started, 1)}
    finally:
        server.stop()


def ingest_alone(index: Path, model: Path, env: dict, photos: Path) -> dict:
    start = time.monotonic()
    result = subprocess.run([str(BIN / "clipsearch"), "ingest", str(photos), "--index", str(index), "--model",
                             str(model), "-q", "--json"], env=env, capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    steady = (summary["embedded"] - 32) / (summary["seconds"] - summary["first_batch_seconds"])
    return {"ingest_rate_img_s": round(steady, 2), "seconds": round(time.monotonic() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--ingest", type=int, default=2000, help="new images for the watched ingest (0: skip)")
    args = parser.parse_args()

    model = vit_b_32_model()
    base = OUT / f"cold-query-index-{args.points}"  # the one bench/cold_query.py builds
    build_index(base, args.points, model)
    work = Path(OUT / "serve-work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "CLIPSEARCH_CACHE_DIR": str(OUT / "serve-cache"), "HF_HUB_OFFLINE": "1",
           "CLIPSEARCH_QUERY_CACHE": "0"}
    facts = {"points": args.points, "loadavg_before": loadavg(), "cores": os.cpu_count()}
    print(json.dumps({"facts": facts}), flush=True)

    copy = work / "index-warm"
    shutil.copytree(base, copy)
    server = Server(copy, model, env)
    try:
        print(json.dumps({"warm_http_text_query": warm_latency(server, args.queries)}), flush=True)
        for n, clients in enumerate((1, 4, 8)):
            print(json.dumps({"throughput": throughput(server, clients, args.seconds, 100_000 * (n + 1))}),
                  flush=True)
    finally:
        server.stop()

    if args.ingest:
        photos = make_photos("small", args.ingest)
        alone_index = work / "index-alone"
        shutil.copytree(base, alone_index)
        print(json.dumps({"ingest_alone": ingest_alone(alone_index, model, env, photos)}), flush=True)
        watched_index = work / "index-watched"
        shutil.copytree(base, watched_index)
        print(json.dumps({"during_watched_ingest": during_ingest(watched_index, model, env, photos, work)}),
              flush=True)
    print(json.dumps({"loadavg_after": loadavg()}), flush=True)


if __name__ == "__main__":
    main()
