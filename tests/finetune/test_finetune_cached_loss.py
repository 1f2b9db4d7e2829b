"""Large contrastive batches in small memory (issue #17): `--mini-batch-size` trains with
sentence-transformers' cached (GradCache) form of the same symmetric loss. On one batch,
the cached and the plain loss give the same loss value and the same updated weights."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.finetune.loading import load_clip
from clipsearch.finetune.synthetic import write_dataset
from clipsearch.finetune.training import TrainSettings, train
from clipsearch.finetune.validation import load_pairs
from clipsearch.progress import Progress


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    train_csv, _ = write_dataset(tmp_path_factory.mktemp("shapes"), per_train=1, per_heldout=1)
    return load_pairs(train_csv).pairs[:12]


def one_step(model_dir, pairs, checkpoints, mini_batch_size):
    """One optimizer step over one batch of all 12 pairs; the loss and the weights after it.
    Plain SGD, whose step is the gradient itself: Adam would blow up gradients that are
    float noise (a key projection's bias has a gradient of exactly zero in theory) into
    full-size steps, and compare noise."""
    encoder = load_clip(str(model_dir), "cpu")
    settings = TrainSettings(epochs=1, batch_size=len(pairs), lr=0.5, warmup=0, weight_decay=0.0, device="cpu",
                             mini_batch_size=mini_batch_size, extra={"optim": "sgd"})
    facts = train(encoder.st, encoder.clip, pairs, settings, str(checkpoints), False, Progress(quiet=True))
    assert facts["steps"] == 1
    return facts["train_loss"], {name: p.detach().clone() for name, p in encoder.clip.named_parameters()}


@pytest.mark.parametrize("mini_batch_size", [1, 5], ids=["mini-1", "mini-5"])
def test_cached_and_plain_losses_agree_on_loss_and_update(tmp_path, tiny_model_dir, pairs, mini_batch_size):
    base = {name: p.detach().clone() for name, p in load_clip(str(tiny_model_dir), "cpu").clip.named_parameters()}
    plain_loss, plain = one_step(tiny_model_dir, pairs, tmp_path / "plain", None)
    cached_loss, cached = one_step(tiny_model_dir, pairs, tmp_path / "cached", mini_batch_size)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    moved = [name for name in plain if not torch.equal(plain[name], base[name])]
    assert len(moved) > len(plain) // 2  # the step changed most weights, in both towers
    assert any(name.startswith("vision_model") for name in moved) and any(name.startswith("text_model")
                                                                          for name in moved)
    for name in plain:
        assert torch.allclose(cached[name], plain[name], atol=1e-6, rtol=1e-5), name


def test_the_flag_trains_and_is_recorded(tmp_path, tiny_model_dir):
    train_csv, held = write_dataset(tmp_path / "shapes", per_train=1, per_heldout=1)
    result = CliRunner().invoke(cli, ["finetune", str(train_csv), "--eval-data", str(held), "--base",
                                      str(tiny_model_dir), "-o", str(tmp_path / "out"), "--epochs", "1",
                                      "--batch-size", "16", "--mini-batch-size", "4", "--device", "cpu", "--quiet",
                                      "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["train"]["steps"] == 3 and record["after"] is not None
    card = (tmp_path / "out" / "README.md").read_text()  # says which loss ran, and in what pieces
    assert "`CachedMultipleNegativesRankingLoss(" in card and "batch size 16 (mini-batches of 4)" in card
    bad = CliRunner().invoke(cli, ["finetune", str(train_csv), "-o", str(tmp_path / "x"), "--mini-batch-size", "0"])
    assert bad.exit_code == 2 and "--mini-batch-size" in bad.output
