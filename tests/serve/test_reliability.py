"""Serve under load and under a crash, as a real process: concurrent clients while a
watched ingest runs, and kill -9 in the middle of a watched ingest."""

from __future__ import annotations

import http.client
import threading
import urllib.parse

import pytest

from clipsearch.config import Settings
from clipsearch.index import open_index

from support import ServeProcess, draw_image

pytestmark = pytest.mark.slow

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle")


def draw_many(folder, count: int, start: int = 0, size=(48, 40)) -> list:
    return [draw_image(folder / f"{i // 500:02d}" / f"img-{i:05d}.png", COLOURS[i % 8], SHAPES[i % 3],
                       size=(size[0] + i % 7, size[1] + i % 5)) for i in range(start, start + count)]


def served_args(tmp_path, model, watched) -> list[str]:
    return ["--index", str(tmp_path / "index"), "--model", str(model), "--watch", str(watched), "--workers", "1"]


def indexed_paths(tmp_path, model) -> list[str]:
    settings = Settings.resolve(model=str(model), index=str(tmp_path / "index"), device="cpu")
    with open_index(settings) as index:
        return [record.payload["path"] for record in index.scroll()]


def test_concurrent_clients_while_a_watched_ingest_runs(tmp_path, tiny_model_dir):
    """8 clients x 200 queries while --watch ingests 2,000 new images: no 5xx, every
    query answered, and the final count exact."""
    watched = tmp_path / "photos"
    first = draw_many(watched, 40)
    server = ServeProcess(served_args(tmp_path, tiny_model_dir, watched), tmp_path / "serve.log",
                          env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")})
    try:
        server.wait_idle()
        assert server.get("/api/status")[1]["points"] == len(first)
        statuses: list[list[int]] = [[] for _ in range(8)]

        def client(n: int) -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
            for i in range(200):
                query = urllib.parse.urlencode({"q": f"a {COLOURS[(n + i) % 8]} {SHAPES[i % 3]} {i}", "k": 10})
                try:
                    connection.request("GET", f"/api/search?{query}")
                    response = connection.getresponse()
                    body = response.read()
                    statuses[n].append(response.status if b'"hits"' in body or response.status != 200 else -1)
                except OSError:
                    statuses[n].append(0)  # not answered
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

        writer = threading.Thread(target=draw_many, args=(watched, 2000, 40))
        clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        writer.start()
        for thread in clients:
            thread.start()
        for thread in clients + [writer]:
            thread.join()
        answered = [s for per_client in statuses for s in per_client]
        assert len(answered) == 1600
        assert answered.count(200) == 1600, {code: answered.count(code) for code in set(answered)}
        state = server.wait_idle(timeout=300)
        assert server.get("/api/status")[1]["points"] == 2040, state
        assert state["skipped"] == 0 and not state["errors"]
    finally:
        server.stop()
    paths = indexed_paths(tmp_path, tiny_model_dir)
    assert len(paths) == len(set(paths)) == 2040


def test_kill_9_in_the_middle_of_a_watched_ingest_then_restart(tmp_path, tiny_model_dir):
    """Killed while it embeds: the restart resumes, the count is exact, nothing is
    duplicated, and every file is in the index."""
    watched = tmp_path / "photos"
    files = draw_many(watched, 900, size=(320, 240))
    env = {"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    args = served_args(tmp_path, tiny_model_dir, watched) + ["--batch-size", "8"]
    server = ServeProcess(args, tmp_path / "serve.log", env=env)
    try:
        server.wait_until(lambda: 0 < server.ingest_state().get("embedded", 0), 180, "the first batches")
        embedded_before = server.ingest_state()["embedded"]
    finally:
        server.stop(kill=True)
    assert embedded_before < len(files), "the ingest finished before the kill: make it slower"

    restarted = ServeProcess(args, tmp_path / "serve-again.log", env=env)
    try:
        state = restarted.wait_idle(timeout=300)
        assert restarted.get("/api/status")[1]["points"] == len(files)
        assert state["unchanged"] >= embedded_before  # what the killed run committed is not embedded again
    finally:
        restarted.stop()
    paths = indexed_paths(tmp_path, tiny_model_dir)
    assert len(paths) == len(set(paths)) == len(files)
    assert sorted(paths) == sorted(str(f.resolve()) for f in files)


def test_the_terminal_closing_stops_serve_gracefully(tmp_path, tiny_model_dir, default_sighup):
    """SIGHUP (the terminal or SSH session closed) mid-ingest: serve stops as for
    SIGTERM, says what is kept and exits 129, and the index opens with no duplicate."""
    import signal

    watched = tmp_path / "photos"
    files = draw_many(watched, 600, size=(320, 240))
    args = served_args(tmp_path, tiny_model_dir, watched) + ["--batch-size", "8"]
    server = ServeProcess(args, tmp_path / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")})
    try:
        server.wait_until(lambda: 0 < server.ingest_state().get("embedded", 0), 180, "the first batches")
        server.process.send_signal(signal.SIGHUP)
        assert server.process.wait(timeout=60) == 128 + signal.SIGHUP, server.output()
    finally:
        server.stop(kill=True)
    output = server.output()
    assert "Hung up; everything committed so far is kept." in output and "Traceback" not in output, output
    paths = indexed_paths(tmp_path, tiny_model_dir)
    assert 0 < len(paths) == len(set(paths)) <= len(files)
