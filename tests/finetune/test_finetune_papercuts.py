"""Small promises of finetune and eval: the records say the batch size a run used; an
--eval-split that --eval-data would ignore is refused; headers in another case are
read; a file without a header or with nothing in it says so; hints that fit the
command given; accuracy@k that cannot miss is said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.finetune.evaluation import format_table
from clipsearch.finetune.synthetic import write_dataset
from clipsearch.finetune.validation import load_pairs

from support import draw_image


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("shapes"), per_train=2, per_heldout=1)


def finetune(*args) -> "CliRunner.invoke":
    return CliRunner().invoke(cli, ["finetune", *map(str, args), "--device", "cpu", "--quiet"])


def test_the_records_say_the_batch_size_used(tmp_path, shapes, tiny_model_dir):
    out = tmp_path / "out"
    result = finetune(shapes[0], "--base", tiny_model_dir, "-o", out, "--epochs", 1, "--batch-size", 1000,
                      "--eval-split", 0)
    assert result.exit_code == 0, result.output
    captions = len({line.split(",", 1)[1] for line in shapes[0].read_text().splitlines()[1:]})
    train = json.loads((out / "eval.json").read_text())["train"]
    assert train["batch_size"] == captions < 1000 and train["batch_size_asked"] == 1000
    assert f"batch size {captions} (--batch-size 1000 asked)" in (out / "README.md").read_text()


def test_eval_split_with_eval_data_is_refused(tmp_path, shapes, tiny_model_dir):
    result = finetune(shapes[0], "--base", tiny_model_dir, "-o", tmp_path / "out", "--eval-data", shapes[1],
                      "--eval-split", "0.3")
    assert result.exit_code == 2 and "--eval-split and --eval-data contradict each other" in result.output
    assert not (tmp_path / "out").exists()


def test_one_pair_without_a_split_is_not_told_to_lower_it(tmp_path, tiny_model_dir):
    draw_image(tmp_path / "a.png")
    (tmp_path / "one.csv").write_text("image_path,text_description\na.png,a red circle\n")
    result = finetune(tmp_path / "one.csv", "--base", tiny_model_dir, "-o", tmp_path / "out", "--eval-split", 0)
    assert result.exit_code == 1 and "needs two or more; add pairs" in result.output
    assert "--eval-split" not in result.output


@pytest.mark.parametrize("header, separator", [("Image_Path,Text_Description", ","),
                                                ("IMAGE_PATH | Text_Description", " | "),
                                                ("image_path\tTEXT_DESCRIPTION", "\t")])
def test_headers_in_another_case_are_read(tmp_path, header, separator):
    draw_image(tmp_path / "a.png")
    draw_image(tmp_path / "b.png", "blue")
    suffix = {",": ".csv", " | ": ".md", "\t": ".tsv"}[separator]
    data = tmp_path / f"pairs{suffix}"
    data.write_text(f"{header}\na.png{separator}a red circle\nb.png{separator}a blue circle\n")
    assert [p.text for p in load_pairs(data).pairs] == ["a red circle", "a blue circle"]


def test_a_file_without_a_header_or_without_anything_says_so(tmp_path):
    draw_image(tmp_path / "a.png")
    (tmp_path / "rows.csv").write_text("a.png,a red circle\n")
    with pytest.raises(ClipsearchError, match="the first line looks like a data row: add the header line"):
        load_pairs(tmp_path / "rows.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ClipsearchError, match="the file is empty"):
        load_pairs(tmp_path / "empty.csv")


def test_accuracy_that_cannot_miss_among_few_labels_is_said():
    metrics = {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "mrr": 1.0, "queries": 2, "images": 20,
               "chance_recall@1": 0.5, "accuracy@1": 1.0, "accuracy@5": 1.0, "classes": 2, "templates": 1,
               "chance_accuracy@1": 0.5}
    table = format_table({"m": metrics})
    assert "accuracy@5 cannot miss among 2 labels" in table and "accuracy@1 cannot" not in table
