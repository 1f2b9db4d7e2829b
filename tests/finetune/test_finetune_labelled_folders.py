"""Labelled folders (issue #17): class subfolders of images, labelled by labels.txt or by
the folder's name, captioned by --template; validation naming the folder; zero-shot
classification accuracy beside recall@k in `eval` and in the fine-tune report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.finetune.datasets import detect_format
from clipsearch.finetune.evaluation import classification_metrics, format_table
from clipsearch.finetune.training import ImagePathCollator
from clipsearch.finetune.validation import load_pairs

from support import COLOURS, draw_image

SHAPES_BY_CLASS = {"shapes/circle": "circle", "shapes/square": "square", "triangle": "triangle"}


def draw_classes(folder, per_class=4, classes=SHAPES_BY_CLASS):
    """DATA/shapes/circle/*.png, DATA/shapes/square/*.png, DATA/triangle/*.png: nested and not."""
    colours = list(COLOURS)
    for n, (relative, shape) in enumerate(classes.items()):
        for i in range(per_class):
            draw_image(folder / relative / f"{i}.png", colours[i % len(colours)], shape, size=(40 + i, 32), mark=n + 1)
    return folder


def test_labels_are_leaf_folder_names_or_labels_txt(tmp_path):
    data = draw_classes(tmp_path / "data")
    (data / "shapes" / "notes.md").write_text("not an image")  # a folder of folders is no class
    assert detect_format(data) == "labelled"
    pairs = load_pairs(data)
    assert pairs.labelled and pairs.labels == ["circle", "square", "triangle"]
    assert len(pairs.pairs) == 12
    assert {p.where for p in pairs.pairs if p.text == "circle"} == {str(data / "shapes" / "circle")}

    (data / "labels.txt").write_text("# FOLDER<TAB>LABEL\nshapes/circle\tround   disc\n\ntriangle\tthree_sided shape\n")
    assert load_pairs(data).labels == ["round disc", "square", "three_sided shape"]


def test_a_captioned_folder_stays_captioned_even_in_subfolders(tmp_path):
    data = draw_classes(tmp_path / "data", per_class=1)
    for relative in SHAPES_BY_CLASS:
        (data / relative / "0.txt").write_text("a caption")
    assert detect_format(data) == "folder"


def test_a_stray_image_beside_the_class_folders_is_a_bad_row_not_another_layout(tmp_path):
    """One loose image at the top turned every class folder into 'has no caption file'."""
    data = draw_classes(tmp_path / "data", per_class=2)
    draw_image(data / "stray.png", "red", "square")
    assert detect_format(data) == "labelled"
    pairs = load_pairs(data, skip_bad=True)
    assert len(pairs.pairs) == 6
    assert [(p.where, p.reason) for p in pairs.problems] == [
        (str(data / "stray.png"), "is not in a class folder: move it into its class's subfolder")]


def test_a_caption_file_is_found_whatever_the_case_of_txt(tmp_path):
    """Images match in any case (A.JPG); their captions did only as lower-case .txt."""
    draw_image(tmp_path / "data" / "a.png", "red", "circle")
    draw_image(tmp_path / "data" / "b.PNG", "blue", "square")
    (tmp_path / "data" / "a.txt").write_text("a red circle")
    (tmp_path / "data" / "b.TXT").write_text("a blue square")
    pairs = load_pairs(tmp_path / "data")
    assert sorted((os.path.basename(p.image), p.text) for p in pairs.pairs) == [
        ("a.png", "a red circle"), ("b.PNG", "a blue square")]


@pytest.mark.parametrize("content,message", [
    ("shapes/circle round\n", r"labels.txt:1: expected FOLDER<TAB>LABEL TEXT"),
    ("nowhere\tx\n", r"labels.txt:1: no class folder nowhere"),
    ("shapes\tx\n", r"labels.txt:1: shapes holds no images directly"),
    ("triangle\ta\ntriangle\tb\n", r"labels.txt:2: triangle already has a label on line 1"),
])
def test_a_labels_file_that_cannot_be_read_stops_the_run_naming_its_line(tmp_path, content, message):
    data = draw_classes(tmp_path / "data", per_class=1)
    (data / "labels.txt").write_text(content)
    with pytest.raises(ClipsearchError, match=message):
        load_pairs(data)


def test_bad_classes_are_one_line_each_naming_the_folder(tmp_path):
    data = draw_classes(tmp_path / "data", per_class=2)
    (data / "empty").mkdir()
    (data / "shapes" / "square" / "1.png").write_bytes(b"not a png")
    odd = os.fsdecode(os.fsencode(data) + b"/caf\xe9")  # a Latin-1 folder name: no label text
    draw_image(Path(odd) / "0.png", "red", "circle")
    draw_image(data / "blank" / "0.png", "blue", "square")
    draw_image(data / "zz" / "circle" / "0.png", "green", "circle", mark=9)  # a second "circle"
    (data / "labels.txt").write_text("blank\t  \n")

    with pytest.raises(ClipsearchError) as caught:
        load_pairs(data)
    message = str(caught.value)
    assert message.count("\n") == 0 and "5 bad rows" in message

    pairs = load_pairs(data, skip_bad=True)
    lines = {p.line() for p in pairs.problems}
    assert f"{data / 'empty'}: class folder holds no images" in lines
    assert f"{data / 'blank'}: empty label (labels.txt:1)" in lines
    assert any(line.startswith(f"{data / 'shapes' / 'square'}: unusable image") and line.endswith("1.png")
               for line in lines)
    assert any("not UTF-8 text" in line and "caf" in line for line in lines)
    assert f"{data / 'zz' / 'circle'}: label 'circle' is also the label of {data / 'shapes' / 'circle'}: " \
           "give one of them another in labels.txt" in lines
    assert len(pairs.problems) == 5
    assert pairs.labels == ["circle", "square", "triangle"] and len(pairs.pairs) == 5

    report = tmp_path / "report.jsonl"
    pairs.write_report(report)
    assert len(report.read_text().splitlines()) == 5


def test_a_single_class_is_refused_even_with_skip_bad(tmp_path):
    data = draw_classes(tmp_path / "data", per_class=2, classes={"heron": "circle"})
    (data / "egret").mkdir()
    with pytest.raises(ClipsearchError, match=r"holds one class kept \('heron' in .*heron\): a labelled folder "
                                              r"needs two class folders or more"):
        load_pairs(data, skip_bad=True)


def test_the_collator_draws_one_template_per_image_per_step():
    templates = ["a photo of a {label}.", "a drawing of a {label}."]
    collator = ImagePathCollator(preprocess_fn=lambda inputs, **_: {"n": inputs}, templates=templates, seed=3)
    drawn = [collator._value("text", "heron") for _ in range(40)]
    assert set(drawn) == {"a photo of a heron.", "a drawing of a heron."}
    assert collator._value("negative", "x") == "x"


def test_classification_averages_templates_and_scores_top_1_and_top_5():
    labels = np.eye(6, dtype=np.float32)
    captions = np.stack([labels, labels], axis=1)  # (labels, templates, dim)
    images = labels[[0, 1, 2, 3]]
    perfect = classification_metrics(captions, images, np.array([0, 1, 2, 3]))
    assert perfect["accuracy@1"] == perfect["accuracy@5"] == 1.0 and perfect["classes"] == 6
    wrong = classification_metrics(captions, images, np.array([1, 0, 3, 2]))
    assert wrong["accuracy@1"] == 0.0 and wrong["accuracy@5"] == 1.0  # second of 6, tied with 4 others
    assert wrong["chance_accuracy@1"] == pytest.approx(1 / 6)


def test_format_table_adds_accuracy_rows_for_labelled_data():
    m = {"recall@1": 0.1, "recall@5": 0.5, "recall@10": 0.9, "mrr": 0.25, "queries": 6, "images": 12,
         "chance_recall@1": 0.3, "accuracy@1": 0.5, "accuracy@5": 1.0, "classes": 3, "templates": 2,
         "chance_accuracy@1": 1 / 3}
    lines = format_table({"before": m, "after": m}).splitlines()
    assert lines[5].split() == ["accuracy@1", "0.500", "0.500"] and lines[6].split()[0] == "accuracy@5"
    assert lines[-1] == "zero-shot classification among 3 labels (2 templates each); chance accuracy@1 0.333"


def test_eval_reports_recall_and_zero_shot_accuracy(tmp_path, tiny_st_model_dir):
    data = draw_classes(tmp_path / "data", per_class=2)
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", str(data), "-m", str(tiny_st_model_dir), "--device", "cpu", "--json",
                                 "--template", "a photo of a {label}.", "--template", "a drawing of a {label}."])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["classes"] == 3 and metrics["templates"] == 2 and metrics["images"] == 6
    assert metrics["queries"] == 6  # 3 labels x 2 templates
    assert 0 <= metrics["accuracy@1"] <= metrics["accuracy@5"] == 1.0  # 3 labels: all are in the top 5

    table = runner.invoke(cli, ["eval", str(data), "-m", str(tiny_st_model_dir), "--device", "cpu"])
    assert table.exit_code == 0 and "accuracy@1" in table.output and "(1 template each)" in table.output

    bad = runner.invoke(cli, ["eval", str(data), "-m", str(tiny_st_model_dir), "--template", "a photo"])
    assert bad.exit_code == 1 and "has no {label}" in bad.output

    csv = tmp_path / "pairs.csv"
    csv.write_text(f"image_path,text_description\n{data / 'triangle' / '0.png'},a triangle\n")
    wrong = runner.invoke(cli, ["eval", str(csv), "-m", str(tiny_st_model_dir), "--template", "a {label}"])
    assert wrong.exit_code == 1 and "--template makes captions of a labelled folder's labels" in wrong.output


@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_a_template_without_its_label_is_refused_before_the_data_is_checked(tmp_path, command):
    data = draw_classes(tmp_path / "data", per_class=2)
    (data / "triangle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")  # a bad row
    args = [command, str(data), "--template", "a photo", "-m" if command == "eval" else "--base",
            str(tmp_path / "no-such-model")]
    if command == "finetune":
        args += ["--output", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "--template 'a photo' has no {label}" in result.output, result.output  # not the bad image, not the model
    assert "broken.png" not in result.output


def test_finetune_on_a_labelled_folder_reports_accuracy_before_and_after(tmp_path, tiny_model_dir):
    data = draw_classes(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["finetune", str(data), "--base", str(tiny_model_dir), "-o", str(out),
                                      "--epochs", "1", "--batch-size", "8", "--eval-split", "0.25", "--device",
                                      "cpu", "--template", "a photo of a {label}.", "--template", "a {label} shape",
                                      "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["train"]["batch_size"] == 3  # one image per class per batch
    for state in ("before", "after"):
        assert record[state]["classes"] == 3 and record[state]["templates"] == 2
        assert 0 <= record[state]["accuracy@1"] <= record[state]["accuracy@5"] <= 1
    card = (out / "README.md").read_text()
    assert "| accuracy@1 |" in card and "Zero-shot classification" in card and "`a {label} shape`" in card
    run = json.loads((out / "finetune_run.json").read_text())
    assert run["settings"]["templates"] == ["a photo of a {label}.", "a {label} shape"]
    assert run["data"]["format"] == "labelled" and run["data"]["classes"] == 3
