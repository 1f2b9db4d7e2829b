"""A fine-tune whose loss or weights stop being finite numbers (a learning rate far too
high) stops at once in one line naming the flags, and saves no NaN model or checkpoint
over anything; option values that are not finite numbers are usage errors; eval never
scores NaN vectors as hits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from clipsearch.cli import cli
from clipsearch.finetune.evaluation import ranks_of_first_relevant
from clipsearch.finetune.synthetic import write_dataset

from support import nan_copy


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


def finetune(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, ["finetune", *map(str, args), "--device", "cpu", "--quiet"])


def _all_finite(folder: Path) -> bool:
    return all(np.isfinite(t).all() for file in folder.rglob("*.safetensors") for t in load_file(str(file)).values())


@pytest.mark.parametrize("flag, value", [("--epochs", "nan"), ("--epochs", "inf"), ("--warmup", "nan"),
                                         ("--lr", "nan"), ("--lr", "inf"), ("--scale", "nan"), ("--scale", "inf"),
                                         ("--weight-decay", "nan"), ("--weight-decay", "inf"),
                                         ("--eval-split", "nan")])
def test_values_that_are_not_finite_numbers_are_usage_errors(tmp_path, shapes, tiny_model_dir, flag, value):
    result = finetune(shapes[0], "--base", tiny_model_dir, "-o", tmp_path / "out", flag, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}': '{value}' is not a finite number" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_a_learning_rate_far_too_high_stops_the_run_and_keeps_the_last_finite_checkpoint(
        tmp_path, shapes, tiny_model_dir):
    out = tmp_path / "out"
    result = finetune(shapes[0], "--base", tiny_model_dir, "-o", out, "--epochs", 2, "--batch-size", 8,
                      "--lr", 1000, "--save-steps", 2)
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "training diverged at step" in line and "the loss is nan" in line and "--lr 1000" in line
    assert "no model was saved" in line
    kept = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert kept and f"its last good checkpoint, {kept[-1]}, is kept" in line
    # not advice that deletes it: --overwrite of the output removes its checkpoints
    assert f"copy it out of {out} and give the copy to --base" in line and "--overwrite replaces" not in line
    assert all(_all_finite(folder) for folder in kept)
    assert not (out / "model.safetensors").exists() and not (out / "eval.json").exists()
    # what is there is the unfinished run, refused where a model is asked for
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "training"


def test_weights_the_last_step_makes_nan_are_never_saved(tmp_path, shapes, tiny_model_dir):
    """One step whose loss is finite, whose update makes every weight NaN: the checkpoint
    and the model it would have saved are refused, and --overwrite's old model stays."""
    out = tmp_path / "mine"
    common = [shapes[0], "--base", tiny_model_dir, "-o", out, "--batch-size", 16]
    assert finetune(*common, "--epochs", 1).exit_code == 0
    before = (out / "model.safetensors").read_bytes()

    result = finetune(*common, "--epochs", "0.2", "--lr", "1e30", "--warmup", 0, "--overwrite")
    assert result.exit_code == 1, result.output
    assert "training diverged at step 1: " in result.output and "no model was saved" in result.output
    assert f"{out} holds the model it had before" in result.output
    assert (out / "model.safetensors").read_bytes() == before and not (tmp_path / ".mine.replaced").exists()


def test_nan_scores_rank_last():
    scores = np.array([[np.nan, 0.1, 0.2], [0.9, np.nan, 0.1]])
    relevant = np.array([[True, False, False], [True, False, False]])
    assert ranks_of_first_relevant(scores, relevant).tolist() == [3.0, 1.0]


def test_eval_refuses_a_model_of_nan_weights(tmp_path, shapes, tiny_model_dir):
    broken = nan_copy(tiny_model_dir, tmp_path / "nan-clip")
    result = CliRunner().invoke(cli, ["eval", str(shapes[1]), "--model", str(broken), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().count("\n") == 0 and "recall@1" not in result.output
    assert f"model {broken} gives vectors that are not finite numbers" in result.output
