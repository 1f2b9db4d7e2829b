"""Bad files are remembered: a re-run reports them again without reading them, and
without loading the model for them (ingest/known_bad.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from test_ingest_lazy import HEAVY, ingest_in_fresh_process

import clipsearch.ingest.pipeline
from clipsearch.cli import cli
from clipsearch.images import SkipImage, decode_job, load_image

from support import draw_collection, draw_image


def messy(folder: Path) -> dict[str, Path]:
    draw_collection(folder, 4)
    bad = {"corrupt": folder / "corrupt.jpg", "letter": folder / "letter.png"}
    good_jpeg = draw_image(folder / "tmp.jpg", fmt="JPEG").read_bytes()
    bad["corrupt"].write_bytes(good_jpeg[: len(good_jpeg) // 3])  # a download cut short
    (folder / "tmp.jpg").unlink()
    bad["letter"].write_text("not a picture\n" * 10)
    return bad


def run(photos: Path, index: Path, model: Path, *extra) -> tuple[dict, str]:
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(index), "--model", str(model),
                                      "-w", "0", "--json", *map(str, extra)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_a_rerun_reports_known_bad_files_without_reading_them_or_loading_the_model(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    bad = messy(photos)
    report = tmp_path / "skipped.jsonl"
    args = [photos, "--index", tmp_path / "index", "--model", tiny_model_dir, "-w", "0", "--report", report]
    env = dict(os.environ)

    first, _ = ingest_in_fresh_process(args, env)
    assert (first["embedded"], first["skipped"], first["known_bad"]) == (4, 2, 0)
    second, imported = ingest_in_fresh_process(args, env)
    assert (second["embedded"], second["unchanged"], second["skipped"], second["known_bad"]) == (0, 4, 2, 2)
    assert not imported & HEAVY, sorted(imported & HEAVY)  # no model loaded for files known to fail
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == 4  # both runs report both files
    again = {row["path"]: row["reason"] for row in rows[2:]}
    assert set(again) == {os.path.realpath(p) for p in bad.values()}
    assert all("found by an earlier run" in reason for reason in again.values())

    # A bad file that is replaced by a good one is read again, and embedded.
    draw_image(bad["letter"], "blue", "square")
    third, _ = ingest_in_fresh_process(args, env)
    assert (third["embedded"], third["skipped"], third["known_bad"]) == (1, 1, 1)


def test_known_bad_files_are_never_decoded_again(tmp_path, tiny_model_dir, monkeypatch):
    photos = tmp_path / "photos"
    messy(photos)
    run(photos, tmp_path / "index", tiny_model_dir)

    def refuse(*args):
        raise AssertionError("a known bad, unchanged file was decoded")

    monkeypatch.setattr(clipsearch.ingest.pipeline, "decode_job", refuse)
    summary, _ = run(photos, tmp_path / "index", tiny_model_dir)
    assert (summary["skipped"], summary["known_bad"]) == (2, 2)


def test_a_higher_megapixel_limit_retries_files_that_were_too_large(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 2)
    Image.new("RGB", (400, 300), (20, 120, 200)).save(photos / "wide.png")  # 0.12 megapixels
    index = tmp_path / "index"
    first, printed = run(photos, index, tiny_model_dir, "--max-megapixels", "0.05")
    assert (first["embedded"], first["skipped"]) == (2, 1)
    assert f"skipped {os.path.realpath(photos / 'wide.png')}: too large" in printed  # named, without --report
    second, _ = run(photos, index, tiny_model_dir, "--max-megapixels", "0.05")
    assert (second["skipped"], second["known_bad"]) == (1, 1)
    third, _ = run(photos, index, tiny_model_dir)  # the default limit: it fits now
    assert (third["embedded"], third["skipped"], third["known_bad"]) == (1, 0, 0)


def test_a_bad_file_that_is_deleted_leaves_the_record(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    bad = messy(photos)
    index = tmp_path / "index"
    run(photos, index, tiny_model_dir)
    records = list((tmp_path / "clipsearch-cache" / "bad-files").glob("*.json"))
    assert len(records) == 1 and len(json.loads(records[0].read_text())["files"]) == 2
    bad["corrupt"].unlink()
    run(photos, index, tiny_model_dir)
    assert list(json.loads(records[0].read_text())["files"]) == [os.path.realpath(bad["letter"])]
    bad["letter"].unlink()
    run(photos, index, tiny_model_dir)
    assert not records[0].exists()  # nothing left to remember


def test_reasons_that_can_pass_are_not_lasting(tmp_path, monkeypatch):
    photo = draw_image(tmp_path / "a.png")
    assert decode_job((str(tmp_path / "gone.png"), 224, 100.0))[2:] == ("file vanished before it could be read",
                                                                         False)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(photo.read_bytes()[:200])
    _, decoded, reason, lasting = decode_job((str(truncated), 224, 100.0))
    assert decoded is None and lasting and reason.startswith(("corrupt", "not an image"))

    def failing_disk(*args, **kwargs):
        raise OSError(5, "Input/output error")  # EIO from a flaky share: may pass

    monkeypatch.setattr(Image, "open", failing_disk)
    with pytest.raises(SkipImage) as info:
        load_image(str(photo))
    assert not info.value.lasting and str(info.value).startswith("read error")


@pytest.mark.slow
def test_a_killed_run_keeps_the_bad_files_it_found(tmp_path, tiny_model_dir):
    """Issue #15, defect 5: the record was written only when a run ended, so a run
    killed by kill -9 forgot every bad file it had found. It is written as they are
    found (at most every CHECKPOINT_SECONDS)."""
    import signal
    import subprocess
    import sys
    import time

    photos = tmp_path / "photos"
    (photos / "000-broken.jpg").parent.mkdir(parents=True)
    (photos / "000-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    for i in range(300):  # enough work after the bad file for the kill to land mid-run
        draw_image(photos / f"{i + 1:03d}-good.png", ("red", "green", "blue")[i % 3], "circle", size=(1200, 900))
    records = Path(os.environ["CLIPSEARCH_CACHE_DIR"]) / "bad-files"
    process = subprocess.Popen([sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index",
                                str(tmp_path / "index"), "--model", str(tiny_model_dir), "--workers", "0",
                                "--batch-size", "4", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(records.glob("*.json")) and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    summary, _ = run(photos, tmp_path / "index", tiny_model_dir)
    assert summary["unchanged"] < 300, "the run had ended before it was killed: give it more work"
    assert summary["known_bad"] == 1 and summary["skipped"] == 1
