"""A model of NaN weights (a fine-tune that diverged) must never reach the index: an
ingest stores none of its vectors, and a reindex to it stops in one line naming it,
the collection's name still meaning the old vectors, which searches keep answering."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.index import open_index

from support import draw_collection, nan_copy


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, tiny_model_dir):
    return nan_copy(tiny_model_dir, tmp_path_factory.mktemp("broken") / "nan-clip")


def _invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def test_an_ingest_with_a_broken_model_stores_nothing(tmp_path, nan_model):
    draw_collection(tmp_path / "photos", 4)
    index = tmp_path / "index"
    result = _invoke("ingest", tmp_path / "photos", "--model", nan_model, "--index", index, "--workers", 0, "-q")
    assert result.exit_code == 1, result.output
    assert f"model {nan_model} gives vectors that are not finite numbers" in result.output
    with open_index(_settings(index, nan_model)) as opened:
        assert not opened.exists() or opened.count() == 0


def test_a_reindex_to_a_broken_model_switches_nothing(tmp_path, tiny_model_dir, nan_model):
    draw_collection(tmp_path / "photos", 4)
    index = tmp_path / "index"
    common = ["--index", index, "--workers", 0]
    assert _invoke("ingest", tmp_path / "photos", "--model", tiny_model_dir, *common, "-q").exit_code == 0
    with open_index(_settings(index, tiny_model_dir)) as opened:
        meant = opened.meant()

    result = _invoke("reindex", "--model", nan_model, *common, "-q")
    assert result.exit_code == 1, result.output
    assert f"model {nan_model} gives vectors that are not finite numbers" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
    with open_index(_settings(index, tiny_model_dir)) as opened:
        assert opened.meant() == meant and opened.stored_identity().name == str(tiny_model_dir)
    found = _invoke("search", "a red circle", "--index", index, "-k", 2, "-f", "paths")
    assert found.exit_code == 0 and found.output.count("\n") == 2, found.output


def _settings(index, model):
    return Settings.resolve(model=str(model), index=str(index), device="cpu")
