"""What a stopped fine-tune says matches what it left: an --overwrite run is resumed by
--resume in its place (the two contradict each other), and a run stopped after its
model was saved, during the evaluation after training, says the model is whole, which
it is, and --resume writes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.encoders.torch_clip import Encoder
from clipsearch.finetune.synthetic import write_dataset

from support import stop_training_at_step


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


def finetune(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, ["finetune", *map(str, args), "--device", "cpu", "--quiet"])


def test_a_stopped_overwrite_says_to_resume_without_overwrite_and_that_works(tmp_path, shapes, tiny_model_dir,
                                                                           monkeypatch):

    out = tmp_path / "mine"
    args = [shapes[0], "--base", tiny_model_dir, "-o", out, "--epochs", 2, "--batch-size", 16, "--save-steps", 2]
    assert finetune(*args).exit_code == 0
    stop_training_at_step(monkeypatch, 3)
    result = finetune(*args, "--overwrite")
    assert result.exit_code == 130
    assert "run it again with --resume instead of --overwrite to continue from it" in result.stderr, result.output
    monkeypatch.undo()
    result = finetune(*args, "--resume")  # what the line says
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["train"]["resumed_from"] == "checkpoint-2"
    assert not (tmp_path / ".mine.replaced").exists()


def test_a_run_stopped_in_the_evaluation_after_training_has_a_whole_model_and_says_so(
        tmp_path, shapes, tiny_model_dir, monkeypatch):
    from clipsearch.finetune import pipeline

    out = tmp_path / "out"
    args = [shapes[0], "--base", tiny_model_dir, "-o", out, "--eval-data", shapes[1], "--epochs", 1,
            "--batch-size", 16, "--lr", "1e-3"]
    evaluate = pipeline.evaluate

    def stopped_after_training(*a, **k):
        if (out / "model.safetensors").exists():  # the model is saved: the evaluation after training
            raise KeyboardInterrupt
        return evaluate(*a, **k)

    monkeypatch.setattr(pipeline, "evaluate", stopped_after_training)
    result = finetune(*args)
    assert result.exit_code == 130
    assert f"{out} holds the whole trained model" in result.stderr and "--resume" in result.stderr, result.output
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "saved"
    assert not (out / "eval.json").exists()
    assert Encoder(str(out), "cpu").dim == 16  # what the run file says: a model that loads
    saved = (out / "model.safetensors").read_bytes()
    monkeypatch.undo()

    result = finetune(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "done"
    record = json.loads((out / "eval.json").read_text())
    assert record["after"]["recall@1"] >= 0 and record["train"]["steps"] == 5
    assert (out / "model.safetensors").read_bytes() == saved  # evaluated, not trained again
    assert not (out / "checkpoints").exists()
