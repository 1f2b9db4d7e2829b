"""The loop a user runs after fine-tuning, end to end, with a kill -9 in the middle:
fine-tune the tiny CLIP on the photos' captions (its image tower changes), ingest the
photos with the base model, `clipsearch reindex --model FINETUNED`, killed while it
embeds; the old collection answers searches all along (during the run, after the
kill); the same command resumes without embedding again what it had committed,
switches, and the name then answers the fine-tuned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli as clipsearch_cli
from clipsearch.finetune.synthetic import write_dataset

from faults.conftest import ChildRun, Cli, export_text_tower, read_index, tiny_pngs

BATCH = 4
EXTRA = 600  # more photos than the fine-tune's, so that the kill lands mid-run


@pytest.fixture(scope="module")
def loop(tmp_path_factory, tiny_model_dir, encoder):
    folder = tmp_path_factory.mktemp("reindex-loop")
    train, heldout = write_dataset(folder / "data", per_train=1, per_heldout=1)
    result = CliRunner().invoke(clipsearch_cli, [
        "finetune", str(train), "--base", str(tiny_model_dir), "-o", str(folder / "tuned"), "--epochs", "1",
        "--batch-size", "16", "--lr", "1e-3", "--eval-data", str(heldout), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "image tower changed" in result.output
    tiny_pngs(folder / "data" / "images" / "more", EXTRA)
    cache = folder / "cache"
    export_text_tower(cache, tiny_model_dir, encoder)
    return folder / "data" / "images", folder / "tuned", Cli(tiny_model_dir, cache,
                                                            {"CLIPSEARCH_PROGRESS_SECONDS": "0.02"})


class Reindex(ChildRun):
    def __init__(self, cli: Cli, index: Path, model: Path):
        super().__init__(cli, ["reindex", "--index", str(index), "--model", str(model), "--workers", "0",
                               "--batch-size", str(BATCH), "--json"])


def _status(cli: Cli, index: Path) -> dict:
    result = cli.status(index, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _search(cli: Cli, index: Path, model: Path) -> list[str]:
    result = cli.run("search", "a red circle", "--index", str(index), "--model", str(model), "-k", "5", "-f", "paths")
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow
def test_finetune_reindex_killed_then_resumed_then_search(loop, tmp_path, tiny_model_dir):
    photos, tuned, cli = loop
    index = tmp_path / "index"
    assert cli.ingest(photos, index, "-q").returncode == 0
    before = _status(cli, index)
    total = before["points"]
    assert total > EXTRA and before["means"] is None

    run = Reindex(cli, index, tuned)
    run.wait_for_embedded(40)
    during = read_index(index)  # the old collection answers while the reindex runs (opened here: quick)
    committed = run.kill()
    assert during.count == total and during.hits == 5 and committed >= 40

    after_kill = _status(cli, index)  # not switched: the name still means the old collection, whole
    assert after_kill["means"] is None and after_kill["points"] == total
    assert after_kill["model"]["name"] == str(tiny_model_dir)
    assert len(_search(cli, index, tiny_model_dir)) == 5

    done = cli.run("reindex", "--index", str(index), "--model", str(tuned), "--workers", "0", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["switched"] and summary["total"] == total and summary["skipped"] == 0
    assert summary["resumed"] >= committed and summary["resumed"] + summary["embedded"] == total
    assert summary["kept"] and summary["kept"] != summary["new"]

    switched = _status(cli, index)
    assert switched["means"] == summary["new"] and switched["points"] == total
    assert switched["model"]["name"] == str(tuned)
    hits = _search(cli, index, tuned)
    assert len(hits) == 5 and all(Path(h).is_file() for h in hits)
    refused = cli.run("search", "a red circle", "--index", str(index), "--model", str(tiny_model_dir))
    assert refused.returncode != 0 and "model mismatch" in refused.stderr
