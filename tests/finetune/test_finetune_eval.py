"""Retrieval metrics: ranks, several relevant images, ties, and the `eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.finetune.evaluation import format_table, ranks_of_first_relevant, retrieval_metrics


def test_rank_is_that_of_the_best_ranked_relevant_image():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],
                       [0.9, 0.1, 0.5, 0.3],
                       [0.2, 0.8, 0.7, 0.1]])
    relevant = np.array([[1, 0, 0, 0],
                         [0, 0, 0, 1],
                         [0, 0, 1, 1]], dtype=bool)
    assert ranks_of_first_relevant(scores, relevant).tolist() == [1.0, 3.0, 2.0]


def test_ties_count_as_random_order_not_a_lucky_hit():
    scores = np.zeros((1, 10))
    one = np.zeros((1, 10), dtype=bool)
    one[0, 0] = True
    assert ranks_of_first_relevant(scores, one).tolist() == [1 + 9 / 2]
    two = one.copy()
    two[0, 5] = True
    assert ranks_of_first_relevant(scores, two).tolist() == [1 + 8 / 3]


def test_metrics_perfect_and_chance():
    vectors = np.eye(12, dtype=np.float32)
    relevant = np.eye(12, dtype=bool)
    perfect = retrieval_metrics(vectors, vectors, relevant)
    assert perfect["recall@1"] == perfect["recall@5"] == perfect["mrr"] == 1.0
    assert perfect["queries"] == perfect["images"] == 12
    assert perfect["chance_recall@1"] == pytest.approx(1 / 12)
    same = retrieval_metrics(vectors, np.ones((12, 12), dtype=np.float32), relevant)  # every image scores alike
    assert same["recall@1"] == same["recall@5"] == 0.0 and same["recall@10"] == 1.0  # expected rank 6.5 each
    assert same["mrr"] == pytest.approx(1 / 6.5)


def test_format_table():
    m = {"recall@1": 0.1, "recall@5": 0.5, "recall@10": 0.9, "mrr": 0.25, "queries": 12, "images": 24,
         "chance_recall@1": 0.083}
    table = format_table({"before": m, "after": dict(m, **{"recall@1": 0.75})})
    lines = table.splitlines()
    assert lines[0].split() == ["before", "after"]
    assert lines[1].split() == ["recall@1", "0.100", "0.750"]
    assert "12 queries over 24 images" in lines[-1] and "0.083" in lines[-1]
    # with 5 images recall@5 and @10 are 1.0 for any model, and the table says so
    few = dict(m, images=5, queries=5, **{"recall@5": 1.0, "recall@10": 1.0})
    assert format_table({"before": few}).splitlines()[-1].startswith(
        "recall@5 and recall@10 cannot miss among 5 images (1.000 for any model)")
    assert format_table({"before": dict(m, images=10)}).splitlines()[-1].startswith("recall@10 cannot miss among 10")
    assert "cannot miss" not in format_table({"before": dict(m, images=11)})


def test_eval_command(tmp_path, tiny_st_model_dir, images):
    data = tmp_path / "pairs.csv"
    data.write_text("image_path,text_description\n" + "".join(
        f"{p},a {p.stem.split('-')[1]} {p.stem.split('-')[2]}\n" for p in images[:-1])
        + f"{images[-1]},{'a caption far longer than the 77 tokens the text tower has positions for ' * 3}\n"
        + "nope.png,missing\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", str(data), "--model", str(tiny_st_model_dir), "--device", "cpu"])
    assert result.exit_code == 1 and "bad row" in result.output and "pairs.csv:14: image not found" in result.output

    out = tmp_path / "metrics.json"
    result = runner.invoke(cli, ["eval", str(data), "-m", str(tiny_st_model_dir), "--device", "cpu", "--skip-bad",
                                 "--report", str(tmp_path / "skipped.jsonl"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["images"] == 12 and metrics["queries"] == 12 and metrics["skipped"] == 1
    assert 0 <= metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1
    assert json.loads(out.read_text())["mrr"] == metrics["mrr"]
    assert "nope.png" in (tmp_path / "skipped.jsonl").read_text()

    result = runner.invoke(cli, ["eval", str(data), "-m", str(tiny_st_model_dir), "--device", "cpu", "--skip-bad"])
    assert result.exit_code == 0 and "recall@1" in result.output and "12 queries over 12 images" in result.output


def test_the_model_card_says_which_recall_cannot_miss():
    from clipsearch.finetune.model_card import _metric_rows

    m = {"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "mrr": 0.7, "queries": 3, "images": 3,
         "chance_recall@1": 0.33}
    assert "With 3 images, recall@5 and recall@10 cannot miss (1.000 for any model)." in _metric_rows(m, m)
    assert not any("cannot miss" in row for row in _metric_rows(*[dict(m, images=11)] * 2))
