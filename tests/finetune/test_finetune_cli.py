"""`clipsearch finetune` end to end on the tiny random CLIP: the output folder, the
model identity (--freeze vision keeps an index valid), refusals, --resume, bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from clipsearch.cli import cli
from clipsearch.encoders.torch_clip import IMAGE_PREFIXES, TEXT_PREFIXES, Encoder
from clipsearch.finetune.synthetic import write_dataset

from support import cli_in_a_fresh_process, stop_training_at_step


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """72 training pairs, 18 held-out pairs (small 32x32 drawings)."""
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


# Where the fine-tunes run: CPU here; CLIPSEARCH_TEST_DEVICE=cuda checks the same on a GPU.
DEVICE = os.environ.get("CLIPSEARCH_TEST_DEVICE", "cpu")


def finetune(*args: str) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, ["finetune", *map(str, args), "--device", DEVICE, "--quiet"])


def _tensors(folder: Path, prefixes) -> dict:
    file = next(folder.rglob("model.safetensors"))
    return {k: v for k, v in load_file(str(file)).items() if k.startswith(prefixes)}


def test_finetune_writes_a_model_folder_that_clipsearch_loads(tmp_path, shapes, tiny_st_model_dir):
    train, heldout = shapes
    out = tmp_path / "model"
    result = finetune(train, "--base", tiny_st_model_dir, "-o", out, "--epochs", 1, "--batch-size", 16,
                      "--lr", "1e-3", "--eval-split", "0.25")
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.output and "before" in result.output and "after" in result.output
    assert "image tower changed" in result.output
    for name in ("model.safetensors", "modules.json", "config.json", "eval.json", "README.md", "finetune_run.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists() and not (out / "skipped_rows.jsonl").exists()

    record = json.loads((out / "eval.json").read_text())
    assert record["held_out"]["images"] == 18  # a quarter of the 72 training images, split by image
    for state in ("before", "after"):
        assert set(record[state]) >= {"recall@1", "recall@5", "recall@10", "mrr", "chance_recall@1"}
    assert record["train"]["steps"] == 4 and record["train"]["scale"] == pytest.approx(1 / 0.07, rel=1e-3)
    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "| recall@1 |" in card and "symmetric" in card

    trained, base = Encoder(str(out), "cpu"), Encoder(str(tiny_st_model_dir), "cpu")
    assert trained.dim == base.dim
    assert trained.identity.image_fingerprint != base.identity.image_fingerprint
    assert not trained.identity.is_compatible_with(base.identity)
    assert record["identity"]["image_fingerprint"] == trained.identity.image_fingerprint
    vectors = trained.encode_texts(["a red circle on the left", "a blue square in the middle"])
    assert abs(float(vectors[0] @ vectors[1])) < 0.9999


@pytest.fixture(scope="module")
def frozen_and_unfrozen(tmp_path_factory, shapes, tiny_model_dir) -> tuple[Path, Path]:
    train, heldout = shapes
    folder = tmp_path_factory.mktemp("freeze")
    common = ["--base", tiny_model_dir, "--eval-data", heldout, "--epochs", 1, "--batch-size", 16, "--lr", "1e-3"]
    result = finetune(train, "-o", folder / "frozen", "--freeze", "vision", *common)
    assert result.exit_code == 0, result.output
    assert "image tower unchanged" in result.output
    assert finetune(train, "-o", folder / "unfrozen", *common).exit_code == 0
    return folder / "frozen", folder / "unfrozen"


def test_freeze_vision_keeps_the_image_tower_bit_identical(frozen_and_unfrozen, tiny_model_dir):
    frozen, unfrozen = frozen_and_unfrozen
    base_vision = _tensors(tiny_model_dir, IMAGE_PREFIXES)
    frozen_vision = _tensors(frozen, IMAGE_PREFIXES)
    assert base_vision.keys() == frozen_vision.keys() and len(base_vision) > 10
    assert all(base_vision[k].tobytes() == frozen_vision[k].tobytes() for k in base_vision)
    assert any(_tensors(tiny_model_dir, TEXT_PREFIXES)[k].tobytes() != v.tobytes()
               for k, v in _tensors(frozen, TEXT_PREFIXES).items())

    base = Encoder(str(tiny_model_dir), "cpu").identity
    assert Encoder(str(frozen), "cpu").identity.is_compatible_with(base)
    assert Encoder(str(frozen), "cpu").identity.text_fingerprint != base.text_fingerprint
    assert not Encoder(str(unfrozen), "cpu").identity.is_compatible_with(base)
    assert json.loads((frozen / "eval.json").read_text())["image_tower_unchanged"] is True
    assert json.loads((unfrozen / "eval.json").read_text())["image_tower_unchanged"] is False


def test_an_index_built_with_the_base_answers_the_text_only_finetune(tmp_path, shapes, frozen_and_unfrozen,
                                                                     tiny_model_dir):
    frozen, unfrozen = frozen_and_unfrozen
    photos = Path(shapes[0]).parent / "images"
    index = ["--index", str(tmp_path / "index"), "--device", "cpu"]
    runner = CliRunner()
    ingested = runner.invoke(cli, ["ingest", str(photos), "--model", str(tiny_model_dir), "--workers", "0", *index])
    assert ingested.exit_code == 0, ingested.output
    found = runner.invoke(cli, ["search", "a red circle on the left", "--model", str(frozen), "-k", "3",
                                "-f", "paths", *index])
    assert found.exit_code == 0, found.output
    assert len(found.stdout.splitlines()) == 3
    refused = runner.invoke(cli, ["search", "a red circle", "--model", str(unfrozen), *index])
    assert refused.exit_code == 1 and "mismatch" in refused.output


def test_existing_output_is_refused_unless_overwrite(tmp_path, shapes, tiny_model_dir):
    train, _ = shapes
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    args = [train, "--base", tiny_model_dir, "-o", out, "--epochs", 1, "--batch-size", 16]
    result = finetune(*args)
    assert result.exit_code == 1 and "already exists" in result.output and "--overwrite" in result.output
    result = finetune(*args, "--overwrite")  # not a model folder: never deleted
    assert result.exit_code == 1 and "refusing to delete" in result.output
    assert (out / "precious.txt").read_text() == "mine"

    (out / "precious.txt").unlink()
    assert finetune(*args).exit_code == 0  # an empty folder is fine
    assert finetune(*args).exit_code == 1
    result = finetune(*args, "--overwrite", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "finetune_run.json").read_text())["settings"]["seed"] == 1
    result = finetune(*args, "--resume")
    assert result.exit_code == 1 and "already finished" in result.output
    result = finetune(*args)  # a finished run: --resume is no way out, and is not offered
    assert result.exit_code == 1 and "--overwrite" in result.output and "--resume" not in result.output


def test_output_inside_a_data_folder_and_a_transformers_model_folder(tmp_path, tiny_model_dir):
    """A model written inside a folder DATA would be read as data by the next run; a
    model folder in the plain transformers layout (config.json) is one --overwrite may
    replace (set aside, not deleted)."""
    from support import draw_collection

    data = tmp_path / "captioned"
    for path in draw_collection(data, 6):
        path.with_suffix(".txt").write_text(f"a {path.stem.split('-', 1)[1].replace('-', ' ')}")
    result = finetune(data, "--base", tiny_model_dir, "-o", data / "model")
    assert result.exit_code == 1 and f"is inside DATA {data}" in result.output, result.output
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text('{"model_type": "clip"}')
    result = finetune(data, "--base", tiny_model_dir, "-o", plain, "--eval-split", "0", "--epochs", 1,
                      "--batch-size", 4)
    assert result.exit_code == 1 and "--overwrite" in result.output
    result = finetune(data, "--base", tiny_model_dir, "-o", plain, "--eval-split", "0", "--epochs", 1,
                      "--batch-size", 4, "--overwrite")
    assert result.exit_code == 0, result.output
    assert (plain / "modules.json").is_file() and not (tmp_path / ".plain.replaced").exists()


def test_overwrite_never_deletes_what_is_not_the_models(tmp_path, shapes, tiny_model_dir):
    """A project folder that merely has a config.json (a website's) is not a model
    folder; a model folder the user keeps scans and notes in is refused, naming them."""
    train, _ = shapes
    project = tmp_path / "project"
    (project / "scans").mkdir(parents=True)
    (project / "scans" / "001.jpg").write_bytes(b"a scan")
    (project / "config.json").write_text('{"site": "museum website"}')
    args = [train, "--base", tiny_model_dir, "--epochs", 1, "--batch-size", 16, "--overwrite"]
    result = finetune(*args, "-o", project)
    assert result.exit_code == 1 and "is not a model folder; refusing to delete it" in result.output, result.output
    assert (project / "scans" / "001.jpg").read_bytes() == b"a scan"

    model = tmp_path / "model"
    assert finetune(*args, "-o", model).exit_code == 0
    (model / "photos").mkdir()
    (model / "MY_NOTES.txt").write_text("mine")
    result = finetune(*args, "-o", model)
    assert result.exit_code == 1, result.output
    assert "holds more than a model (MY_NOTES.txt, photos/), which --overwrite would delete" in result.output
    assert (model / "MY_NOTES.txt").read_text() == "mine" and (model / "photos").is_dir()
    (model / "MY_NOTES.txt").unlink()
    (model / "photos").rmdir()
    assert finetune(*args, "-o", model).exit_code == 0  # the model alone: replaced


@pytest.mark.parametrize("stop", [KeyboardInterrupt, "a training image vanished"])
def test_an_overwrite_that_stops_before_a_checkpoint_puts_the_old_model_back(tmp_path, shapes, tiny_model_dir,
                                                                            monkeypatch, stop):
    """--overwrite sets the old model aside, not deleted, until the new one is whole: a
    run stopped (Ctrl-C) or failed before its first checkpoint leaves the folder as it was,
    even when it was --base itself."""
    from clipsearch.errors import ClipsearchError
    from clipsearch.finetune import pipeline

    train, _ = shapes
    out = tmp_path / "mine"
    args = [train, "-o", out, "--epochs", 1, "--batch-size", 16]
    assert finetune(*args, "--base", tiny_model_dir).exit_code == 0
    (out / "README.md").write_text("the card, as the user edited it")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def stops(*_args, **_kwargs):
        raise stop() if stop is KeyboardInterrupt else ClipsearchError(stop)

    monkeypatch.setattr(pipeline, "train", stops)
    result = finetune(*args, "--base", out, "--overwrite")  # training its own model further, in place
    assert result.exit_code == (130 if stop is KeyboardInterrupt else 1), result.output
    if stop is KeyboardInterrupt:
        assert f"{out} holds the model it had before" in result.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / ".mine.replaced").exists()
    monkeypatch.undo()
    assert finetune(*args, "--base", out, "--overwrite").exit_code == 0
    assert (out / "README.md").read_text() != "the card, as the user edited it"  # the new model's card
    assert not (tmp_path / ".mine.replaced").exists()


def test_an_overwrite_stopped_after_a_checkpoint_keeps_the_old_model_through_a_second_overwrite(
        tmp_path, shapes, tiny_model_dir, monkeypatch):
    """Stopped after a checkpoint, an --overwrite leaves its run at OUTPUT (for --resume)
    and the model it replaces aside. Another --overwrite that fails must not take the
    unfinished run for the model to keep: the old model comes back."""
    from clipsearch.errors import ClipsearchError
    from clipsearch.finetune import pipeline

    train, _ = shapes
    out, aside = tmp_path / "mine", tmp_path / ".mine.replaced"
    args = [train, "-o", out, "--epochs", 1, "--batch-size", 16, "--base", tiny_model_dir]
    assert finetune(*args).exit_code == 0
    before = (out / "model.safetensors").read_bytes()

    def checkpoint_then_stop(_st, _clip, _pairs, _settings, checkpoints, *_rest):
        state = Path(checkpoints) / "checkpoint-2" / "trainer_state.json"
        state.parent.mkdir(parents=True)
        state.write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", checkpoint_then_stop)
    result = finetune(*args, "--overwrite")
    assert result.exit_code == 130 and f"waits in {aside}" in result.stderr, result.output
    assert (aside / "model.safetensors").read_bytes() == before and not (out / "model.safetensors").exists()

    monkeypatch.setattr(pipeline, "train", lambda *_a, **_k: (_ for _ in ()).throw(ClipsearchError("it broke")))
    result = finetune(*args, "--overwrite")
    assert result.exit_code == 1 and "it broke" in result.output
    assert (out / "model.safetensors").read_bytes() == before and not aside.exists()


def test_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path, shapes, tiny_model_dir):
    train, _ = shapes
    (tmp_path / "a-file").write_text("")
    result = finetune(train, "--base", tiny_model_dir, "-o", tmp_path / "a-file" / "model")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "is a file, not a folder" in result.output
    result = finetune(train, "--base", tiny_model_dir, "-o", tmp_path / "m", "--report", tmp_path / "a-file" / "r")
    assert result.exit_code == 1 and "--report" in result.output and not (tmp_path / "m").exists()


def test_one_caption_for_every_pair_is_refused_and_one_step_still_trains(tmp_path, shapes, tiny_model_dir):
    """One distinct caption trains with a loss of 0 (a batch never holds two equal
    captions): refused. A run of a single step used to spend it at a learning rate of 0
    (the warm-up), leaving the model as it was."""
    train, heldout = shapes
    same = tmp_path / "same.csv"
    header, *rows = train.read_text().splitlines()
    rows = [header, *(f"{train.parent}/{row}" for row in rows)]  # absolute: these files live elsewhere
    same.write_text("\n".join([rows[0], *(row.rsplit(",", 1)[0] + ",museum object" for row in rows[1:])]) + "\n")
    result = finetune(same, "--base", tiny_model_dir, "-o", tmp_path / "same-out")
    assert result.exit_code == 1 and "1 distinct caption" in result.output, result.output
    assert not (tmp_path / "same-out").exists()

    distinct = tmp_path / "distinct.csv"  # every caption its own: the whole set is one batch
    distinct.write_text("\n".join([rows[0], *(f"{row} {i}" for i, row in enumerate(rows[1:]))]) + "\n")
    out = tmp_path / "one-step"
    result = finetune(distinct, "--base", tiny_model_dir, "-o", out, "--epochs", 1, "--batch-size", 128,
                      "--lr", "1e-3", "--eval-data", heldout)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "eval.json").read_text())
    assert record["train"]["steps"] == 1 and record["image_tower_unchanged"] is False
    # the card says the batch the run used: every pair, fewer than --batch-size asked for
    assert f"batch size {len(rows) - 1} (--batch-size 128 asked)" in (out / "README.md").read_text()


def test_bad_data_stops_before_anything_is_written(tmp_path, shapes, tiny_model_dir):
    train, _ = shapes
    bad = tmp_path / "bad.csv"
    bad.write_text(Path(train).read_text().replace("images/", str(Path(train).parent / "images") + "/")
                   + "missing.png,a ghost\n" + f"{Path(train).parent}/images/red-circle-left-0.png,\n")
    out = tmp_path / "out"
    result = finetune(bad, "--base", tiny_model_dir, "-o", out)
    assert result.exit_code == 1
    assert "2 bad rows" in result.output and "bad.csv:74: image not found" in result.output
    assert "bad.csv:75: empty caption" in result.output and "--skip-bad" in result.output
    assert not out.exists()

    missing_columns = tmp_path / "cols.csv"
    missing_columns.write_text("image,caption\nx.png,y\n")
    result = finetune(missing_columns, "--base", tiny_model_dir, "-o", out)
    assert result.exit_code == 1 and "missing columns image_path, text_description" in result.output
    assert not out.exists()

    # images decoded in two worker processes, forked: from a process of the command's own
    result = cli_in_a_fresh_process(["finetune", bad, "--base", tiny_model_dir, "-o", out, "--skip-bad", "--epochs", 1,
                                     "--batch-size", 16, "--workers", 2, "--device", DEVICE, "--quiet"])
    assert result.exit_code == 0, result.output
    report = [json.loads(line) for line in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in report] == [f"image not found: {tmp_path / 'missing.png'}", "empty caption"]
    assert json.loads((out / "finetune_run.json").read_text())["data"]["skipped"] == 2


def _not_a_clip(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefgh"]))
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(folder)
    return folder


def test_base_must_be_a_clip(tmp_path, shapes):
    train, _ = shapes
    out = tmp_path / "out"
    result = finetune(train, "--base", _not_a_clip(tmp_path / "bert"), "-o", out)
    assert result.exit_code == 1 and "not a CLIP model" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = finetune(train, "--base", tmp_path / "nowhere", "-o", out)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not out.exists()


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, shapes, tiny_model_dir, monkeypatch):

    train, heldout = shapes
    out = tmp_path / "out"
    args = [train, "--base", tiny_model_dir, "-o", out, "--eval-data", heldout, "--epochs", 2,
            "--batch-size", 16, "--save-steps", 2, "--lr", "1e-3"]
    stop_training_at_step(monkeypatch, 3)
    result = finetune(*args)
    assert result.exit_code == 130
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "modules.json").exists()
    monkeypatch.undo()
    # the half-made model named where a model is asked for: what to do, in one line
    searched = CliRunner().invoke(cli, ["ingest", str(Path(train).parent), "--model", str(out),
                                        "--index", str(tmp_path / "index"), "--quiet"])
    assert searched.exit_code == 1 and searched.output.count("\n") == 1
    assert "fine-tune that has not saved its model" in searched.output and f"-o {out} --resume" in searched.output

    result = finetune(*args)
    assert result.exit_code == 1 and "--resume" in result.output
    result = finetune(*args[:-1], "2e-3", "--resume")
    assert result.exit_code == 1 and "--lr 0.001 (now 0.002)" in result.output

    result = finetune(*args, "--resume")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "eval.json").read_text())
    assert record["train"]["resumed_from"] == "checkpoint-2" and record["train"]["steps"] == 10
    assert record["before"] is not None and Encoder(str(out), "cpu").dim == 16
    assert not (out / "checkpoints").exists()


def test_a_batch_of_one_pair_is_not_a_training_step(tmp_path, shapes, tiny_model_dir):
    # 17 pairs of distinct captions in batches of 16: each epoch's last batch would hold
    # one pair, whose loss is 0 (its only candidate is itself) while AdamW still steps.
    train, heldout = shapes
    rows = [line for line in train.read_text().splitlines()[1:] if line.split(",")[0].endswith("-0.png")][:17]
    data = train.parent / "seventeen.csv"
    data.write_text("image_path,text_description\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = finetune(data, "--base", tiny_model_dir, "-o", out, "--eval-data", heldout, "--epochs", 2,
                      "--batch-size", 16)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["train"]["steps"] == 2  # one batch of 16 an epoch


def test_pairs_a_shared_caption_leaves_out_are_counted_and_said(tmp_path, shapes, tiny_model_dir):
    # Half the pairs share one catalogue caption: a batch holds it once, so most of those
    # rows end up alone and are left out. The run says so, and its schedule spans the
    # steps it takes (it used to promise 28 and take 16).
    train, heldout = shapes
    rows = train.read_text().splitlines()[1:]
    data = train.parent / "untitled.csv"
    data.write_text("image_path,text_description\n" + "".join(
        f"{row.split(',')[0]},{row.split(',', 1)[1] + f' no. {i}' if i % 2 == 0 else 'untitled photograph'}\n"
        for i, row in enumerate(rows)))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["finetune", str(data), "--base", str(tiny_model_dir), "-o", str(out),
                                      "--epochs", "2", "--batch-size", "16", "--eval-data", str(heldout),
                                      "--device", DEVICE, "--keep-checkpoints", "--quiet"])
    assert result.exit_code == 0, result.output
    # said under --quiet too (a nightly run's pairs are lost as well), and recorded
    said = [line for line in result.output.splitlines() if "left out of the first epoch" in line]
    assert len(said) == 1, result.output
    assert "the caption 'untitled photograph' is on more pairs than the batches of an epoch" in said[0]
    left_out = int(said[0].removeprefix("clipsearch: ").split(" of ")[0])
    steps = json.loads((out / "eval.json").read_text())["train"]["steps"]
    assert json.loads((out / "eval.json").read_text())["train"]["pairs_left_out"] == left_out
    assert f"; {left_out} of them in no batch of an epoch" in (out / "README.md").read_text()
    assert left_out > 0 and steps < 2 * math.ceil(72 / 16)  # fewer steps than the rows alone would make
    last = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    # the schedule spans the first epoch's batches, each epoch; a later shuffle may make one more or fewer
    assert abs(state["max_steps"] - steps) <= 2 and state["global_step"] == steps

    # every pair shows one image: no batch of two can be made; one line, before any step
    image = rows[0].split(",")[0]
    one = train.parent / "one-image.csv"
    one.write_text("image_path,text_description\n" + "".join(f"{image},caption number {i}\n" for i in range(20)))
    refused = CliRunner().invoke(cli, ["finetune", str(one), "--base", str(tiny_model_dir), "-o",
                                       str(tmp_path / "one"), "--batch-size", "4", "--eval-split", "0",
                                       "--device", DEVICE])
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert "no batch of two pairs with different images and captions can be made" in refused.output


def test_out_of_memory_says_to_lower_the_batch_size(tmp_path, shapes, tiny_model_dir, monkeypatch):
    import torch

    from clipsearch.finetune import training

    def explode(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training._Trainer, "train", explode)
    train, _ = shapes
    out = tmp_path / "out"
    result = finetune(train, "--base", tiny_model_dir, "-o", out, "--batch-size", 64)
    assert result.exit_code == 1
    assert "out of memory at --batch-size 64; lower --batch-size (try 32)" in result.output
    assert not out.exists()  # nothing to resume from: no half-made folder left behind


def test_bad_options(tmp_path, shapes, tiny_model_dir):
    train, _ = shapes
    out = tmp_path / "out"
    result = finetune(train, "--base", tiny_model_dir, "-o", out, "--resume")
    assert result.exit_code == 1 and "no interrupted fine-tune" in result.output
    result = finetune(train, "--base", tiny_model_dir, "-o", out, "--resume", "--overwrite")
    assert result.exit_code == 1 and "contradict" in result.output
    result = finetune(train, "--base", tiny_model_dir, "-o", out, "--eval-data", train)
    assert result.exit_code == 1 and "both in the training data and in --eval-data" in result.output
    result = finetune(train, "--base", tiny_model_dir, "-o", out, "--eval-split", "1.5")
    assert result.exit_code == 2
    assert not out.exists()


def test_missing_training_extras_are_named(tmp_path, shapes, tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "datasets" else real(name, *args, **kwargs))
    result = finetune(shapes[0], "--base", tiny_model_dir, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "needs datasets: pip install 'clipsearch[finetune]'" in result.output


def test_a_model_trained_further_in_place_and_stopped_resumes_from_its_base_aside(tmp_path, shapes,
                                                                                 tiny_model_dir, monkeypatch):
    """--base M -o M --overwrite stopped after a checkpoint: M holds no model now, so
    --resume takes the base from where it waits aside (and does not call it changed)."""
    from clipsearch.errors import ClipsearchError
    from clipsearch.finetune import pipeline

    train, _ = shapes
    out = tmp_path / "mine"
    common = [train, "-o", out, "--epochs", 1, "--batch-size", 16, "--base", out]
    assert finetune(train, "-o", out, "--epochs", 1, "--batch-size", 16, "--base", tiny_model_dir).exit_code == 0
    loaded = []

    def checkpoint_then_stop(_st, _clip, _pairs, _settings, checkpoints, *_rest):
        state = Path(checkpoints) / "checkpoint-2" / "trainer_state.json"
        state.parent.mkdir(parents=True)
        state.write_text("{}")
        raise KeyboardInterrupt

    def resumed(st, *_rest):
        loaded.append(st)
        raise ClipsearchError("stopped here by the test")

    monkeypatch.setattr(pipeline, "train", checkpoint_then_stop)
    assert finetune(*common, "--overwrite").exit_code == 130
    # meanwhile, where a model is asked for: how to finish, and where the old one waits
    asked = CliRunner().invoke(cli, ["ingest", str(Path(train).parent), "--model", str(out),
                                     "--index", str(tmp_path / "index"), "--quiet"])
    assert asked.exit_code == 1 and asked.output.count("\n") == 1
    assert "--resume` finishes it from its last checkpoint" in asked.output
    assert f"the model it replaces is kept in {tmp_path / '.mine.replaced'}" in asked.output
    monkeypatch.setattr(pipeline, "train", resumed)
    result = finetune(*common, "--resume")
    assert result.exit_code == 1 and "stopped here by the test" in result.output, result.output
    assert loaded  # the base loaded (from .mine.replaced) and the run judged the same


def test_a_base_that_cannot_be_had_says_the_flag_finetune_takes(tmp_path, shapes):
    train, _ = shapes
    result = finetune(train, "--base", "someone/clip-nothere", "-o", tmp_path / "out", "--epochs", 1)
    assert result.exit_code == 1 and "cannot download model 'someone/clip-nothere'" in result.output
    assert "pass --base (or set CLIPSEARCH_MODEL) to a local CLIP folder" in result.output
    assert "--model" not in result.output  # finetune has no such flag
