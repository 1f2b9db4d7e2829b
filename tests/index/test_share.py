"""One index, many clients: migrate, status, concurrency and faults.

The embedded-backend parts always run. The parts that need a Qdrant server run twice:
against the REST double (tests/doubles/qdrant_rest_double.py: Qdrant's REST API over qdrant-
client's local engine, always) and against a real server when QDRANT_URL is set
(`make test-server`; skipped otherwise).
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
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from qdrant_client import models

from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.index.migrate import migrate, same_payload
from clipsearch.ingest import IngestOptions, ingest

from support import draw_collection, export_server, rest_double, settings_for

CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")
needs_server = pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason="QDRANT_URL is not set: no Qdrant server")


def many_images(folder: Path, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(offset, offset + count):
        path = folder / f"{i:04d}.png"
        image = Image.new("RGB", (40, 32), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
        image.putpixel((0, 0), (i % 256, i // 256, 0))  # colours repeat every 256: no two files alike
        image.save(path)
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


@pytest.mark.parametrize("target_backend", ["edge", "memory", "rest", "grpc",
                                            pytest.param("server", marks=needs_server)])
def test_migrate_copies_vectors_payloads_and_identity(edge_index, tmp_path, tiny_model_dir, target_backend,
                                                      monkeypatch):
    target = settings_for(target_backend, tmp_path / "target", tiny_model_dir)
    if target.backend == "server":  # its key and protocol, for the command
        export_server(target_backend, monkeypatch)
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


def test_a_migrate_into_an_embedded_index_run_again_copies_nothing(tmp_path, tiny_model_dir):
    """A server keeps a payload's floats exactly; the embedded engine to 16 digits. A
    second run (a resumed one) must still find every point there."""
    source = settings_for("memory", tmp_path, tiny_model_dir)
    target = settings_for("edge", tmp_path / "target", tiny_model_dir)
    identity = ModelIdentity("m", "image", "text", 4)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(3)]
    floats = [123456789.12345679, 1796619969.5812345, 0.1 + 0.2]
    with open_index(source, create=True) as s:
        s.ensure_collection(identity)
        s.upsert(ids, np.eye(3, 4, dtype=np.float32), [{"path": f"/p/{i}", "mtime": f, "dirs": ["/p"], "n": 3}
                                                         for i, f in enumerate(floats)])
        for run in range(2):
            with open_index(target, create=True) as t:
                summary = migrate(s, t, batch_size=2)
            assert (summary.copied, summary.already_there) == ((3, 0) if run == 0 else (0, 3))


@pytest.mark.parametrize(("a", "b", "same"), [
    (1.0, 1.0 + 1e-16, True), (1.0, 1.0001, False), (1, 1.0, False), ({"a": [1.5]}, {"a": [1.5]}, True),
    ({"a": 1}, {"a": 1, "b": 2}, False), ([1.0, 2.0], [1.0], False), ("x", "x", True), (None, None, True)])
def test_payloads_compare_equal_but_for_a_floats_last_digit(a, b, same):
    assert same_payload(a, b) is same


@pytest.mark.parametrize("target_backend", ["edge", "rest", pytest.param("server", marks=needs_server)])
def test_a_migrate_that_stopped_leaves_the_target_saying_so(edge_index, tmp_path, tiny_model_dir, target_backend,
                                                           monkeypatch):
    target = settings_for(target_backend, tmp_path / "target", tiny_model_dir)
    if target.backend == "server":  # its key and protocol, for the commands
        export_server(target_backend, monkeypatch)
    with open_index(edge_index) as source, open_index(target, create=True) as t:
        real_upsert, batches = t.upsert, []

        def upsert_then_stop(*args):
            batches.append(1)
            if len(batches) == 3:
                raise KeyboardInterrupt  # Ctrl-C after two batches of 5
            real_upsert(*args)

        t.upsert = upsert_then_stop
        with pytest.raises(KeyboardInterrupt):
            migrate(source, t, batch_size=5)
    where = ["--index", target.index, "--collection", target.collection]
    status = CliRunner().invoke(cli, ["status", *where])
    assert status.exit_code == 0 and "points:       10" in status.output
    assert "incomplete:   a migrate from " in status.output and "(30 points) has not finished" in status.output
    assert json.loads(CliRunner().invoke(cli, ["status", *where, "--json"]).output)["unfinished_copy"]["points"] == 30
    check = CliRunner().invoke(cli, ["status", "--check", *where])
    assert check.exit_code == 1 and "run the same migrate again" in check.output
    searched = CliRunner().invoke(cli, ["search", *where, "--model", str(tiny_model_dir), "a red circle", "-k", "3"])
    assert searched.exit_code == 0 and "note: a migrate from " in searched.stderr

    again = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                     "--to", target.index, "--to-collection", target.collection, "-q"])
    assert "copied 20, already there 10, of 30 points" in again.output
    status = CliRunner().invoke(cli, ["status", *where])
    assert "points:       30" in status.output and "incomplete" not in status.output
    assert CliRunner().invoke(cli, ["status", "--check", *where]).exit_code == 0


def _migrate_stopped_after(source_settings, target, batches: int) -> None:
    """A migrate stopped (Ctrl-C) after `batches` batches of 5."""
    with open_index(source_settings) as source, open_index(target, create=True) as t:
        real_upsert, sent = t.upsert, []

        def upsert_then_stop(*args):
            sent.append(1)
            if len(sent) > batches:
                raise KeyboardInterrupt
            real_upsert(*args)

        t.upsert = upsert_then_stop
        with pytest.raises(KeyboardInterrupt):
            migrate(source, t, batch_size=5)


def test_a_migrate_finished_through_another_address_of_the_source_clears_the_mark(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    """Stopped through one address of a server (a proxy), finished through another: the
    same source, so the target is complete. A copy from a genuinely different source of
    the same collection name (another index) leaves the mark."""
    export_server("rest", monkeypatch)  # the key, for the commands
    source = settings_for("rest", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 30)
    ingest([str(tmp_path / "photos")], settings=source, options=IngestOptions(workers=0, quiet=True))
    proxy = _Proxy("127.0.0.1", rest_double().port)
    through_proxy = source.with_overrides(index=f"http://127.0.0.1:{proxy.port}")
    targets = [settings_for("edge", tmp_path / name, tiny_model_dir) for name in ("same", "other")]
    for target in targets:
        _migrate_stopped_after(through_proxy, target, 2)
        with open_index(target) as t:
            assert t.unfinished_copy()["from"].startswith(through_proxy.index)
    same, other = targets

    finished = CliRunner().invoke(cli, ["migrate", "--index", source.index, "--collection", source.collection,
                                        "--to", same.index, "--to-collection", same.collection, "-q"])
    assert finished.exit_code == 0 and "of 30 points" in finished.output and "holds 30" in finished.output
    where = ["--index", same.index, "--collection", same.collection]
    assert "incomplete" not in CliRunner().invoke(cli, ["status", *where]).output
    assert CliRunner().invoke(cli, ["status", "--check", *where]).exit_code == 0

    elsewhere = settings_for("edge", tmp_path / "elsewhere", tiny_model_dir).with_overrides(
        collection=source.collection)  # another library under the same collection name
    draw_collection(tmp_path / "elsewhere-photos", 40)
    ingest([str(tmp_path / "elsewhere-photos")], settings=elsewhere, options=IngestOptions(workers=0, quiet=True))
    with open_index(elsewhere) as e, open_index(other, create=True) as t:
        migrate(e, t, batch_size=10)
        assert t.unfinished_copy()["from"].startswith(through_proxy.index)  # its own points are still missing


def test_a_finished_copy_from_elsewhere_leaves_an_unfinished_one_marked(edge_index, tmp_path, tiny_model_dir):
    target = settings_for("edge", tmp_path / "target", tiny_model_dir)
    with open_index(edge_index) as source, open_index(target, create=True) as t:
        t.ensure_collection(source.stored_identity())
        t.record_unfinished_copy({"from": "/elsewhere (collection photos)", "points": 500})
        migrate(source, t, batch_size=10)
        assert t.unfinished_copy()["from"] == "/elsewhere (collection photos)"  # still to be finished


@pytest.mark.parametrize("where", ["read by the copy", "behind the copy"])
def test_an_ingest_into_the_source_during_a_migrate_is_counted_again_at_the_end(tmp_path, tiny_model_dir, where):
    """Points added to the source while it is copied: those the copy still reads make no
    failure (it said `source has 30 points, target holds 33`); those it had passed make
    one that says the source grew. The copy reads by point id, 5 a page, from the first
    ids: the points added come last, or before the page it reads next."""
    source_settings = settings_for("rest", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 30)
    ingest([str(tmp_path / "photos")], settings=source_settings, options=IngestOptions(workers=0, quiet=True))
    target = settings_for("edge", tmp_path / "target", tiny_model_dir)
    first = "ffffffff" if where == "read by the copy" else "00000000"
    added = [f"{first}-0000-5000-8000-00000000000{i}" for i in range(3)]
    with open_index(source_settings) as source, open_index(target, create=True) as t:
        vector = next(source.scroll(with_vectors=True)).vector
        real_upsert, ingested = t.upsert, []

        def upsert_while_an_ingest_adds(*args):
            if not ingested:
                source.upsert(added, np.stack([vector] * 3), [{"path": f"/new/{i}.png"} for i in range(3)])
                ingested.append(True)
            real_upsert(*args)

        t.upsert = upsert_while_an_ingest_adds
        if where == "read by the copy":
            summary = migrate(source, t, batch_size=5)
            assert (summary.total, summary.source_count, summary.target_count) == (30, 33, 33)
            return
        with pytest.raises(ClipsearchError) as failed:
            migrate(source, t, batch_size=5)
        assert "the source grew from 30 to 33 points while this copied it" in str(failed.value)
        assert t.unfinished_copy() is not None
        summary = migrate(source, t, batch_size=5)  # run again: the rest
    assert summary.target_count == 33 and summary.source_count == 33


def test_a_search_on_a_server_reads_the_mark_without_another_request(edge_index, tmp_path, tiny_model_dir,
                                                                     monkeypatch):
    import httpx

    target = settings_for("rest", tmp_path / "target", tiny_model_dir)
    export_server("rest", monkeypatch)  # its key, for the command
    with open_index(edge_index) as source, open_index(target, create=True) as t:
        migrate(source, t, batch_size=10)
    sent = []
    real_send = httpx.Client.send

    def counted(self, request, *args, **kwargs):
        sent.append(f"{request.method} {request.url.path}")
        return real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", counted)
    where = ["--index", target.index, "--collection", target.collection, "--model", str(tiny_model_dir)]
    searched = CliRunner().invoke(cli, ["search", *where, "a red circle", "-k", "1"])
    assert searched.exit_code == 0, searched.output
    assert sum(path.endswith(f"/collections/{target.collection}") for path in sent) == 1, sent


def test_migrate_refuses_a_target_of_another_model(edge_index, tmp_path, tiny_model_dir, other_model_dir):
    from clipsearch.encoders import Encoder

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
    assert result.exit_code == 2 and "source collection itself" in result.output


@pytest.mark.parametrize("flags, said", [
    (["--to", ""], "--to is empty"),
    (["--to", "{tmp}/target", "--to-collection", "../x"], "--to-collection '../x' is not a valid collection name"),
    (["--to", "{tmp}/target", "--to-collection", "a\nb"], "--to-collection 'a\\nb' is not a valid collection name"),
])
def test_migrate_names_its_own_flags_when_refusing_a_target(edge_index, tmp_path, monkeypatch, flags, said):
    monkeypatch.chdir(tmp_path)  # an empty --to was this folder
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    result = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--collection", edge_index.collection,
                                      *flags])
    assert result.exit_code == 2 and said in result.output, result.output  # a bad flag value
    assert not (tmp_path / "target").exists()


def test_a_path_that_is_a_file_is_named_by_its_flag(edge_index, tmp_path, tiny_model_dir):
    afile = tmp_path / "afile"
    afile.write_text("not an index")
    moved = CliRunner().invoke(cli, ["migrate", "--index", edge_index.index, "--to", str(afile)])
    assert moved.exit_code == 1 and f"--to {afile} is a file, not an index folder" in moved.output
    searched = CliRunner().invoke(cli, ["search", "--index", edge_index.index, "--collection", edge_index.collection,
                                        "--model", str(afile), "a cat"])
    assert searched.exit_code == 1 and f"model folder {afile} is a file, not a model folder" in searched.output


def test_status_shows_state_and_never_the_key(edge_index, monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret-key-value")
    args = ["status", "--index", edge_index.index, "--collection", edge_index.collection]
    text = CliRunner().invoke(cli, args).output
    assert "points:       30" in text and "search index: exact scan" in text and "model:" in text
    facts = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert facts["points"] == 30 and facts["indexed_vectors"] == 0 and facts["model"]["dim"] == 16
    assert "s3cret" not in text and "s3cret" not in json.dumps(facts)


def test_grpc_setting_from_flag_and_env(monkeypatch):
    monkeypatch.delenv("CLIPSEARCH_GRPC", raising=False)  # `CLIPSEARCH_GRPC=1 make test-server`
    assert Settings.resolve(index="http://h:6333").grpc is False
    monkeypatch.setenv("CLIPSEARCH_GRPC", "yes")
    assert Settings.resolve(index="http://h:6333").grpc is True
    assert Settings.resolve(index="http://h:6333", grpc=False).grpc is False
    monkeypatch.setenv("CLIPSEARCH_GRPC", "perhaps")
    with pytest.raises(ClipsearchError, match="CLIPSEARCH_GRPC"):
        Settings.resolve()


def test_grpc_port_from_env(monkeypatch):
    monkeypatch.delenv("CLIPSEARCH_GRPC_PORT", raising=False)
    assert Settings.resolve(index="http://h:6333").grpc_port == 6334
    monkeypatch.setenv("CLIPSEARCH_GRPC_PORT", "16334")
    assert Settings.resolve(index="http://h:6333").grpc_port == 16334
    for bad in ("port", "0", "70000"):
        monkeypatch.setenv("CLIPSEARCH_GRPC_PORT", bad)
        with pytest.raises(ClipsearchError, match=f"CLIPSEARCH_GRPC_PORT='{bad}' is not a port number"):
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
    first_set = many_images(tmp_path / "photos" / "one", 600)
    many_images(tmp_path / "photos" / "two", 20, offset=600)
    index = tmp_path / "index"
    # Through torch, in batches of 4: still embedding when the second process reaches the
    # lock a second or two later (the ONNX tower would finish the tiny model's 600 first).
    first = _start_ingest(tmp_path / "photos" / "one", index, tiny_model_dir,
                          extra_env={"CLIPSEARCH_FAST_PATH": "0"})
    _wait_for_progress(first)
    second = subprocess.run([CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", str(index),
                             "--model", str(tiny_model_dir), "-q"], capture_output=True, text=True, timeout=120)
    out, _ = first.communicate(timeout=300)
    assert second.returncode == 75
    errors = [line for line in second.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and f"in use by pid {first.pid}" in errors[0]
    assert first.returncode == 0
    assert json.loads(out)["embedded"] == len(first_set)
    with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as idx:
        assert idx.count() == len(first_set)


# -- server only: the REST double always, a real server when QDRANT_URL is set ----------

@dataclass
class Server:
    url: str
    grpc_port: int | None  # set when the client talks gRPC


def _export(kind: str, monkeypatch) -> Server:
    """Export the settings (URL, key, protocol) of server `kind` for the commands the
    test runs."""
    env = export_server(kind, monkeypatch)
    settings = Settings.resolve(env)
    return Server(env["QDRANT_URL"], settings.grpc_port if settings.grpc else None)


@pytest.fixture(params=["rest", "grpc", pytest.param("server", marks=needs_server)])
def server(request, monkeypatch) -> Server:
    """The server under test: the double over REST and over gRPC, and a real one."""
    return _export(request.param, monkeypatch)


@pytest.fixture(params=["rest", "grpc"])
def double_server(request, monkeypatch) -> Server:
    """The double alone, for failures a real server cannot be asked for."""
    return _export(request.param, monkeypatch)


def _collection() -> str:
    return f"test_{os.getpid()}_{time.time_ns()}"


def test_two_ingests_into_one_server_collection_do_not_duplicate(tmp_path, tiny_model_dir, server):
    many_images(tmp_path / "photos" / "a", 60)
    many_images(tmp_path / "photos" / "b", 60, offset=60)
    collection = _collection()
    # Overlapping: one takes a/ and b/, the other b/ only.
    p1 = _start_ingest(tmp_path / "photos", server.url, tiny_model_dir, collection)
    p2 = _start_ingest(tmp_path / "photos" / "b", server.url, tiny_model_dir, collection)
    for p in (p1, p2):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    with open_index(Settings.resolve(index=server.url, collection=collection)) as idx:
        assert idx.count() == 120
        ids = [r.id for r in idx.scroll()]
        assert len(ids) == len(set(ids)) == 120


def test_searches_answer_while_an_ingest_writes(tmp_path, tiny_model_dir, encoder, server):
    collection = _collection()
    many_images(tmp_path / "seed", 8)
    settings = Settings.resolve(index=server.url, collection=collection, model=str(tiny_model_dir))
    with open_index(settings, create=True) as idx:
        ingest([str(tmp_path / "seed")], encoder, idx, IngestOptions(workers=0, quiet=True))
    many_images(tmp_path / "more", 200, offset=8)
    writer = _start_ingest(tmp_path / "more", server.url, tiny_model_dir, collection)
    answered = 0
    with open_index(settings) as idx:
        query = encoder.encode_texts(["a red square"])[0]
        while writer.poll() is None:
            assert len(idx.query(query, 5)) == 5
            answered += 1
        assert idx.count() == 208
    assert writer.returncode == 0 and answered > 0


def test_a_wrong_api_key_is_refused_in_one_line_without_echoing_it(server):
    env = dict(os.environ, QDRANT_API_KEY="definitely-wrong-key-123", CLIPSEARCH_RETRY_SECONDS="2")
    started = time.monotonic()
    result = subprocess.run([CLIPSEARCH, "status", "--index", server.url], capture_output=True, text=True,
                            env=env, timeout=60)
    if result.returncode == 0:
        pytest.skip("this server does not require an API key")
    assert time.monotonic() - started < 30  # refused at once, not retried
    last = result.stderr.strip().splitlines()[-1]
    assert f"Qdrant server {server.url}" in last and "refused the API key" in last
    assert "Traceback" not in result.stderr
    assert "definitely-wrong-key-123" not in result.stderr + result.stdout


class _Proxy:
    """A TCP forwarder to the server that the test can cut and restore. A cut ends every
    connection as a server that goes down does (shut down, so the client sees it at
    once, not after its timeout), and refuses new ones until restored."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                self._end(client)
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                cut = not self.open  # cut while this one was being connected
                if not cut:
                    self.conns += [client, upstream]
            if cut:
                self._end(client, upstream)
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _end(*sockets):
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)  # close() alone leaves a recv() in another thread waiting
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    @classmethod
    def _pipe(cls, a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            cls._end(a, b)

    def cut(self):
        with self.lock:
            self.open = False
            conns, self.conns = self.conns, []
        self._end(*conns)

    def restore(self):
        self.open = True


def test_server_lost_mid_ingest_fails_clearly_and_a_rerun_completes(tmp_path, tiny_model_dir, server):
    from urllib.parse import urlparse

    parsed = urlparse(server.url)
    if server.grpc_port:  # cut the gRPC port, which carries every call
        proxy = _Proxy(parsed.hostname, server.grpc_port)
        url, run_env = server.url, {"CLIPSEARCH_GRPC_PORT": str(proxy.port)}
        named = f"Qdrant server {url} (gRPC port {proxy.port}) is unreachable"
    else:
        proxy = _Proxy(parsed.hostname, parsed.port or 6333)
        url, run_env = f"http://127.0.0.1:{proxy.port}", {}
        named = f"Qdrant server {url} is unreachable"
    photos = many_images(tmp_path / "photos", 300)
    collection = _collection()
    run = _start_ingest(tmp_path / "photos", url, tiny_model_dir, collection,
                        {"CLIPSEARCH_RETRY_SECONDS": "3", **run_env})
    _wait_for_progress(run)
    proxy.cut()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert named in err.strip().splitlines()[-1]
    with open_index(Settings.resolve(index=server.url, collection=collection)) as idx:
        committed = idx.count()
    assert 0 < committed < len(photos)  # cut mid-ingest, with finished batches kept
    proxy.restore()
    rerun = subprocess.run([CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", url, "--collection",
                            collection, "--model", str(tiny_model_dir), "--workers", "0", "--json", "-q"],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, **run_env))
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["unchanged"] >= committed  # what the first run committed was not embedded again
    with open_index(Settings.resolve(index=server.url, collection=collection)) as idx:
        assert idx.count() == len(photos)
        assert len({r.id for r in idx.scroll()}) == len(photos)


def test_a_server_lost_mid_ingest_is_waited_for_once_and_said(tmp_path, tiny_model_dir, double_server):
    """While the server is gone the run says it waits; it gives up after
    CLIPSEARCH_RETRY_SECONDS, not once per queued write (two batches in flight, then
    the indexing restored: three budgets, 18 s here), and says what it kept."""
    from urllib.parse import urlparse

    parsed = urlparse(double_server.url)
    if double_server.grpc_port:
        proxy = _Proxy(parsed.hostname, double_server.grpc_port)
        url, run_env = double_server.url, {"CLIPSEARCH_GRPC_PORT": str(proxy.port)}
    else:
        proxy = _Proxy(parsed.hostname, parsed.port)
        url, run_env = f"http://127.0.0.1:{proxy.port}", {}
    many_images(tmp_path / "photos", 300)
    run = _start_ingest(tmp_path / "photos", url, tiny_model_dir, _collection(),
                        {"CLIPSEARCH_RETRY_SECONDS": "6", **run_env})
    _wait_for_progress(run)
    proxy.cut()
    cut = time.monotonic()
    _, err = run.communicate(timeout=120)
    took = time.monotonic() - cut
    assert run.returncode == 1
    lines = err.strip().splitlines()
    assert any(line.startswith("clipsearch: waiting for Qdrant server") and "retrying for up to 6 s" in line
               for line in lines), err
    assert re.search(r"is unreachable .*; the \d+ points this run wrote before are kept: run it again", lines[-1])
    assert took < 6 * 2, took  # one budget and the shutdown, not two or three (a loaded machine: 10 s seen)


# -- the REST double only: failures a real server cannot be asked for -------------------

def test_a_server_that_fails_for_a_while_is_retried_and_the_ingest_completes(tmp_path, tiny_model_dir,
                                                                             double_server):
    """503s / UNAVAILABLE (a server restarting, a proxy in front of it) are retried
    with backoff: the ingest loses nothing and reports no error."""
    url = double_server.url
    photos = many_images(tmp_path / "photos", 40)
    collection = _collection()
    rest_double().fail_next(4, 503)
    result = subprocess.run([CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", url, "--collection",
                             collection, "--model", str(tiny_model_dir), "--workers", "0", "--batch-size", "8",
                             "--json", "-q"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, CLIPSEARCH_RETRY_SECONDS="20"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == len(photos)
    with open_index(Settings.resolve(index=url, collection=collection)) as idx:
        assert idx.count() == len(photos)


def test_a_large_ingest_pauses_indexing_and_restores_it(tmp_path, tiny_model_dir, encoder, double_server):
    double = rest_double()
    settings = Settings.resolve(index=double_server.url, collection=_collection(), model=str(tiny_model_dir))
    many_images(tmp_path / "photos", 10)
    with open_index(settings, create=True) as idx:
        ingest([str(tmp_path / "photos")], encoder, idx, IngestOptions(workers=0, quiet=True))
        after = idx.client.get_collection(settings.collection).config.optimizer_config.indexing_threshold
    changes = [diff["indexing_threshold"] for name, diff in double.optimizer_changes if name == settings.collection]
    assert changes[0] == 0  # no HNSW rebuilds while loading
    assert changes[-1] == after > 0  # and the threshold the collection had, back after


def test_indexing_paused_by_an_ingest_that_died_or_overlapped_is_restored_to_its_own_value(double_server):
    settings = Settings.resolve(index=double_server.url, collection=_collection())
    identity = ModelIdentity("m", "i" * 64, "t" * 64, 16)

    def threshold(index):
        return index.client.get_collection(settings.collection).config.optimizer_config.indexing_threshold

    with open_index(settings, create=True) as a, open_index(settings, create=True) as b:
        a.ensure_collection(identity)
        own = threshold(a)  # the collection's own value (the double's engine says 20000)
        assert own not in (0, 10_000)
        # Two ingests overlap: the second sees the first's 0, and restores the real value.
        with a.bulk_load():
            with b.bulk_load():
                assert threshold(a) == 0
            with pytest.raises(RuntimeError):
                with a.bulk_load():  # one that dies mid-load (killed, server lost)
                    raise RuntimeError("killed")
        assert threshold(a) == own
        a.client.update_collection(settings.collection,  # as a killed process leaves it
                                   optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0))
        status = CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection])
        assert "indexing paused by an ingest" in status.output
        with b.bulk_load():
            pass
        assert threshold(b) == own
        assert "indexing paused" not in CliRunner().invoke(
            cli, ["status", "--index", settings.index, "--collection", settings.collection]).output
        assert b.stored_identity() == identity  # the record sits beside the model's, which stays


def test_a_url_that_is_not_a_qdrant_server_fails_at_once(tmp_path):
    """Another web service on that port answers 200 with something else: one line, no
    30 s of retries."""
    import http.server

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html>not qdrant</html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["search", "a cat", "--index", url])
    finally:
        other.shutdown()
    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert f"{url} answered, but not as a Qdrant server" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("address, said", [
    ("https", "does not answer TLS (SSL WRONG_VERSION_NUMBER): that port speaks plain HTTP; use http://"),
    ("grpc port", "answered, but not in the HTTP/1.1 of Qdrant's REST API (illegal request line): is that "
                  "Qdrant's gRPC port (6334)?"),
    ("rest port over grpc", "answered, but not in the HTTP/2 of gRPC: is port {rest} Qdrant's REST port (6333)?"),
])
def test_a_port_that_speaks_another_protocol_fails_at_once(monkeypatch, address, said):
    """An https:// URL to a plain-HTTP port, the gRPC port as the REST URL, the REST
    port as the gRPC one: no retry changes the answer, so one line says which at once
    instead of after the retries."""
    double = rest_double()
    export_server("rest", monkeypatch)
    monkeypatch.setenv("CLIPSEARCH_RETRY_SECONDS", "20")
    url = {"https": double.url.replace("http://", "https://"), "grpc port": f"http://127.0.0.1:{double.grpc_port}",
           "rest port over grpc": double.url}[address]
    if address == "rest port over grpc":
        monkeypatch.setenv("CLIPSEARCH_GRPC", "1")
        monkeypatch.setenv("CLIPSEARCH_GRPC_PORT", str(double.port))
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["status", "--index", url])
    assert time.monotonic() - started < 5
    assert result.exit_code == 1 and said.format(rest=double.port) in result.output, result.output
    assert "unreachable" not in result.output and "Traceback" not in result.output


def test_a_server_that_asks_for_a_key_when_none_was_given_says_so(double_server, monkeypatch):
    monkeypatch.delenv("QDRANT_API_KEY")
    result = CliRunner().invoke(cli, ["status", "--index", double_server.url])
    assert result.exit_code == 1
    assert "asks for an API key and none was given" in result.output and "set QDRANT_API_KEY" in result.output
    assert "refused the API key" not in result.output


def test_a_key_sent_in_clear_to_another_machine_is_warned_of_in_one_line(capsys):
    from clipsearch.index.client import ClientIndex

    for url in ("http://127.0.0.1:6333", "http://localhost:6333", "https://qdrant.example.org"):
        ClientIndex(url, "images", api_key="s3cret-key-value").close()
    assert capsys.readouterr().err == ""  # loopback, or TLS: nothing to say
    for _ in range(2):
        ClientIndex("http://192.0.2.7:6333", "images", api_key="s3cret-key-value").close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1  # once per URL, not per open
    assert "sent unencrypted to http://192.0.2.7:6333" in lines[0] and "s3cret" not in lines[0]
