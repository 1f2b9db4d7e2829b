"""Hard negatives (issue #17): an optional `negative` column in every file layout, checked
like the other columns (all rows or none), and used by the loss as one more candidate
caption in its image's image->text softmax."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.finetune.loading import load_clip
from clipsearch.finetune.synthetic import write_dataset
from clipsearch.finetune.training import TrainSettings, train
from clipsearch.finetune.validation import Pair, load_pairs
from clipsearch.progress import Progress

from support import draw_image

ROWS = [("red.png", "a red circle", "a blue square"), ("blue.png", "a blue square", "a red circle"),
        ("green.png", "a green triangle", "a green circle")]


@pytest.fixture
def folder(tmp_path):
    for name, colour, shape in (("red", "red", "circle"), ("blue", "blue", "square"), ("green", "green", "triangle")):
        draw_image(tmp_path / f"{name}.png", colour, shape)
    return tmp_path


def write(folder, fmt, rows):
    if fmt == "jsonl":
        lines = [json.dumps({"image_path": i, "text_description": t, **({"negative": n} if n is not None else {})})
                 for i, t, n in rows]
        path = folder / "pairs.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path
    sep = {"csv": ",", "tsv": "\t", "pipe": " | "}[fmt]
    outer = "|" if fmt == "pipe" else ""  # outer pipes: an empty last cell is a cell, not a trailing pipe
    path = folder / f"pairs.{'md' if fmt == 'pipe' else fmt}"
    path.write_text("".join(outer + sep.join(cells) + outer + "\n"
                            for cells in [("image_path", "text_description", "negative"),
                                          *((i, t, n or "") for i, t, n in rows)]))
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "pipe", "jsonl"])
def test_every_file_layout_reads_the_negative_column(folder, fmt):
    pairs = load_pairs(write(folder, fmt, ROWS))
    assert pairs.format == fmt
    assert [(p.image, p.text, p.negative) for p in pairs.pairs] == [(str(folder / i), t, n) for i, t, n in ROWS]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "pipe", "jsonl"])
def test_negatives_are_all_rows_or_none(folder, fmt):
    rows = [ROWS[0], (ROWS[1][0], ROWS[1][1], None), ROWS[2]]
    line = 3 if fmt != "jsonl" else 2
    with pytest.raises(ClipsearchError, match=rf"1 bad row in .*:{line}: empty negative \(where the data has a "
                                              r"negative column, every row needs one\)"):
        load_pairs(write(folder, fmt, rows))
    kept = load_pairs(write(folder, fmt, rows), skip_bad=True)
    assert len(kept.pairs) == 2 and all(p.negative for p in kept.pairs)


def test_a_file_without_the_column_has_no_negatives(folder):
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"image_path": i, "text_description": t}) + "\n" for i, t, _ in ROWS))
    assert all(p.negative is None for p in load_pairs(path).pairs)


def test_a_negative_that_describes_its_own_image_is_a_bad_row(folder):
    rows = [*ROWS, ("red.png", "something round and red", "a  red circle")]
    with pytest.raises(ClipsearchError, match=r"pairs.csv:5: the negative is a caption of this image \(at "
                                              r".*pairs.csv:2\)"):
        load_pairs(write(folder, "csv", rows))
    bad_json = folder / "bad.jsonl"
    bad_json.write_text(json.dumps({"image_path": "red.png", "text_description": "red", "negative": 3}) + "\n")
    with pytest.raises(ClipsearchError, match=r"bad.jsonl:1: negative must be a string"):
        load_pairs(bad_json)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """12 pairs, each with another pair's caption as its negative: the hard case, since the
    negative is also a positive elsewhere in the batch."""
    train_csv, _ = write_dataset(tmp_path_factory.mktemp("shapes"), per_train=1, per_heldout=1)
    plain = load_pairs(train_csv).pairs[:12]
    return plain, [Pair(p.image, p.text, p.where, plain[(i + 5) % 12].text) for i, p in enumerate(plain)]


def one_step(model_dir, pairs, checkpoints, mini_batch_size=None):
    """One SGD step over one batch of all the pairs: its loss and the weights after it."""
    encoder = load_clip(str(model_dir), "cpu")
    settings = TrainSettings(epochs=1, batch_size=len(pairs), lr=0.5, warmup=0, weight_decay=0.0, device="cpu",
                             mini_batch_size=mini_batch_size, extra={"optim": "sgd"})
    facts = train(encoder.st, encoder.clip, pairs, settings, str(checkpoints), False, Progress(quiet=True))
    assert facts["steps"] == 1  # all 12 in one batch: the sampler does not hold a negative against a caption
    return facts, {name: p.detach().clone() for name, p in encoder.clip.named_parameters()}


def test_negatives_raise_the_loss_of_the_same_batch(tmp_path, tiny_model_dir, pairs):
    plain, with_negatives = pairs
    without, _ = one_step(tiny_model_dir, plain, tmp_path / "plain")
    harder, _ = one_step(tiny_model_dir, with_negatives, tmp_path / "negatives")
    assert harder["negatives"] and not without["negatives"]
    # One more candidate in each image->text softmax: a strictly larger denominator.
    assert harder["train_loss"] > without["train_loss"] + 1e-4


def test_cached_and_plain_losses_agree_with_negatives(tmp_path, tiny_model_dir, pairs):
    _, with_negatives = pairs
    plain, plain_weights = one_step(tiny_model_dir, with_negatives, tmp_path / "plain")
    cached, cached_weights = one_step(tiny_model_dir, with_negatives, tmp_path / "cached", mini_batch_size=5)
    assert cached["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
    for name in plain_weights:
        assert torch.allclose(cached_weights[name], plain_weights[name], atol=1e-6, rtol=1e-5), name


def test_finetune_cli_trains_on_a_csv_with_negatives(tmp_path, tiny_model_dir):
    train_csv, held = write_dataset(tmp_path / "shapes", per_train=1, per_heldout=1)
    with open(train_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    with_negatives = tmp_path / "shapes" / "negatives.csv"
    with open(with_negatives, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*rows[0], "negative"])
        writer.writerows([*row, rows[1 + (i + 3) % (len(rows) - 1)][1]] for i, row in enumerate(rows[1:]))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["finetune", str(with_negatives), "--eval-data", str(held), "--base",
                                      str(tiny_model_dir), "-o", str(out), "--epochs", "1", "--batch-size", "16",
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["train"]["negatives"] and record["after"] is not None
    assert "Hard negatives" in (out / "README.md").read_text()
