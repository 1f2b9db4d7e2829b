"""What `clipsearch finetune` makes of --output: a name it cannot save under is refused
before any work, the model files it saves are as readable as the umask says, and a stop
before the first checkpoint does not contradict the CLI's closing line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.finetune.synthetic import write_dataset

from support import stop_training_at_step


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """72 training pairs (9 steps an epoch at --batch-size 8), 18 held out."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


def _finetune(shapes, model: Path, out: Path | str, *more: str):
    train, heldout = shapes
    return CliRunner().invoke(cli, ["finetune", str(train), "--eval-data", str(heldout), "--base", str(model),
                                    "-o", str(out), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                                    "--quiet", *more])


def test_an_output_name_that_is_not_utf8_is_refused_before_any_work(tmp_path, shapes, tiny_model_dir,
                                                                     monkeypatch):
    def not_reached(*args, **kwargs):
        raise AssertionError("the data was read: --output should have been refused first")

    monkeypatch.setattr("clipsearch.finetune.pipeline.load_pairs", not_reached)
    out = tmp_path / os.fsdecode(b"m\xe9lange-model")
    result = _finetune(shapes, tiny_model_dir, out)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --output ") and "not UTF-8" in lines[0], result.output
    assert "m\\xe9lange-model" in lines[0] and not out.exists()


def test_the_saved_model_files_follow_the_umask(tmp_path, shapes, tiny_model_dir):
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        result = _finetune(shapes, tiny_model_dir, out, "--keep-checkpoints")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    weights = sorted(out.rglob("*.safetensors"))
    assert out / "model.safetensors" in weights and any("checkpoint-" in str(w) for w in weights)
    for file in weights:  # readable by a serve or Docker process running as another user
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file


def test_a_stop_before_the_first_checkpoint_says_nothing_was_committed(tmp_path, shapes, tiny_model_dir,
                                                                       monkeypatch):
    stop_training_at_step(monkeypatch, 1)
    out = tmp_path / "out"
    result = _finetune(shapes, tiny_model_dir, out)
    assert result.exit_code == 130 and not out.exists()
    # nothing was committed: the CLI's last line does not say that something was kept
    stopped = next(line for line in result.output.splitlines() if line.startswith("fine-tune stopped"))
    assert "nothing was committed" in stopped and f"{out}, which this run made, is removed" in stopped
    assert result.output.splitlines()[-1] == "Interrupted."
