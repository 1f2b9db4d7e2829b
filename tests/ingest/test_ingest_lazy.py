"""Issue 3: an unchanged re-ingest reads the model's identity from the model cache and
neither imports torch nor decodes nor encodes; a changed file still gets the full
model's vector; a model whose files changed is identified again, never served a
stale identity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import clipsearch.ingest.pipeline
from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.encoders import Encoder, location
from clipsearch.encoders import cache as model_cache
from clipsearch.encoders.lazy import LazyEncoder
from clipsearch.errors import ClipsearchError
from clipsearch.images import load_image
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, Ingestor

from support import draw_collection, draw_image

HEAVY = {"torch", "sentence_transformers", "transformers"}


def ingest_in_fresh_process(args: list, env: dict) -> tuple[dict, set[str]]:
    """`python -X importtime -m clipsearch ingest ARGS --json`: its summary, and the
    top-level packages the process imported (from the -X importtime report)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipsearch", "ingest", *map(str, args),
                           "--json", "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    return json.loads(done.stdout.splitlines()[-1]), imported


def cli_ingest(photos: Path, index: Path, model: Path, *extra):
    return CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(index), "--model", str(model),
                                    "-w", "0", "-q", *map(str, extra)])


def test_an_unchanged_rerun_imports_no_torch(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 6)
    args = [photos, "--index", tmp_path / "index", "--model", tiny_model_dir, "-w", "0"]
    env = dict(os.environ)  # with this test's own CLIPSEARCH_CACHE_DIR (conftest.isolated_env)

    first, imported = ingest_in_fresh_process(args, env)
    assert first["embedded"] == 6
    assert "torch" in imported  # the check below can fail: a first run loads the model
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["unchanged"], second["skipped"]) == (0, 6, 0)
    assert not imported & HEAVY, sorted(imported & HEAVY)


def test_unchanged_files_are_neither_decoded_nor_encoded(tmp_path, tiny_model_dir, monkeypatch):
    photos = tmp_path / "photos"
    draw_collection(photos, 4)
    assert cli_ingest(photos, tmp_path / "index", tiny_model_dir).exit_code == 0

    def refuse(*args):
        raise AssertionError("an unchanged file was decoded")

    monkeypatch.setattr(clipsearch.ingest.pipeline, "decode_job", refuse)
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"))
    with open_index(settings, create=True) as index:
        summary = Ingestor(lazy, index, IngestOptions(workers=0, quiet=True)).run([str(photos)])
    assert (summary.embedded, summary.unchanged) == (0, 4)
    assert lazy.cached and not lazy.loaded


def test_a_changed_file_gets_the_full_models_vector_through_the_lazy_path(tmp_path, tiny_model_dir, encoder):
    photos = tmp_path / "photos"
    paths = draw_collection(photos, 6)
    index_dir = tmp_path / "index"
    assert cli_ingest(photos, index_dir, tiny_model_dir).exit_code == 0
    changed = [draw_image(paths[0], "blue", "triangle", size=(90, 70)),  # rewritten: new size and mtime
               draw_image(photos / "new.jpg", "green", "square", size=(300, 200), fmt="JPEG")]

    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(index_dir))
    with open_index(settings, create=True) as index:
        ingestor = Ingestor(lazy, index, IngestOptions(workers=1, quiet=True))  # the spawn decode pool
        summary = ingestor.run([str(photos)])
        stored = {r.payload["path"]: r.vector for r in index.scroll(with_vectors=True)}
    assert (summary.embedded, summary.unchanged) == (2, 5)
    # The first run exported the image tower (issue 16): the changed files go through
    # onnxruntime, and still get the full model's vectors.
    assert lazy.cached and not lazy.loaded and lazy.towers.path == "onnx"
    assert ingestor.target == encoder.image_size
    expected = encoder.encode_images([load_image(str(p), target=encoder.image_size).image for p in changed])
    for path, vector in zip(changed, expected):
        np.testing.assert_allclose(stored[os.path.realpath(path)], vector, atol=1e-5)


def test_a_model_whose_files_changed_is_identified_again(tmp_path, tiny_model_dir, other_model_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    index_dir = tmp_path / "index"
    assert cli_ingest(photos, index_dir, model).exit_code == 0
    tiny = LazyEncoder(str(model), "cpu")
    tiny.identity  # noqa: B018
    assert tiny.cached and not tiny.loaded  # recorded by the first run
    key = location.locate(str(model))[1]

    # New weights in the same folder (as a fine-tune --overwrite would leave it).
    shutil.copyfile(other_model_dir / "model.safetensors", model / "model.safetensors")
    assert location.locate(str(model))[1] != key
    draw_image(photos / "more.png", "yellow")
    result = cli_ingest(photos, index_dir, model)
    assert result.exit_code == 1 and "model mismatch" in result.output, result.output
    other = Encoder(str(other_model_dir), "cpu").identity
    again = LazyEncoder(str(model), "cpu")
    assert again.identity.image_fingerprint == other.image_fingerprint != tiny.identity.image_fingerprint
    assert again.cached  # recorded by the refused run, under the new files' key

    # Files that change after the identity was read: the loaded weights are checked.
    shutil.copyfile(tiny_model_dir / "model.safetensors", model / "model.safetensors")
    with pytest.raises(ClipsearchError, match="changed during this run"):
        again.full()


def test_the_identity_of_an_exported_text_tower_serves_ingest(tmp_path, tiny_model_dir, encoder):
    from clipsearch.encoders.text_export import export_text_tower

    folder, key, _ = location.locate(str(tiny_model_dir))
    export_text_tower(encoder, key, folder, str(tiny_model_dir))
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    assert lazy.identity == encoder.identity and lazy.cached and not lazy.loaded
    assert not model_cache.identities_dir().exists()  # the tower's manifest was enough


@pytest.mark.parametrize("damage", ["not JSON", "no identity"])
def test_a_damaged_identity_record_means_loading_the_model(damage, tmp_path, tiny_model_dir, encoder):
    folder, key, _ = location.locate(str(tiny_model_dir))
    model_cache.write_identity(key, str(tiny_model_dir), folder, encoder.identity)
    record = model_cache.identities_dir() / f"{key}.json"
    record.write_text("{oops" if damage == "not JSON" else json.dumps({"format": 1}))
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    assert lazy.identity == encoder.identity and not lazy.cached and lazy.loaded
    assert model_cache.read_identity(key) == encoder.identity  # rewritten


def test_the_cache_can_be_turned_off(tmp_path, tiny_model_dir, encoder, monkeypatch):
    folder, key, _ = location.locate(str(tiny_model_dir))
    model_cache.write_identity(key, str(tiny_model_dir), folder, encoder.identity)
    monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")
    lazy = LazyEncoder(str(tiny_model_dir), "cpu")
    assert lazy.identity == encoder.identity and not lazy.cached and lazy.loaded
