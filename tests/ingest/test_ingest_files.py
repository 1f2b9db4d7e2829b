"""The ingest stage's calls for a watcher: run_files (a list of files, by the walk's
rules), remove (files and folders that are gone), one Ingestor reused across calls
with totals that add up, optimize=False, in-process decoding of a few files, and the
report's last few skips."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from clipsearch.index import open_index, point_id
from clipsearch.ingest import IngestOptions, Ingestor
from clipsearch.ingest.report import RECENT, SkipReport

from support import draw_collection, draw_image, settings_for


@pytest.fixture
def index(tmp_path, tiny_model_dir):
    with open_index(settings_for("edge", tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


def ingestor_for(encoder, index, **options) -> Ingestor:
    options.setdefault("workers", 0)
    options.setdefault("quiet", True)
    return Ingestor(encoder, index, IngestOptions(**options))


def paths_in(index) -> set[str]:
    return {r.payload["path"] for r in index.scroll()}


def test_run_files_takes_exactly_the_files_the_walk_would(tmp_path, encoder, index):
    root = tmp_path / "photos"
    good = draw_collection(root, 3)
    hidden = draw_image(root / ".hidden.png", "black", "square")
    in_hidden_folder = draw_image(root / ".cache" / "a.png", "white", "square")
    text = root / "notes.txt"
    text.write_text("not an image")
    outside = draw_image(tmp_path / "elsewhere" / "b.png", "black", "triangle")
    link = root / "link.png"
    os.symlink(good[0], link)
    ingestor = ingestor_for(encoder, index)
    paths = [str(p) for p in (*good, hidden, in_hidden_folder, text, outside, link, root, root / "gone.png")]
    summary = ingestor.run_files(paths, roots=[os.path.realpath(root)])
    assert paths_in(index) == {os.path.realpath(p) for p in good}  # the link: its target's point
    assert (summary.found, summary.embedded, summary.skipped) == (3, 3, 0)  # the link and its target: one file
    # Without roots only the file's own name is judged: the file under .cache/ and the
    # one outside are taken, the hidden file still is not.
    again = ingestor.run_files(paths)
    assert (again.embedded, again.unchanged) == (2, 3)
    assert paths_in(index) >= {os.path.realpath(in_hidden_folder), os.path.realpath(outside)}
    assert os.path.realpath(hidden) not in paths_in(index)
    totals = ingestor.totals()
    assert (totals.embedded, totals.unchanged, totals.found) == (5, 3, 8)


def test_run_files_re_embeds_a_changed_file_and_skips_a_bad_one(tmp_path, encoder, index):
    root = tmp_path / "photos"
    a, b = draw_collection(root, 2)
    ingestor = ingestor_for(encoder, index)
    ingestor.run_files([str(a), str(b)])
    draw_image(a, "blue", "square", size=(120, 90))
    os.utime(a, (1_800_000_000, 1_800_000_000))
    bad = root / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    summary = ingestor.run_files([str(a), str(b), str(bad)])
    assert (summary.embedded, summary.unchanged, summary.skipped) == (1, 1, 1)
    payload = index.retrieve([point_id(a)])[0].payload
    assert (payload["size"], payload["mtime"]) == (os.path.getsize(a), 1_800_000_000)
    assert [p for p, _ in ingestor.report.recent] == [os.path.realpath(bad)]
    # the bad file is known now: not read again while unchanged
    assert ingestor.run_files([str(bad)]).known_bad == 1


def test_remove_deletes_gone_files_and_folders_only(tmp_path, encoder, index):
    root = tmp_path / "photos"
    files = draw_collection(root / "keep", 2) + draw_collection(root / "sub" / "deep", 3)
    ingestor = ingestor_for(encoder, index)
    ingestor.run([str(root)])
    assert index.count() == 5
    for p in files[2:]:
        p.unlink()
    os.removedirs(root / "sub" / "deep")
    files[0].unlink()
    # files[1] still exists: left alone; the folder: every point under it
    assert ingestor.remove([str(files[0]), str(files[1]), str(root / "sub"), str(root / "never")]) == 4
    assert paths_in(index) == {os.path.realpath(files[1])}
    assert ingestor.summary.removed == 4 and ingestor.totals().removed == 4
    assert ingestor.remove([str(files[0])]) == 0


def test_optimize_false_builds_no_hnsw(tmp_path, encoder, index, monkeypatch):
    import clipsearch.index.edge as edge

    monkeypatch.setattr(edge, "HNSW_MIN_POINTS", 1)
    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "1")
    calls = []
    monkeypatch.setattr(index, "optimize", lambda: calls.append(1) or True)
    draw_collection(tmp_path / "a", 2)
    draw_collection(tmp_path / "b", 3)  # not the same pictures as a/: new content, embedded, not copied
    assert not ingestor_for(encoder, index, optimize=False).run([str(tmp_path / "a")]).hnsw_built
    assert calls == []
    assert ingestor_for(encoder, index).run([str(tmp_path / "b")]).hnsw_built
    assert calls == [1]


def test_a_few_files_decode_without_a_pool(tmp_path, encoder, index, monkeypatch):
    files = draw_collection(tmp_path / "photos", 3)

    def no_pool(*args, **kwargs):
        raise AssertionError("a decode pool started for three files")

    monkeypatch.setattr(multiprocessing, "get_context", no_pool)
    summary = ingestor_for(encoder, index, workers=2, batch_size=2).run_files([str(p) for p in files])
    assert summary.embedded == 3


def test_an_empty_folder_is_allowed_when_asked(tmp_path, encoder, index):
    (tmp_path / "empty").mkdir()
    assert ingestor_for(encoder, index).run([str(tmp_path / "empty")], allow_empty=True).found == 0


def test_the_report_keeps_the_last_few_skips():
    report = SkipReport(None)
    for i in range(RECENT + 5):
        report.add(f"/p/{i}", "bad")
    assert [p for p, _ in report.examples] == [f"/p/{i}" for i in range(5)]
    assert [p for p, _ in report.recent] == [f"/p/{i}" for i in range(5, RECENT + 5)]


def test_the_report_names_the_most_urgent_skips_first():
    """Stderr names five: a file whose point went before the skips every run repeats."""
    from clipsearch.ingest.report import AS_BEFORE, LOST_POINT, NEW, WALK

    report = SkipReport(None)
    for i in range(4):
        report.add(f"/link/{i}", "broken link", WALK)
        report.add(f"/known/{i}", "truncated [found by an earlier run]", AS_BEFORE)
    report.add("/new", "truncated", NEW)
    report.add("/lost", "truncated [its old point is removed]", LOST_POINT)
    assert [p for p, _ in report.examples] == ["/lost", "/new", "/link/0", "/link/1", "/link/2"]
    assert report.lines()[:2] == ["skipped /lost: truncated [its old point is removed]", "skipped /new: truncated"]
    assert report.lines()[-1] == "... and 5 more (--report FILE lists every one)"


def test_a_photo_that_went_bad_since_it_was_indexed_is_named_before_the_old_skips(tmp_path, tiny_model_dir):
    """Its point goes (a search no longer finds it): the run's stderr says which file,
    though the same broken links fill the first lines every run."""
    from click.testing import CliRunner

    from clipsearch.cli import cli

    photos = tmp_path / "photos"
    good = draw_collection(photos, 3)
    for i in range(6):
        (photos / f"dead-{i}.jpg").symlink_to(tmp_path / "nowhere" / f"{i}.jpg")
    args = ["ingest", str(photos), "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "-w", "0"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    damaged = good[1]
    damaged.write_bytes(damaged.read_bytes()[:60])

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped[0].startswith(f"skipped {damaged}: ") and "its old point is removed" in skipped[0], skipped
    assert "removed 1" in result.stdout
    from clipsearch.config import Settings

    with open_index(Settings.resolve(index=str(tmp_path / "index"), model=str(tiny_model_dir))) as opened:
        assert paths_in(opened) == {str(path) for path in good} - {str(damaged)}


def test_the_graph_build_says_how_long_it_took_and_the_next_one_expects(tmp_path, tiny_model_dir, monkeypatch):
    """The in-process HNSW build holds the GIL (no progress line can move): the run says
    when it is done and how long it took, and the next build says what the last one took."""
    import json

    from click.testing import CliRunner

    from clipsearch.cli import cli

    monkeypatch.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "10")
    args = ["--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "--workers", "0", "--json"]
    draw_collection(tmp_path / "photos" / "a", 24)
    first = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), *args])
    assert first.exit_code == 0 and json.loads(first.stdout)["hnsw_built"], first.output
    assert "building the HNSW search index over 24 images...\n" in first.stderr
    assert "built it in 0:00:" in first.stderr

    draw_collection(tmp_path / "photos" / "b", 24, ext=".jpg")
    second = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), *args])
    assert second.exit_code == 0 and json.loads(second.stdout)["hnsw_built"], second.output
    assert "building the HNSW search index over 48 images (the last build, over 24, took 0:00:" in second.stderr
