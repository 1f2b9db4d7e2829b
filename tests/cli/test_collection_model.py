"""A command given no model uses the one the collection records: after `clipsearch
reindex --model my-clip/`, plain `ingest`, `search` and `serve` go on with my-clip/.
A model named by --model or CLIPSEARCH_MODEL still wins, and a recorded model folder
that is gone is not guessed at."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.config import DEFAULT_MODEL, Settings
from clipsearch.encoders import Encoder
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index, with_recorded_model
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search import search

from support import ServeProcess, draw_collection, draw_image

QUIET = IngestOptions(workers=0, quiet=True, batch_size=8)


def test_settings_say_whether_the_model_was_named():
    assert not Settings.resolve().model_named and Settings.resolve().model == DEFAULT_MODEL
    assert Settings.resolve(model="/models/mine").model_named
    assert Settings.resolve({"CLIPSEARCH_MODEL": "/models/mine"}).model_named
    assert Settings.resolve().with_overrides(model="/models/mine").model_named
    assert not Settings.resolve().with_overrides(collection="other").model_named
    assert Settings().model_named  # built by hand: the model it holds is the one meant


def _unnamed(settings: Settings) -> Settings:
    """The same index and collection, as a command given no model sees them."""
    return dataclasses.replace(settings, model=DEFAULT_MODEL, model_named=False)


def test_search_and_ingest_use_the_collections_model_on_every_backend(backend_settings, tmp_path,
                                                                       other_model_dir):
    made = backend_settings.with_overrides(model=str(other_model_dir))
    draw_collection(tmp_path / "photos", 10)
    ingest([str(tmp_path / "photos")], settings=made, options=QUIET)
    unnamed = _unnamed(made)

    hits = search("a red circle", k=3, settings=unnamed)
    assert len(hits) == 3

    draw_image(tmp_path / "more" / "new.png", "green", "square", mark=300)
    summary = ingest([str(tmp_path / "more")], settings=unnamed, options=QUIET)
    assert summary.embedded == 1
    with open_index(made) as index:
        [record] = [r for r in index.scroll(with_vectors=True) if r.path.endswith("new.png")]
        assert index.stored_identity().name == str(other_model_dir)
    with Image.open(tmp_path / "more" / "new.png") as image:
        expected = Encoder(str(other_model_dir), "cpu").encode_images([image.convert("RGB")])[0]
    assert float(np.dot(record.vector, expected)) > 0.99  # embedded by the collection's model


def test_a_named_model_still_wins(backend_settings, tmp_path, other_model_dir, tiny_model_dir):
    made = backend_settings.with_overrides(model=str(other_model_dir))
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=made, options=QUIET)
    with pytest.raises(ClipsearchError, match="model mismatch"):
        search("a red circle", k=3, settings=made.with_overrides(model=str(tiny_model_dir)))


def test_a_model_put_in_the_settings_by_replace_is_not_swapped(backend_settings, tmp_path, other_model_dir,
                                                                tiny_model_dir):
    """dataclasses.replace keeps model_named as it was: the model itself says it was chosen."""
    made = backend_settings.with_overrides(model=str(other_model_dir))
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=made, options=QUIET)
    chosen = dataclasses.replace(_unnamed(made), model=str(tiny_model_dir))
    with pytest.raises(ClipsearchError, match="model mismatch"):
        search("a red circle", k=3, settings=chosen)


def test_a_recorded_model_folder_that_is_gone_is_named_not_guessed(tmp_path, other_model_dir):
    model = tmp_path / "my-clip"
    shutil.copytree(other_model_dir, model)
    made = Settings.resolve(model=str(model), index=str(tmp_path / "index"), device="cpu")
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=made, options=QUIET)
    shutil.rmtree(model)
    result = CliRunner().invoke(cli, ["search", "a red circle", "--index", str(tmp_path / "index")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"was made with the model folder {model}, which is not on this machine" in result.output, result.output
    assert "--model" in result.output and len(result.output.strip().splitlines()) == 1


def test_an_embedded_record_is_read_before_the_index_opens(tmp_path, other_model_dir):
    """Search chooses its text encoder before the engine loads (the two overlap): the
    record is read from the folder, even while another process holds the index."""
    made = Settings.resolve(model=str(other_model_dir), index=str(tmp_path / "index"), device="cpu")
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=made, options=QUIET)
    said: list[str] = []
    with open_index(made):  # held, as by `clipsearch serve`
        early = with_recorded_model(_unnamed(made), said.append)
    assert early.model == str(other_model_dir) and early.model_named
    assert said == [f"collection 'images' was made with {other_model_dir}: using it "
                    "(--model or CLIPSEARCH_MODEL names another)"]
    assert with_recorded_model(made) is made  # named: left alone
    nothing = _unnamed(Settings.resolve(index=str(tmp_path / "empty"), device="cpu"))
    assert with_recorded_model(nothing) is nothing and not (tmp_path / "empty").exists()


@pytest.fixture
def reindexed(tmp_path, tiny_model_dir, other_model_dir) -> Path:
    """An embedded index built with the tiny model, then reindexed with the other one,
    both named on the command line as a user does."""
    index = tmp_path / "index"
    draw_collection(tmp_path / "photos", 8)
    for args in (["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "--workers", "0", "--quiet"],
                 ["reindex", "--model", str(other_model_dir), "--workers", "0", "--quiet"]):
        result = CliRunner().invoke(cli, [*args, "--index", str(index)])
        assert result.exit_code == 0, result.output
    return index


def test_after_a_reindex_the_cli_needs_no_model(reindexed, tmp_path, other_model_dir):
    found = CliRunner().invoke(cli, ["search", "a red circle", "-k", "3", "-f", "paths", "-v",
                                     "--index", str(reindexed)])
    assert found.exit_code == 0, found.output
    assert len(found.stdout.splitlines()) == 3
    assert f"was made with {other_model_dir}: using it" in found.stderr
    assert DEFAULT_MODEL not in found.stderr

    draw_image(tmp_path / "photos" / "later.png", "blue", "triangle", mark=301)
    added = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(reindexed),
                                     "--workers", "0", "--json"])
    assert added.exit_code == 0, added.output
    assert f"was made with {other_model_dir}: using it" in added.stderr
    assert '"embedded": 1' in added.stdout


@pytest.mark.slow
def test_after_a_reindex_serve_needs_no_model(reindexed, tmp_path, other_model_dir):
    with ServeProcess(["--index", str(reindexed)], tmp_path / "serve.log",
                      env={"CLIPSEARCH_CACHE_DIR": str(tmp_path / "serve-cache")}) as server:
        status, body = server.get("/api/search?q=a+red+circle&k=3")
        assert status == 200 and len(body["hits"]) == 3, body
        assert f"was made with {other_model_dir}: using it" in server.output()


def test_reindex_never_assumes_the_default_model(tmp_path):
    """Hours of embedding are not started by a command that forgot its --model."""
    result = CliRunner().invoke(cli, ["reindex", "--index", str(tmp_path / "index")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "reindex needs --model (or CLIPSEARCH_MODEL)" in result.output
    assert not (tmp_path / "index").exists()


def test_ingest_keeps_the_collections_precision_unless_one_is_named(tmp_path, tiny_model_dir, monkeypatch):
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True,
                                                                                   precision="int8"))
    draw_image(tmp_path / "more" / "a.png", "green", "square", mark=500)
    added = ingest([str(tmp_path / "more")], settings=settings, options=QUIET)  # IngestOptions' "": the collection's
    assert added.embedded == 1
    with open_index(settings) as index:
        assert index.stored_identity().precision == "int8" and index.count() == 5

    draw_image(tmp_path / "more" / "b.png", "blue", "circle", mark=501)
    monkeypatch.setenv("CLIPSEARCH_PRECISION", "fp32")  # named: the usual refusal, nothing written
    with pytest.raises(ClipsearchError, match="precision mismatch"):
        ingest([str(tmp_path / "more")], settings=settings, options=QUIET)
    with open_index(settings) as index:
        assert index.count() == 5
