"""An image the model overflows on (its vector NaN or infinity, as a half-precision
tower can give for some pixels) is one skipped file, named in the report with the
reason; the rest of the ingest goes on. A model that overflows on everything is
broken: that still stops the run (tests/ingest/test_nonfinite_reindex.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from clipsearch.cli import cli
from clipsearch.config import Settings
from clipsearch.index import open_index

from support import overflowing_copy


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory, tiny_model_dir):
    return overflowing_copy(tiny_model_dir, tmp_path_factory.mktemp("overflow") / "overflowing-clip")


def _middling(path, shade: int) -> None:
    """A red disc on a mid-grey ground: colours the overflowing model still embeds."""
    image = Image.new("RGB", (64, 48), (128, 128, shade))
    ImageDraw.Draw(image).ellipse((16, 12, 48, 36), fill=(200, 60, 60))
    image.save(path)


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "decoders"])
def test_the_images_a_model_overflows_on_are_skipped_and_the_others_ingested(tmp_path, overflowing_model, workers):
    photos = tmp_path / "photos"
    photos.mkdir()
    for shade in range(5):
        _middling(photos / f"grey-{shade}.png", 110 + 10 * shade)
    Image.new("RGB", (64, 48), (255, 255, 255)).save(photos / "snow.png")
    Image.new("RGB", (64, 48), (0, 0, 0)).save(photos / "night.jpg")
    index, report = tmp_path / "index", tmp_path / "skipped.jsonl"

    result = CliRunner().invoke(cli, ["ingest", str(photos), "--model", str(overflowing_model), "--index", str(index),
                                      "--workers", str(workers), "--report", str(report), "--json", "-q"])

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["embedded"] == 5 and summary["skipped"] == 2, summary
    reasons = {json.loads(line)["path"]: json.loads(line)["reason"] for line in report.read_text().splitlines()}
    assert set(reasons) == {str(photos / "snow.png"), str(photos / "night.jpg")}
    assert all("NaN or infinity" in reason for reason in reasons.values()), reasons
    with open_index(Settings.resolve(model=str(overflowing_model), index=str(index), device="cpu")) as opened:
        stored = sorted(record.payload["path"].rsplit("/", 1)[1] for record in opened.scroll())
    assert stored == [f"grey-{shade}.png" for shade in range(5)]
