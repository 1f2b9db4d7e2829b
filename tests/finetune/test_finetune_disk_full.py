"""A disk that fills while `clipsearch finetune` saves a checkpoint or the final model:
one line naming what could not be written and why, the last whole checkpoint kept
(never the output folder removed once one exists), no half-written checkpoint left for
--resume to take, and --resume finishing the run once there is room.

The disk is a real size-limited tmpfs (root only), filled up at the moment chosen:
right after the first checkpoint, or right after training, before the final save.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.encoders.torch_clip import Encoder
from clipsearch.finetune import pipeline, training
from clipsearch.finetune.synthetic import write_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """72 training pairs (9 steps an epoch at --batch-size 8), 18 held out."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


class Disk:
    """A tmpfs that `fill` leaves `leave` bytes of, and `free` empties of the filler."""

    def __init__(self, path: Path):
        self.path, self.filler = path, path / "filler"

    def fill(self, leave: int = 16 << 10) -> None:
        stats = os.statvfs(self.path)
        with open(self.filler, "ab") as out:
            out.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield Disk(path)
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _finetune(shapes, model: Path, out: Path, *more: str):
    train, heldout = shapes
    return CliRunner().invoke(cli, ["finetune", str(train), "--eval-data", str(heldout), "--base", str(model),
                                    "-o", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                                    "--device", "cpu", "--quiet", *more])


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_a_disk_full_at_a_later_checkpoint_keeps_the_last_whole_one_and_resume_finishes(
        disk, shapes, tiny_model_dir, monkeypatch):
    out = disk.path / "out"
    saved = training._ProgressCallback.on_save

    def fill_after_the_first(self, args, state, control, **kwargs):
        saved(self, args, state, control, **kwargs)
        if not disk.filler.exists():
            disk.fill()

    monkeypatch.setattr(training._ProgressCallback, "on_save", fill_after_the_first)
    line = _error_line(_finetune(shapes, tiny_model_dir, out))
    assert "no space left on device" in line and str(out / "checkpoints" / "checkpoint-18") in line
    assert f"{out / 'checkpoints' / 'checkpoint-9'}, is kept" in line and "--resume" in line
    # the whole checkpoint stays; the half-written one is gone, so --resume cannot take it
    assert _checkpoints(out) == ["checkpoint-9"]
    assert training.last_checkpoint(str(out / "checkpoints")) == str(out / "checkpoints" / "checkpoint-9")

    monkeypatch.undo()
    disk.free()
    result = _finetune(shapes, tiny_model_dir, out, "--resume")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "eval.json").read_text())
    assert record["train"]["resumed_from"] == "checkpoint-9" and record["train"]["steps"] == 18


def test_a_disk_full_at_the_final_save_keeps_the_output_and_resume_saves_it(disk, shapes, tiny_model_dir,
                                                                            monkeypatch):
    out = disk.path / "out"
    trained = pipeline.train

    def train_then_fill(*args, **kwargs):
        facts = trained(*args, **kwargs)
        disk.fill()
        return facts

    monkeypatch.setattr(pipeline, "train", train_then_fill)
    line = _error_line(_finetune(shapes, tiny_model_dir, out))
    assert "no space left on device" in line and f"while writing {out}" in line
    assert f"{out / 'checkpoints' / 'checkpoint-18'}, is kept" in line and "--resume" in line
    assert (out / "checkpoints" / "checkpoint-18" / "trainer_state.json").is_file()

    monkeypatch.undo()
    disk.free()
    result = _finetune(shapes, tiny_model_dir, out, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune_run.json").read_text())["status"] == "done"
    assert Encoder(str(out), "cpu").dim == 16


def test_a_disk_full_at_the_first_checkpoint_says_so_and_leaves_nothing(disk, shapes, tiny_model_dir):
    out = disk.path / "out"
    disk.fill(leave=64 << 10)  # the run file fits; a checkpoint does not
    line = _error_line(_finetune(shapes, tiny_model_dir, out))
    assert "no space left on device" in line and "checkpoint-9" in line and "nothing to resume from" in line
    assert not out.exists()  # nothing whole to resume from: the folder this run made is removed


def test_a_checkpoint_cut_short_in_its_trainer_state_is_not_resumed_from(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, state in ((4, '{"global_step": 4}'), (8, '{"global_st')):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert training.last_checkpoint(str(checkpoints)) == str(checkpoints / "checkpoint-4")
