"""One index, many clients: migrate, status, concurrency and faults.

The embedded-backend parts always run. The parts that need a Qdrant server run when
QDRANT_URL is set (`make test-server`) and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.migrate import migrate
from conftest import draw_collection, settings_for
from ingest import IngestOptions, ingest

CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")
SERVER_URL = os.environ.get("QDRANT_URL")
needs_server = pytest.mark.skipif(not SERVER_URL, reason="QDRANT_URL is not set: no Qdrant server")


def many_images(folder: Path, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + count):
        path = folder / f"{i:04d}.png"
        Image.new("RGB", (40, 32), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def edge_index(tmp_path, encoder, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 30)
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    with open_index(settings, create=True) as index:
        ingest([str(photos)], encoder, index, IngestOptions(workers=0, quiet=True))
    return settings


def snapshot(settings: Settings) -> dict:
    with open_index(settings) as index:
        return {r.id: (r.payload, r.vector) for r in index.scroll(with_vectors=True)}, index.stored_identity()


@pytest.mark.parametrize("target_backend", ["edge", "memory", pytest.param("server", marks=needs_server)])
def test_migrate_copies_vectors_payloads_and_identity(edge_index, tmp_path, tiny_model_dir, target_backend):
    target = settings_for(target_backend, tmp_path / "target", tiny_model_dir)
    result = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                      "--to", target.index, "--to-collection", target.collection, "-q", "-b", "7"])
    assert result.exit_code == 0, result.output
    assert "copied 30, already there 0, of 30 points" in result.output
    source_points, source_identity = snapshot(edge_index)
    target_points, target_identity = snapshot(target)
    assert target_identity == source_identity
    assert set(target_points) == set(source_points)
    for pid, (payload, vector) in source_points.items():
        assert target_points[pid][0] == payload
        assert np.allclose(target_points[pid][1], vector, atol=1e-6)
    # The same query answers the same on both backends.
    query = next(iter(source_points.values()))[1]
    with open_index(edge_index) as a, open_index(target) as b:
        assert [h.id for h in a.query(query, 10, exact=True)] == [h.id for h in b.query(query, 10, exact=True)]
    again = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                     "--to", target.index, "--to-collection", target.collection, "-q"])
    assert "copied 0, already there 30, of 30 points" in again.output


def test_migrate_resumes_where_it_stopped(edge_index, tmp_path, tiny_model_dir):
    target = settings_for("edge", tmp_path / "target", tiny_model_dir)
    points, identity = snapshot(edge_index)
    ids = sorted(points)[:12]  # an interrupted earlier run got this far
    with open_index(target, create=True) as t:
        t.ensure_collection(identity)
        t.upsert(ids, np.stack([points[i][1] for i in ids]), [points[i][0] for i in ids])
    with open_index(edge_index) as source, open_index(target, create=True) as t:
        summary = migrate(source, t, batch_size=5)
    assert (summary.copied, summary.already_there, summary.target_count) == (18, 12, 30)


def test_migrate_refuses_a_target_of_another_model(edge_index, tmp_path, tiny_model_dir, other_model_dir):
    from clipsearch.encoder import Encoder

    target = settings_for("edge", tmp_path / "target", tiny_model_dir)
    with open_index(target, create=True) as t:
        t.ensure_collection(Encoder(str(other_model_dir)).identity)
    result = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                      "--to", target.index, "--to-collection", target.collection])
    assert result.exit_code == 1
    assert "model mismatch" in result.output and "Traceback" not in result.output


def test_migrate_to_itself_is_refused(edge_index):
    result = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                      "--to", edge_index.index])
    assert result.exit_code == 1 and "source collection itself" in result.output


def test_status_shows_state_and_never_the_key(edge_index, monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key-value")
    args = ["status", "--index", edge_index.index, "--collection", edge_index.collection]
    text = CliRunner().invoke(cli, args).output
    assert "points:       30" in text and "search index: exact scan" in text and "model:" in text
    facts = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert facts["points"] == 30 and facts["indexed_vectors"] == 0 and facts["model"]["dim"] == 16
    assert "s3cret" not in text and "s3cret" not in json.dumps(facts)


def test_grpc_setting_from_flag_and_env(monkeypatch):
    assert Settings.resolve(index="http://h:6333").grpc is False
    monkeypatch.setenv("CLIPSEARCH_GRPC", "yes")
    assert Settings.resolve(index="http://h:6333").grpc is True
    assert Settings.resolve(index="http://h:6333", grpc=False).grpc is False
    monkeypatch.setenv("CLIPSEARCH_GRPC", "perhaps")
    with pytest.raises(ClipsearchError, match="CLIPSEARCH_GRPC"):
        Settings.resolve()


def _start_ingest(folder, index, model, collection="images", extra_env=None):
    env = dict(os.environ, CLIPSEARCH_PROGRESS_SECONDS="0.05", PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.Popen([CLIPSEARCH, "ingest", str(folder), "--index", str(index), "--model", str(model),
                             "--collection", collection, "--batch-size", "4", "--workers", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_progress(proc, timeout=120):
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if re.search(r"embedded [1-9]", line) or time.monotonic() > deadline:
            return
    raise AssertionError("ingest never reported progress")


def test_second_ingest_on_an_embedded_index_is_refused_and_the_first_finishes(tmp_path, tiny_model_dir):
    first_set = many_images(tmp_path / "photos" / "one", 300)
    many_images(tmp_path / "photos" / "two", 20, offset=300)
    index = tmp_path / "index"
    first = _start_ingest(tmp_path / "photos" / "one", index, tiny_model_dir)
    _wait_for_progress(first)
    second = subprocess.run([CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", str(index),
                             "--model", str(tiny_model_dir), "-q"], capture_output=True, text=True, timeout=120)
    out, _ = first.communicate(timeout=300)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and f"in use by pid {first.pid}" in errors[0]
    assert first.returncode == 0
    assert json.loads(out)["embedded"] == len(first_set)
    with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as idx:
        assert idx.count() == len(first_set)


# -- server only --------------------------------------------------------------------

@needs_server
def test_two_ingests_into_one_server_collection_do_not_duplicate(tmp_path, tiny_model_dir):
    many_images(tmp_path / "photos" / "a", 60)
    many_images(tmp_path / "photos" / "b", 60, offset=60)
    collection = f"test_{os.getpid()}_{int(time.time())}"
    # Overlapping: one takes a/ and b/, the other b/ only.
    p1 = _start_ingest(tmp_path / "photos", SERVER_URL, tiny_model_dir, collection)
    p2 = _start_ingest(tmp_path / "photos" / "b", SERVER_URL, tiny_model_dir, collection)
    for p in (p1, p2):
        p.communicate(timeout=600)
        assert p.returncode == 0
    with open_index(Settings.resolve(index=SERVER_URL, collection=collection)) as idx:
        assert idx.count() == 120
        ids = [r.id for r in idx.scroll()]
        assert len(ids) == len(set(ids)) == 120


@needs_server
def test_searches_answer_while_an_ingest_writes(tmp_path, tiny_model_dir, encoder):
    collection = f"test_{os.getpid()}_{int(time.time())}"
    many_images(tmp_path / "seed", 8)
    settings = Settings.resolve(index=SERVER_URL, collection=collection, model=str(tiny_model_dir))
    with open_index(settings, create=True) as idx:
        ingest([str(tmp_path / "seed")], encoder, idx, IngestOptions(workers=0, quiet=True))
    many_images(tmp_path / "more", 200, offset=8)
    writer = _start_ingest(tmp_path / "more", SERVER_URL, tiny_model_dir, collection)
    answered = 0
    with open_index(settings) as idx:
        query = encoder.encode_texts(["a red square"])[0]
        while writer.poll() is None:
            assert len(idx.query(query, 5)) == 5
            answered += 1
    assert writer.returncode == 0 and answered > 0


@needs_server
def test_a_wrong_api_key_is_refused_in_one_line_without_echoing_it():
    env = dict(os.environ, QDRANT_API_KEY="definitely-wrong-key-123", CLIPSEARCH_RETRY_SECONDS="2")
    result = subprocess.run([CLIPSEARCH, "status", "--index", SERVER_URL], capture_output=True, text=True,
                            env=env, timeout=60)
    if result.returncode == 0:
        pytest.skip("this server does not require an API key")
    assert "refused the API key" in result.stderr
    assert "definitely-wrong-key-123" not in result.stderr + result.stdout


class _Proxy:
    """A TCP forwarder to the server that the test can cut and restore."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self):
        self.open = False
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass

    def restore(self):
        self.open = True


@needs_server
def test_server_lost_mid_ingest_fails_clearly_and_a_rerun_completes(tmp_path, tiny_model_dir):
    from urllib.parse import urlparse

    parsed = urlparse(SERVER_URL)
    proxy = _Proxy(parsed.hostname, parsed.port or 6333)
    url = f"http://127.0.0.1:{proxy.port}"
    photos = many_images(tmp_path / "photos", 300)
    collection = f"test_{os.getpid()}_{int(time.time())}"
    run = _start_ingest(tmp_path / "photos", url, tiny_model_dir, collection, {"CLIPSEARCH_RETRY_SECONDS": "3"})
    _wait_for_progress(run)
    proxy.cut()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert f"Qdrant server {url} is unreachable" in err.strip().splitlines()[-1]
    proxy.restore()
    rerun = subprocess.run([CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", url, "--collection",
                            collection, "--model", str(tiny_model_dir), "--workers", "0", "--json", "-q"],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    with open_index(Settings.resolve(index=SERVER_URL, collection=collection)) as idx:
        assert idx.count() == len(photos)
