"""`clipsearch status --check`: the point count against the points read back, a path on
every point, unit-length vectors of the model record's dimension, the model record
itself. One line per finding, exit 0 when healthy and 1 when not, the findings as JSON
with --json. Runs on the embedded index and on a server collection (the REST double;
a real server with QDRANT_URL). Points are written through the Index API, which is how
a broken encoder or another program would have put them there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.index import ancestor_dirs, open_index, point_id

from support import export_server, settings_for

DIM = 16
IDENTITY = ModelIdentity(name="/models/tiny-clip", image_fingerprint="img-" + "c" * 60,
                         text_fingerprint="txt-" + "d" * 60, dim=DIM)


@pytest.fixture(params=["edge", "rest", pytest.param("server", marks=pytest.mark.server)])
def settings(request, tmp_path, tiny_model_dir, monkeypatch) -> Settings:
    if request.param != "edge":
        export_server(request.param, monkeypatch)  # for the command the test runs
    return settings_for(request.param, tmp_path, tiny_model_dir)


def put(settings: Settings, n: int = 12, vectors: np.ndarray | None = None, payloads: list | None = None,
        first: int = 0) -> list[str]:
    """`n` points (unit vectors, full payloads unless given); their ids."""
    paths = [f"/photos/{i:03d}.png" for i in range(first, first + n)]
    ids = [point_id(p) for p in paths]
    if vectors is None:
        v = np.random.default_rng(first).standard_normal((n, DIM)).astype(np.float32)
        vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
    if payloads is None:
        payloads = [{"path": p, "dirs": ancestor_dirs(p), "size": 1} for p in paths]
    with open_index(settings, create=True) as index:
        index.ensure_collection(IDENTITY)
        index.upsert(ids, vectors, payloads)
    return ids


def check(settings: Settings, *more: str):
    args = ["status", "--check", "--index", settings.index, "--collection", settings.collection, *more]
    return CliRunner().invoke(cli, args)


def lines_about(output: str, topic: str) -> list[str]:
    return [line for line in output.splitlines() if f" {topic}: " in line]


def test_a_healthy_collection_passes(settings):
    put(settings)
    result = check(settings)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1].endswith(": healthy") and all(line.startswith("ok ") for line in lines[:-1])
    for topic in ("model", "count", "paths", "dimension", "vectors"):
        assert lines_about(result.output, topic), (topic, result.output)
    assert "12 points, each read back once" in result.output
    facts = json.loads(check(settings, "--json").output)
    assert facts["healthy"] is True and all(f["ok"] for f in facts["findings"])


def test_a_vector_that_is_not_unit_length_is_found(settings):
    """The engine normalizes cosine vectors on the way in, except one it cannot: all
    zeros (what a broken model gives for a blank image)."""
    put(settings)
    (bad,) = put(settings, 1, vectors=np.zeros((1, DIM), np.float32), first=100)
    result = check(settings)
    assert result.exit_code == 1, result.output
    (line,) = lines_about(result.output, "vectors")
    assert line.startswith("PROBLEM") and f"not of unit length: 1 (e.g. point {bad})" in line and "length 0" in line
    assert result.output.splitlines()[-1].endswith("1 problem found")
    facts = json.loads(check(settings, "--json").output)
    assert facts["healthy"] is False
    assert [f["topic"] for f in facts["findings"] if not f["ok"]] == ["vectors"]


def test_a_point_without_a_path_is_found(settings):
    put(settings)
    (bad,) = put(settings, 1, payloads=[{"dirs": ["/photos", "/"], "size": 1}], first=200)
    result = check(settings)
    assert result.exit_code == 1, result.output
    (line,) = lines_about(result.output, "paths")
    assert line.startswith("PROBLEM") and f"without a path: 1 (e.g. point {bad})" in line
    assert lines_about(result.output, "count")[0].startswith("ok")  # 13 counted, 13 read


def test_a_model_record_of_another_dimension_is_found(tmp_path, tiny_model_dir):
    """The record says 32 dimensions, the vectors have 16 (edge: model.json)."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    put(settings)
    record = Path(settings.index) / settings.collection / "model.json"
    record.write_text(json.dumps({**IDENTITY.to_dict(), "dim": 32}))
    result = check(settings)
    assert result.exit_code == 1, result.output
    (line,) = lines_about(result.output, "dimension")
    assert "not of the model record's 32 dimensions: 12" in line and "they have 16" in line


def test_a_collection_that_does_not_exist_is_a_problem(settings):
    result = check(settings, "--json")
    assert result.exit_code == 1
    facts = json.loads(result.output)
    assert facts["healthy"] is False and "does not exist" in facts["findings"][0]["message"]


def test_an_index_that_cannot_be_opened_is_one_finding(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    put(settings)
    (Path(settings.index) / "clipsearch-index.json").write_text('{"format": 99}')
    result = check(settings)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines()[0].startswith("PROBLEM  open: ") and "upgrade clipsearch" in result.output


def test_check_with_server_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["status", "--check", "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "without --server" in result.output


def test_an_index_in_use_is_an_error_not_a_finding(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    put(settings)
    with open_index(settings):
        result = check(settings)
    assert result.exit_code == 75 and "PROBLEM" not in result.output
    assert result.output.startswith("Error: ") and "in use by pid" in result.output


def test_an_index_in_use_whose_lock_file_was_deleted_is_in_use_not_damaged(tmp_path, tiny_model_dir):
    """Someone "cleans up" the lock file beside a running ingest: the engine's own lock
    on the write-ahead log still refuses a second open, and that must read as in use,
    never as damage with advice to delete the index."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    put(settings)
    with open_index(settings) as held:
        (Path(settings.index) / f"{held.collection}.lock").unlink()
        result = check(settings)
    assert result.exit_code == 75 and "PROBLEM" not in result.output and "damaged" not in result.output, result.output
    assert result.output.startswith("Error: ") and "in use by another process" in result.output, result.output
