"""Starting serve: the listening socket, a taken port, a public address without a
token, and what `clipsearch serve` refuses before it loads anything."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.serve.security import check_bind
from clipsearch.serve.server import bind, url_of


def test_the_listening_socket_is_tcp_without_nagle():
    """asyncio turns Nagle off only on connections of a socket that says it is TCP;
    with Nagle on, each response on a kept-alive connection waited 40 ms."""
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.close()
        accepted.close()
    finally:
        sock.close()


def test_a_taken_port_is_a_one_line_error():
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ClipsearchError, match=r"cannot listen on 127\.0\.0\.1:\d+ \(--host/--port\)"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_urls_name_a_reachable_address():
    assert url_of("127.0.0.1", 8765) == "http://127.0.0.1:8765"
    assert url_of("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert url_of("::1", 8765) == "http://[::1]:8765"
    assert url_of("photos.lan", 8765) == "http://photos.lan:8765"


def test_a_public_address_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-token-of-enough-length")
    with pytest.raises(ClipsearchError, match="needs a token"):
        check_bind("0.0.0.0", None)


def test_cors_for_every_origin_needs_a_token(tmp_path, tiny_model_dir):
    check_bind("127.0.0.1", "a-token-of-enough-length", ("*",))
    check_bind("127.0.0.1", None, ("https://photos.example.org",))
    refused = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "idx"), "--model", str(tiny_model_dir),
                                       "--cors-origin", "*"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert "--cors-origin '*' without a token lets any web page you open read the whole library" in refused.output


def test_serve_refuses_a_missing_collection_and_a_missing_watched_folder(tmp_path, tiny_model_dir):
    missing = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "nothing"), "--model", str(tiny_model_dir)])
    assert missing.exit_code == 1 and "does not exist" in missing.output and "--watch" in missing.output
    assert not (tmp_path / "nothing").exists()  # nothing created for a typo
    no_folder = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "idx"), "--model", str(tiny_model_dir),
                                         "--watch", str(tmp_path / "no-such-folder")])
    assert no_folder.exit_code == 1 and "is not a folder" in no_folder.output
    assert not (tmp_path / "idx").exists()


def test_cached_queries_leave_no_line_a_query_in_the_log(tmp_path, tiny_model_dir, monkeypatch):
    """serve's log takes what happens once; the one-shot CLI's -v says where each
    query vector came from."""
    from clipsearch.config import Settings
    from clipsearch.encoders import QueryEncoders
    from clipsearch.serve.service import load_encoder

    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    served: list[str] = []
    encoder = load_encoder(settings, served.append)
    for _ in range(3):
        encoder.encode_texts(["a red circle"])
    assert served and not [line for line in served if "query-vector cache" in line], served
    one_shot: list[str] = []
    QueryEncoders(settings, say=one_shot.append).get().encode_texts(["a red circle"])
    assert "fast path: 1 of 1 query vector(s) from the query-vector cache" in one_shot, one_shot


def test_watch_skips_what_exclude_names_at_the_scan_and_after(tmp_path, tiny_model_dir):
    import time

    from support import ServeProcess, draw_image

    photos = tmp_path / "photos"
    shared = draw_image(photos / "trip" / "beach.png", "blue", "circle")
    draw_image(photos / "Private" / "do-not-share.png", "red", "square")
    args = ["--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "--watch", str(photos),
            "--exclude", "Private", "--workers", "0"]
    with ServeProcess(args, tmp_path / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}) as server:
        server.wait_idle()
        draw_image(photos / "Private" / "later.png", "green", "triangle")
        later = draw_image(photos / "trip" / "later.png", "yellow", "circle")
        server.wait_until(lambda: server.ingest_state().get("embedded") == 2, 60, "the new shared photo")
        time.sleep(1.5)  # the private one had its events too
        server.wait_idle()
        hits = server.get("/api/search?q=a+photo&k=10")[1]["hits"]
    assert sorted(h["path"] for h in hits) == sorted(str(p.resolve()) for p in (shared, later))
