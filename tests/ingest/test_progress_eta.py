"""A first ingest walks in step with its embedding (the walk is a few hundred files
ahead): the ETA comes from a count of the image names, so that it is there for most of
an hours-long run, not only once the walk is done; the rate is measured from the first
batch in, not from a start spent loading the model. And `found` counts every file the
walk skipped (a broken link named .jpg), so that the counts add up."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.ingest.walk import count_image_names

from support import draw_collection, draw_image


def test_the_count_of_image_names_follows_the_walks_rules(tmp_path):
    photos = tmp_path / "photos"
    draw_collection(photos / "2023", 4)
    for name in (".thumbnails/a.jpg", "@eaDir/b.jpg", "private/c.jpg", "notes/d.txt", "e.JPG"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"not read: names only")
    (photos / "elsewhere").symlink_to(tmp_path / "photos" / "2023")  # a link to a folder: not followed
    assert count_image_names([str(photos)], ["private"]) == 4 + 1
    assert count_image_names([str(photos / "2023")]) == 4


def test_a_first_ingest_shows_an_eta_while_it_is_still_walking(tmp_path, tiny_model_dir, monkeypatch):
    from clipsearch import progress
    from clipsearch.ingest import pipeline

    monkeypatch.setattr(pipeline, "LOOKUP_CHUNK", 4)  # the walk 4 files ahead, as 512 are of 100k
    monkeypatch.setattr(progress, "STEADY_AFTER", 0.0)
    monkeypatch.setattr(pipeline, "COUNT_AFTER", 0.0)
    draw_collection(tmp_path / "photos", 40)
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(tmp_path / "index"),
                                      "--model", str(tiny_model_dir), "-w", "0", "-b", "2"],
                                env={"CLIPSEARCH_PROGRESS_SECONDS": "0"})
    assert result.exit_code == 0, result.output
    walking = [line for line in result.stderr.splitlines() if re.match(r"found \d+\+ of ~40, embedded [1-9]", line)]
    assert walking, result.stderr
    assert any(not line.endswith("ETA ?") for line in walking), walking


def test_found_counts_the_files_the_walk_skipped(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_image(photos / "a.png")
    draw_image(photos / "b.png", "blue")
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(tmp_path / "index"),
                                      "--model", str(tiny_model_dir), "-w", "0", "--json", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["found"], summary["embedded"], summary["skipped"]) == (4, 2, 2)
