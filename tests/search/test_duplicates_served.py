"""`clipsearch duplicates --server URL` against a real `clipsearch serve` holding the
index (which no other process can open meanwhile): the same groups, the same output in
every format and the same notes as the local run over that index had before serve took
it; the gallery from the server's thumbnails; the API's errors; one run at a time."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time

import pytest
from click.testing import CliRunner
from test_duplicates import THRESHOLD, build_library, expected

from clipsearch.cli import cli
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest

from support import ServeProcess, settings_for

TOKEN = "duplicates-served-token-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory, encoder, tiny_model_dir):
    """The duplicates library in an edge index; the local run's outputs, taken before
    serve opens the index; then the server."""
    root = tmp_path_factory.mktemp("dups-served")
    photos = root / "photos"
    dups = build_library(photos)
    # For the notes: a copy deleted after the ingest, named with bytes that are not UTF-8.
    gone = os.path.join(os.fsencode(photos / "b"), b"gone-caf\xe9.png")
    shutil.copyfile(photos / "a" / "beach.png", gone)
    settings = settings_for("edge", root, tiny_model_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CLIPSEARCH_CACHE_DIR", str(root / "cache"))
        with open_index(settings, create=True) as index:
            ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
    os.unlink(gone)
    where = ["--index", settings.index, "--collection", settings.collection]
    local = {tuple(args): CliRunner().invoke(cli, ["duplicates", *where, *args, "-q"], catch_exceptions=False)
             for args in ARGS(photos)}
    args = [*where, "--model", str(tiny_model_dir), "--token", TOKEN]
    with ServeProcess(args, root / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(root / "cache")}) as server:
        yield {"url": server.url, "photos": photos.resolve(), "dups": dups, "local": local, "root": root,
               "server": server}


def ARGS(photos):  # noqa: N802 - the runs compared, as a table
    return [(), ("-f", "json"), ("--similar", str(THRESHOLD), "-f", "json"), ("--similar", str(THRESHOLD)),
            ("-f", "paths0"), ("--in", str(photos.resolve() / "c"), "--similar", str(THRESHOLD), "-f", "paths")]


def remote(served, *args, token=TOKEN):
    env = {"CLIPSEARCH_SERVER": served["url"], "CLIPSEARCH_TOKEN": token}
    return CliRunner().invoke(cli, ["duplicates", *args], env=env, catch_exceptions=False)


def post(served, path: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(served["url"] + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_server_finds_what_the_local_run_found_in_every_format(served):
    for args, local in served["local"].items():
        assert local.exit_code == 0, local.output
        answer = remote(served, *args, "-q")
        assert answer.exit_code == 0, (args, answer.output)
        assert answer.stdout_bytes == local.stdout_bytes, args  # paths0: the exact bytes of names not UTF-8
        assert answer.stderr == local.stderr, args  # the summary and the notes
    notes = served["local"][()].stderr
    assert "e.g. $'" in notes and "gone-caf\\xe9.png'" in notes, notes  # quoted, as the bytes it names
    dups = served["dups"]
    similar = remote(served, "--similar", str(THRESHOLD), "-f", "json", "-q")
    groups = [(g["kind"], sorted(f["path"] for f in g["files"])) for g in map(json.loads, similar.stdout.splitlines())]
    assert groups == expected([("identical", dups["beaches"]), ("identical", dups["scans"]),
                               ("identical", dups["odd_names"]), ("similar", dups["forests"]),
                               ("similar", dups["scans"] + dups["edited"])])


def test_progress_says_the_server_is_looking_and_a_gallery_shows_its_thumbnails(served, tmp_path):
    page = tmp_path / "dups.html"
    answer = remote(served, "--similar", str(THRESHOLD), "--gallery", str(page))
    assert answer.exit_code == 0, answer.output
    _, facts = served["server"].get("/api/status", {"Authorization": f"Bearer {TOKEN}"})
    assert f"clipsearch serve at {served['url']} is looking for near-duplicates among {facts['points']} images" \
        in answer.stderr
    html = page.read_text()
    members = [line for line in answer.stdout.splitlines() if line.startswith("  ")]  # the table's file lines
    assert len(members) > 6 and len(re.findall("src=.data:image/jpeg;base64,", html)) == len(members)
    assert re.search(f"href=.{re.escape(served['url'])}/api/images/", html) and TOKEN not in html


def test_a_folder_the_server_lacks_is_said_as_the_server_says_it(served):
    missing = "/srv/no-such-photos"
    answer = remote(served, "--in", missing, "-q")
    assert answer.exit_code == 0, answer.output
    assert answer.stdout == ""
    assert f"in={missing}: nothing is indexed under this folder" in answer.stderr


def test_errors_are_one_line(served):
    bad = remote(served, "--similar", "1.5")
    assert bad.exit_code == 2 and "--similar must be a cosine similarity in (0, 1]" in bad.stderr  # refused here
    status, body = post(served, "/api/duplicates", {"similar": 1.5})
    assert status == 400 and body["error"].startswith("similar must be a cosine similarity in (0, 1]")
    for wrong in (True, "0.95"):  # JSON's true is no 1.0, nor a string a number
        status, body = post(served, "/api/duplicates", {"similar": wrong})
        assert status == 400 and "similar" in body["error"], body
    # A GET (another site's link or <img> could make one) starts nothing.
    status, _ = served["server"].get("/api/duplicates", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 405
    wrong = remote(served, "--similar", "0.9", token="not-the-token-at-all-0123456789")
    assert wrong.exit_code == 1 and wrong.stderr.strip().splitlines() == [
        f"Error: clipsearch serve at {served['url']} refused the token (--token / CLIPSEARCH_TOKEN)"]


def test_one_run_at_a_time(tmp_path, encoder, tiny_model_dir):
    """A second caller while a run goes on is told to come back (503: Busy), not queued
    behind it. The first run waits on serve's index lock, held here as a batch being
    written holds it; once let go it finishes, and the finder is free again."""
    from types import SimpleNamespace

    from clipsearch.serve.duplicates import DuplicateFinder
    from clipsearch.serve.service import SerializedIndex
    from clipsearch.serve.uploads import Busy

    from support import draw_image

    photos = tmp_path / "photos"
    first_copy = draw_image(photos / "a.png", "red", "circle")
    (photos / "b.png").write_bytes(first_copy.read_bytes())
    draw_image(photos / "c.png", "blue", "square")
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    lock = threading.RLock()
    with open_index(settings, create=True) as index:
        ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
        finder = DuplicateFinder(SimpleNamespace(index=SerializedIndex(index, lock)))
        answers: list[dict] = []
        with lock:
            first = threading.Thread(target=lambda: answers.append(finder.find(None, None)))
            first.start()
            deadline = time.monotonic() + 30
            while not finder.running() and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(Busy, match="already finding duplicates for another request"):
                finder.find(None, None)
        first.join(30)
        assert [[f["path"] for f in g["files"]] for g in answers[0]["groups"]] == [
            [str(photos.resolve() / "a.png"), str(photos.resolve() / "b.png")]]
        assert not finder.running() and len(finder.find(None, None)["groups"]) == 1


def test_a_client_that_leaves_stops_the_run_and_frees_the_server(tmp_path, encoder, tiny_model_dir):
    """`duplicates --server --similar` stopped by Ctrl-C (or its timeout) leaves: the
    server stops its near-duplicate pass at the next image rather than run on for
    minutes, answering every other caller 503 meanwhile."""
    import urllib.error
    import urllib.request
    import uuid

    import numpy as np

    from clipsearch.index.edge import EdgeIndex

    points = 10_000  # random vectors: one exact query each, about 8 s in all here
    vectors = np.random.default_rng(0).normal(size=(points, encoder.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = EdgeIndex(str(tmp_path / "index"), "images", create=True)
    try:
        index.ensure_collection(encoder.identity)
        for start in range(0, points, 2000):
            index.upsert([str(uuid.UUID(int=i + 1)) for i in range(start, start + 2000)], vectors[start:start + 2000],
                         [{"path": f"/nowhere/{i}.jpg", "size": 1000 + i} for i in range(start, start + 2000)])
    finally:
        index.close()
    args = ["--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "--token", TOKEN]
    with ServeProcess(args, tmp_path / "serve.log", env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "cache")}) as server:
        served = {"url": server.url}

        def leaving() -> None:
            request = urllib.request.Request(server.url + "/api/duplicates", data=b'{"similar": 0.9999}', method="POST",
                                             headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
            with pytest.raises(OSError):  # the client's timeout: it closes the connection and leaves
                urllib.request.urlopen(request, timeout=2)

        left = threading.Thread(target=leaving)
        left.start()
        time.sleep(1)
        assert post(served, "/api/duplicates", {})[0] == 503  # the first run under way
        busy = remote(served, "-q")  # the CLI: busy now, try again (exit 75), in one line
        assert busy.exit_code == 75 and busy.stderr.strip().splitlines() == [
            f"Error: clipsearch serve at {server.url} is busy: serve is already finding duplicates for another "
            f"request (for {busy.stderr.split('(for ')[1].split(' s)')[0]} s); try again once it is done"], busy.output
        left.join(10)
        started = time.monotonic()
        while (status := post(served, "/api/duplicates", {})[0]) == 503 and time.monotonic() - started < 30:
            time.sleep(0.5)
        assert status == 200
        freed = time.monotonic() - started
    # Against the whole pass, timed here, with nobody leaving.
    from clipsearch.search.duplicates import similar_groups

    index = EdgeIndex(str(tmp_path / "index"), "images")
    try:
        began = time.monotonic()
        similar_groups(index, 0.9999, None)
        whole = time.monotonic() - began
    finally:
        index.close()
    # Without the cancel, the next caller would wait for the rest of the pass: whole - 2 s.
    assert freed < min(5.0, whole / 2), (freed, whole)
