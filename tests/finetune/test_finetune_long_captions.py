"""Captions longer than the model reads: `eval` and `finetune` count those cut and
those that become the same caption once cut, say it in one line, and record it; and
transformers' misleading "Token indices sequence length ..." warning is silenced."""

from __future__ import annotations

import json
import logging
import os

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.finetune.captions import tokenizer_of
from clipsearch.finetune.loading import load_clip

DEVICE = os.environ.get("CLIPSEARCH_TEST_DEVICE", "cpu")
BOILERPLATE = "accession record of the municipal museum - object description follows - "


@pytest.fixture(scope="module")
def tiny(tiny_st_model_dir):
    """The tiny model as finetune and eval load it, and the number of tokens it reads
    (its text tower's positions, whatever they are)."""
    encoder = load_clip(str(tiny_st_model_dir), "cpu")
    return encoder, encoder.clip.config.text_config.max_position_embeddings


def _prefix(tiny) -> str:
    """Boilerplate longer than the model reads on its own."""
    encoder, limit = tiny
    tokenizer = tokenizer_of(encoder.st)
    prefix = BOILERPLATE
    while len(tokenizer(prefix, verbose=False)["input_ids"]) <= limit:
        prefix += BOILERPLATE
    return prefix


def _csv(path, rows) -> str:
    path.write_text("image_path,text_description\n" + "".join(f"{image},{text}\n" for image, text in rows))
    return str(path)


def test_eval_counts_the_captions_cut_and_those_that_become_the_same(tmp_path, tiny, tiny_st_model_dir, images):
    _, limit = tiny
    prefix = _prefix(tiny)
    rows = ([(p, f"{prefix}a {p.stem}") for p in images[:8]]  # differ only after the cut
            + [(p, f"a {p.stem} {prefix}") for p in images[8:10]]  # cut, but differ before it
            + [(p, f"a {p.stem}") for p in images[10:]])  # short
    data = _csv(tmp_path / "pairs.csv", rows)
    result = CliRunner().invoke(cli, ["eval", data, "-m", str(tiny_st_model_dir), "--device", DEVICE, "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["queries"] == 12 and metrics["captions_cut"] == 10 and metrics["captions_same_once_cut"] == 8
    lines = result.stderr.splitlines()
    assert (f"10 of 12 captions are longer than the {limit} tokens the model reads and are cut to their first "
            f"{limit}; 8 of them become the same caption once cut (they differ only after the cut: put what "
            "tells them apart first)") in lines
    assert "Token indices sequence length" not in result.output

    short = _csv(tmp_path / "short.csv", [(p, f"a {p.stem}") for p in images])
    result = CliRunner().invoke(cli, ["eval", short, "-m", str(tiny_st_model_dir), "--device", DEVICE, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["captions_cut"] == 0 and "longer than" not in result.stderr


def test_finetune_counts_cut_captions_of_the_training_and_held_out_pairs(tmp_path, tiny, tiny_st_model_dir,
                                                                         images):
    _, limit = tiny
    prefix = _prefix(tiny)
    data = _csv(tmp_path / "pairs.csv", [(p, f"{prefix}a {p.stem}") for p in images])
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["finetune", data, "--base", str(tiny_st_model_dir), "-o", str(out),
                                      "--epochs", "1", "--batch-size", "4", "--eval-split", "0.25",
                                      "--device", DEVICE, "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    cut = f"the {limit} tokens the model reads and are cut to their first {limit}"
    assert f"training pairs: 9 of 9 captions are longer than {cut}; 9 of them become the same caption once cut " \
           "(they differ only after the cut: put what tells them apart first)" in lines
    assert f"held-out pairs: 3 of 3 captions are longer than {cut}; 3 of them become the same caption once cut " \
           "(they differ only after the cut: put what tells them apart first)" in lines
    assert "Token indices sequence length" not in result.output
    record = json.loads((out / "eval.json").read_text())
    assert record["held_out"]["captions_cut"] == 3 and record["held_out"]["captions_same_once_cut"] == 3
    assert record["training_captions"] == {"captions": 9, "captions_cut": 9, "captions_same_once_cut": 9}


def test_transformers_warning_of_indexing_errors_is_silenced(tiny_st_model_dir):
    """The model's input is truncated, so transformers' "... will result in indexing
    errors" is wrong; the tokenizer of a model finetune or eval loads stays quiet about it."""
    from transformers.utils import logging as hf_logging

    class Kept(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    encoder = load_clip(str(tiny_st_model_dir), "cpu")
    kept, logger, verbosity = Kept(), logging.getLogger("transformers"), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logger.addHandler(kept)
    try:
        tokenizer_of(encoder.st)(BOILERPLATE * 20)
        encoder.st.encode([BOILERPLATE * 20], show_progress_bar=False)
        tokenizer_of(encoder.st)("a short caption")
        logger.warning("still heard")  # the other warnings are not silenced
    finally:
        logger.removeHandler(kept)
        hf_logging.set_verbosity(verbosity)
    assert kept.messages == ["still heard"]
