"""The ingest stage on the edge and :memory: backends: bad files are reported and never
stop a run, good files land with their payload, the walk skips what a person would,
re-runs are incremental, prune is confined to its roots, and worker decoding matches
in-process decoding."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.images import load_image
from clipsearch.index import ancestor_dirs, open_index, point_id

from support import draw_collection, draw_image, settings_for
from support import run_ingest as run
from support import stored_payloads as stored

# `rest`: the server double (tests/doubles/qdrant_rest_double.py): ingest's server path, bulk
# load included, in every run.
BACKENDS = ["edge", "memory", "rest"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def index(backend, tmp_path, tiny_model_dir):
    with open_index(settings_for(backend, tmp_path, tiny_model_dir), create=True) as idx:
        yield idx


def vectors_by_path(index) -> dict[str, np.ndarray]:
    return {r.payload["path"]: r.vector for r in index.scroll(with_vectors=True)}


def real(path) -> str:
    return os.path.realpath(path)


def whole_second_mtimes(paths, start: int = 1_700_000_000) -> None:
    """Known, distinct mtimes, so a later touch is sure to change them."""
    for i, p in enumerate(paths):
        os.utime(p, (start + i, start + i))


@contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise TimeoutError(f"gave up after {seconds} s: the walk does not end")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- bad files ---------------------------------------------------------------------------


def write_truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_png_bomb(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A valid 1-bit PNG of width x height pixels that is only a few KB on disk."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, list[Path], dict[str, str]]:
    """Good images, and bad files with a word their report reason must contain."""
    folder = tmp_path / "messy"
    good = draw_collection(folder, 4)
    good.append(draw_image(folder / "sub" / "deep.jpg", "blue", "square", fmt="JPEG"))
    bad: dict[str, str] = {}
    (folder / "zero.jpg").write_bytes(b"")
    bad[real(folder / "zero.jpg")] = "empty"
    bad[real(write_truncated_jpeg(folder / "truncated.jpg"))] = "truncated"
    (folder / "noise.png").write_bytes(random.Random(1).randbytes(4096))
    bad[real(folder / "noise.png")] = "not an image"
    (folder / "letter.jpg").write_text("Dear reader, this is not a JPEG.\n" * 20)
    bad[real(folder / "letter.jpg")] = "not an image"
    bad[real(write_png_bomb(folder / "sub" / "bomb.png"))] = "too large"
    return folder, good, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_and_reported(messy_folder, encoder, index, tmp_path, workers):
    folder, good, bad = messy_folder
    report = tmp_path / "report.jsonl"
    summary = run([folder], encoder, index, workers=workers, batch_size=2, report=str(report))
    assert summary.found == len(good) + len(bad)
    assert summary.embedded == len(good)
    assert summary.skipped == len(bad)
    assert summary.unchanged == 0

    rows = [json.loads(line) for line in report.read_text().splitlines()]
    reasons = {row["path"]: row["reason"] for row in rows}
    assert len(rows) == len(bad), rows
    assert set(reasons) == set(bad)
    for path, word in bad.items():
        assert word in reasons[path], (path, reasons[path])
        assert "\n" not in reasons[path]

    assert index.count() == len(good)
    assert set(stored(index)) == {real(p) for p in good}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_that_went_bad_since_it_was_embedded_loses_its_point(tmp_path, encoder, index, workers):
    """Its vector is of a picture no longer there: searches must not return it. A file
    that cannot be read for now (an I/O error) would keep it; a damaged one does not.
    A run that left such a point (before this) has it removed by the next one."""
    photos = draw_collection(tmp_path / "lib", 4)
    run([tmp_path / "lib"], encoder, index, workers=workers)
    photos[0].write_bytes(b"not an image any more")
    summary = run([tmp_path / "lib"], encoder, index, workers=workers)
    assert (summary.skipped, summary.removed, summary.unchanged) == (1, 1, 3)
    assert real(photos[0]) not in stored(index) and index.count() == 3
    again = run([tmp_path / "lib"], encoder, index, workers=workers)  # skipped again, nothing left to remove
    assert (again.skipped, again.removed, index.count()) == (1, 0, 3)

    # a point left by a run before this change: removed when the known-bad file is met
    draw_image(photos[1], "white", "star")
    run([tmp_path / "lib"], encoder, index, workers=workers)
    left = {r.id: r for r in index.retrieve([point_id(photos[1])], with_vectors=True)}
    photos[1].write_bytes(b"broken too")
    run([tmp_path / "lib"], encoder, index, workers=workers)
    record = left[point_id(photos[1])]
    index.upsert([record.id], record.vector[None, :], [record.payload])  # as that earlier run left it
    summary = run([tmp_path / "lib"], encoder, index, workers=workers)
    assert (summary.skipped, summary.removed) == (2, 1) and index.count() == 2


def test_bad_file_between_good_ones_in_one_batch(tmp_path, encoder, index):
    """A bad file in the middle of a batch leaves the batch's good files indexed."""
    folder = tmp_path / "mixed"
    draw_image(folder / "a.png", "red")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    draw_image(folder / "c.png", "green")
    summary = run([folder], encoder, index, batch_size=8)
    assert (summary.embedded, summary.skipped) == (2, 1)
    assert set(stored(index)) == {real(folder / "a.png"), real(folder / "c.png")}


def test_unreadable_file(tmp_path, encoder, index):
    if os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not stop reads")
    folder = tmp_path / "locked"
    draw_image(folder / "ok.png")
    locked = draw_image(folder / "locked.png", "blue")
    locked.chmod(0)
    try:
        report = tmp_path / "report.jsonl"
        summary = run([folder], encoder, index, report=str(report))
    finally:
        locked.chmod(0o644)
    assert (summary.embedded, summary.skipped) == (1, 1)
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert rows[0]["path"] == real(locked) and "permission" in rows[0]["reason"]


def test_max_megapixels(tmp_path, encoder, index):
    folder = tmp_path / "sizes"
    small = draw_image(folder / "small.png", size=(20, 20))  # 400 pixels
    big = draw_image(folder / "big.png", size=(80, 60))  # 4800 pixels
    report = tmp_path / "report.jsonl"
    summary = run([folder], encoder, index, max_megapixels=0.001, report=str(report))
    assert (summary.embedded, summary.skipped) == (1, 1)
    assert set(stored(index)) == {real(small)}
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert rows == [{"path": real(big), "reason": rows[0]["reason"]}]
    assert "too large" in rows[0]["reason"] and "max-megapixels" in rows[0]["reason"]


def test_decompression_bomb_is_refused_quickly(tmp_path, encoder, index):
    folder = tmp_path / "bombs"
    draw_image(folder / "fine.png")
    bomb = write_png_bomb(folder / "bomb.png", 30000, 30000)  # 900 megapixels in ~100 KB
    assert bomb.stat().st_size < 1_000_000
    report = tmp_path / "report.jsonl"
    with time_limit(60):
        summary = run([folder], encoder, index, report=str(report))
    assert (summary.embedded, summary.skipped) == (1, 1)
    row = json.loads(report.read_text())
    assert row["path"] == real(bomb)
    assert "too large" in row["reason"] or "bomb" in row["reason"]


def test_report_is_appended_not_overwritten(tmp_path, encoder, index):
    folder = tmp_path / "r"
    draw_image(folder / "good.png")
    (folder / "bad.png").write_bytes(b"junk")
    report = tmp_path / "report.jsonl"
    report.write_text(json.dumps({"path": "/earlier", "reason": "earlier run"}) + "\n")
    run([folder], encoder, index, report=str(report))
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["/earlier", real(folder / "bad.png")]


def test_no_report_file_when_nothing_skipped(tmp_path, encoder, index, images):
    report = tmp_path / "report.jsonl"
    run([images[0].parent], encoder, index, report=str(report))
    assert not report.exists() or report.read_text() == ""


# -- good files and their payload ------------------------------------------------------------


def test_payload_of_every_image(images, encoder, index):
    summary = run([images[0].parent], encoder, index, batch_size=5)
    assert (summary.found, summary.embedded, summary.skipped) == (12, 12, 0)
    assert index.count() == 12
    records = {r.payload["path"]: r for r in index.scroll(with_vectors=True)}
    assert set(records) == {real(p) for p in images}
    for path in images:
        record = records[real(path)]
        payload = record.payload
        st = os.stat(path)
        with Image.open(path) as img:
            size = img.size
        assert record.id == point_id(path)
        assert payload["size"] == st.st_size
        assert payload["mtime"] == pytest.approx(st.st_mtime, abs=1e-5)
        assert payload["mtime_ns"] == st.st_mtime_ns
        assert (payload["width"], payload["height"]) == size
        assert payload["dirs"] == ancestor_dirs(real(path))
        assert real(path.parent) in payload["dirs"] and "/" in payload["dirs"]
        expected = encoder.encode_images([load_image(str(path), target=encoder.image_size).image])[0]
        np.testing.assert_allclose(record.vector, expected, atol=1e-5)
        assert np.linalg.norm(record.vector) == pytest.approx(1.0, abs=1e-5)


def test_image_modes_and_formats(tmp_path, encoder, index):
    folder = tmp_path / "formats"
    folder.mkdir()
    base = Image.new("RGB", (40, 30), (200, 30, 30))
    base.convert("L").save(folder / "grey.png")
    base.convert("P").save(folder / "palette.gif")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    base.convert("LA").save(folder / "grey-alpha.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    base.save(folder / "photo.webp")
    base.save(folder / "bitmap.bmp")
    base.save(folder / "scan.tiff")
    base.save(folder / "UPPER.JPG")
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "deep16.png")
    names = sorted(p.name for p in folder.iterdir())
    summary = run([folder], encoder, index, report=str(tmp_path / "report.jsonl"))
    report = tmp_path / "report.jsonl"
    assert summary.skipped == 0, report.read_text() if report.exists() else ""
    assert summary.embedded == len(names)
    payloads = stored(index)
    assert sorted(Path(p).name for p in payloads) == names
    assert all((p["width"], p["height"]) == (40, 30) for p in payloads.values())


def test_exif_rotated_jpeg_reports_oriented_size(tmp_path, encoder, index):
    folder = tmp_path / "exif"
    folder.mkdir()
    img = Image.new("RGB", (96, 64), (30, 170, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    img.save(folder / "rotated.jpg", exif=exif.tobytes())
    img.save(folder / "upright.jpg")
    run([folder], encoder, index)
    payloads = stored(index)
    rotated, upright = payloads[real(folder / "rotated.jpg")], payloads[real(folder / "upright.jpg")]
    assert (rotated["width"], rotated["height"]) == (64, 96)
    assert (upright["width"], upright["height"]) == (96, 64)
    decoded = load_image(str(folder / "rotated.jpg"), target=encoder.image_size)
    assert decoded.image.height > decoded.image.width  # pixels were turned too


def test_large_jpeg_reports_original_size(tmp_path, encoder, index):
    """JPEG draft mode decodes big photos at reduced scale; the payload keeps the real size."""
    folder = tmp_path / "big"
    draw_image(folder / "big.jpg", "orange", "circle", size=(1200, 800), fmt="JPEG")
    run([folder], encoder, index)
    payload = stored(index)[real(folder / "big.jpg")]
    assert (payload["width"], payload["height"]) == (1200, 800)
    decoded = load_image(str(folder / "big.jpg"), target=encoder.image_size)
    assert min(decoded.image.size) == encoder.image_size


# -- the walk --------------------------------------------------------------------------------


def test_hidden_appledouble_and_excluded_are_skipped(tmp_path, encoder, index):
    root = tmp_path / "walk"
    keep = [draw_image(root / "keep.png"), draw_image(root / "album" / "keep2.jpg", fmt="JPEG"),
            draw_image(root / "album" / "Capital.PNG", "blue")]
    draw_image(root / ".hidden.png")
    draw_image(root / ".cache" / "thumb.png")
    draw_image(root / "album" / "._keep2.jpg", fmt="JPEG")  # a real image, skipped by name
    draw_image(root / "raw" / "dump.png")
    draw_image(root / "album" / "photo-skip.png")
    draw_image(root / "drafts" / "d1.png")
    (root / "notes.txt").write_text("not an image")
    (root / "album" / "._broken.jpg").write_bytes(b"\0\5\26\7 AppleDouble junk")
    report = tmp_path / "report.jsonl"
    summary = run([root], encoder, index, exclude=["raw", "*-skip.png", "*/drafts/*"], report=str(report))
    assert set(stored(index)) == {real(p) for p in keep}
    assert summary.found == 3
    assert summary.skipped == 0, report.read_text()
    assert not report.exists() or report.read_text() == ""


def test_an_exclude_glob_with_a_relative_path_matches_the_end_of_a_path(tmp_path, monkeypatch):
    """`--exclude 2019/Paris` could never match the full path it was compared with (it
    starts with /): it now skips every folder .../2019/Paris, and `./raw/`, `~/...` mean
    what a person who typed them means."""
    from clipsearch.ingest.walk import walk_images

    root = tmp_path / "lib"
    kept = [draw_image(root / "2020" / "Paris" / "a.png"), draw_image(root / "2019" / "Lyon" / "b.png", "blue")]
    draw_image(root / "2019" / "Paris" / "c.png", "green")
    draw_image(root / "old" / "2019" / "Paris" / "d.png", "black")
    draw_image(root / "raw" / "e.png", "white")
    draw_image(root / "home-excluded" / "f.png", "yellow")
    monkeypatch.setenv("HOME", str(tmp_path))
    found = {e.path for e in walk_images([str(root)], ("2019/Paris", "./raw/", "~/lib/home-excluded"))}
    assert found == {real(p) for p in kept}



def test_a_link_into_an_excluded_folder_does_not_bring_it_back(tmp_path, encoder, index):
    """--exclude keeps a folder out of the index (and out of what serve shares): a link
    from elsewhere to a photo in it, or to the folder itself, was followed and indexed
    under the excluded path. The same holds for one file met by a watcher's event."""
    from clipsearch.ingest.walk import image_file

    root = tmp_path / "lib"
    ok = draw_image(root / "pub" / "ok.png")
    diary = draw_image(root / "private" / "diary.png", "blue")
    (root / "pub" / "innocent.png").symlink_to(diary)
    (root / "pub" / "more").symlink_to(root / "private")
    summary = run([root], encoder, index, exclude=["private"])
    assert set(stored(index)) == {real(ok)} and summary.found == 1
    assert image_file(str(root / "pub" / "innocent.png"), [real(root)], ["private"]) is None
    assert image_file(str(root / "pub" / "innocent.png"), [real(root)], []).path == real(diary)


def test_broken_links_and_fifos_named_like_images_are_reported(tmp_path, encoder, index):
    """A link into a drive that is not mounted, or a FIFO called x.jpg, was left out with
    no word: each is a skip in the report, saying what it is."""
    root = tmp_path / "lib"
    ok = draw_image(root / "ok.png")
    (root / "best.jpg").symlink_to("/nonexistent-usb/best.jpg")
    os.mkfifo(root / "pipe.jpg")
    report = tmp_path / "report.jsonl"
    with time_limit(60):  # a FIFO opened for reading would wait for a writer forever
        summary = run([root], encoder, index, report=str(report))
    assert set(stored(index)) == {real(ok)} and summary.skipped == 2
    text = report.read_text()
    assert "broken link to /nonexistent-usb/best.jpg" in text and "not a regular file (a named pipe)" in text

def test_symlink_loop_does_not_hang(tmp_path, encoder, index):
    root = tmp_path / "loopy"
    paths = draw_collection(root / "a", 3)
    (root / "a" / "back").symlink_to(root)  # a/back -> root -> a -> back ...
    (root / "self").symlink_to(".")
    (root / "link-to-a").symlink_to(root / "a")
    (root / "a" / "same.png").symlink_to(paths[0])  # a second name for one file
    with time_limit(60):
        summary = run([root], encoder, index)
    assert summary.found == 3
    assert summary.embedded == 3
    assert index.count() == 3
    assert set(stored(index)) == {real(p) for p in paths}


def test_symlinked_root_is_canonical(tmp_path, encoder, index, images):
    link = tmp_path / "photos-link"
    link.symlink_to(images[0].parent)
    run([link], encoder, index)
    assert set(stored(index)) == {real(p) for p in images}
    # The same files through their real folder are unchanged, not new points.
    whole = run([images[0].parent], encoder, index)
    assert whole.embedded + whole.unchanged == 12
    assert index.count() == 12


# -- incremental runs --------------------------------------------------------------------------


def test_second_run_is_all_unchanged(images, encoder, index):
    first = run([images[0].parent], encoder, index)
    assert (first.embedded, first.unchanged) == (12, 0)
    second = run([images[0].parent], encoder, index)
    assert (second.found, second.embedded, second.unchanged, second.skipped) == (12, 0, 12, 0)
    assert index.count() == 12


# Modification times (ns) whose float seconds qdrant-edge hands back one ulp off after a
# payload round trip; roughly one real mtime in nine behaves like this. The unchanged
# check must not depend on a float surviving the round trip (regression test).
ROUNDTRIP_UNSAFE_MTIME_NS = (1795735602708683700, 1761088697344380100, 1749357786646532500)


@pytest.mark.parametrize("backend", ["edge", "memory"])
def test_unchanged_detection_with_real_world_mtimes(backend, tmp_path, tiny_model_dir, encoder, images):
    for path, ns in zip(images, ROUNDTRIP_UNSAFE_MTIME_NS):
        os.utime(path, ns=(ns, ns))
    with open_index(settings_for(backend, tmp_path, tiny_model_dir), create=True) as index:
        run([images[0].parent], encoder, index)
        second = run([images[0].parent], encoder, index)
    assert (second.embedded, second.unchanged) == (0, 12)


def test_modified_files_are_re_embedded_and_touched_ones_refreshed(images, encoder, index):
    """A touched file (same bytes, new mtime: a backup restored without times, say) keeps
    its vector, found by its content fingerprint: no decode, no encode."""
    whole_second_mtimes(images)
    run([images[0].parent], encoder, index)
    before = vectors_by_path(index)

    changed, touched = images[3], images[7]
    draw_image(changed, "black", "triangle", size=(50, 90))  # new content and size
    os.utime(changed, (1_800_000_000, 1_800_000_000))
    os.utime(touched, (1_800_000_100, 1_800_000_100))  # same bytes, new mtime
    summary = run([images[0].parent], encoder, index)
    assert (summary.embedded, summary.unchanged, summary.skipped) == (1, 11, 0)

    after = vectors_by_path(index)
    payloads = stored(index)
    assert payloads[real(changed)]["width"] == 50 and payloads[real(changed)]["height"] == 90
    assert payloads[real(changed)]["mtime"] == 1_800_000_000
    assert payloads[real(touched)]["mtime"] == 1_800_000_100
    assert np.abs(after[real(changed)] - before[real(changed)]).max() > 1e-3
    np.testing.assert_array_equal(after[real(touched)], before[real(touched)])
    for path in images:
        if path not in (changed, touched):
            np.testing.assert_array_equal(after[real(path)], before[real(path)])
    assert index.count() == 12


def test_only_the_rewritten_file_is_re_embedded(images, encoder, index):
    whole_second_mtimes(images)
    run([images[0].parent], encoder, index)
    images[5].write_bytes(images[5].read_bytes() + b"\0")  # other bytes, the same picture
    os.utime(images[5], (1_900_000_000, 1_900_000_000))
    summary = run([images[0].parent], encoder, index)
    assert (summary.embedded, summary.unchanged) == (1, 11)
    assert stored(index)[real(images[5])]["mtime"] == 1_900_000_000


def test_new_file_is_added(images, encoder, index):
    whole_second_mtimes(images)
    run([images[0].parent], encoder, index)
    new = draw_image(images[0].parent / "zz-new.png", "purple", "square")
    os.utime(new, (1_650_000_000, 1_650_000_000))
    summary = run([images[0].parent], encoder, index)
    assert (summary.found, summary.embedded, summary.unchanged) == (13, 1, 12)
    assert real(new) in stored(index)


# -- prune ----------------------------------------------------------------------------------


def test_prune_removes_deleted_files_only_under_root(tmp_path, encoder, index):
    lib = tmp_path / "lib"
    a = draw_collection(lib / "a", 3)
    ab = draw_collection(lib / "ab", 3)  # a sibling whose name starts with "a"
    b = draw_collection(tmp_path / "other", 3)
    run([lib / "a", lib / "ab", tmp_path / "other"], encoder, index)
    assert index.count() == 9

    for gone in (a[0], ab[0], b[0]):
        gone.unlink()
    summary = run([lib / "a"], encoder, index, prune=True)
    assert summary.removed == 1
    assert (summary.found, summary.unchanged, summary.embedded) == (2, 2, 0)
    paths = set(stored(index))
    assert real(a[0]) not in paths
    # Deleted files outside the pruned root keep their points until their own root is pruned.
    assert real(ab[0]) in paths and real(b[0]) in paths
    assert index.count() == 8

    summary = run([tmp_path / "other"], encoder, index, prune=True)
    assert summary.removed == 1
    assert real(b[0]) not in set(stored(index))
    assert index.count() == 7


def test_no_prune_keeps_points_of_deleted_files(images, encoder, index):
    whole_second_mtimes(images)
    run([images[0].parent], encoder, index)
    images[0].unlink()
    summary = run([images[0].parent], encoder, index)
    assert summary.removed == 0
    assert index.count() == 12


def test_prune_of_a_subfolder(tmp_path, encoder, index):
    top = tmp_path / "top"
    keep = draw_collection(top, 2)
    inner = draw_collection(top / "inner", 2)
    whole_second_mtimes(keep + inner)
    run([top], encoder, index)
    keep[0].unlink()
    inner[0].unlink()
    summary = run([top / "inner"], encoder, index, prune=True)
    assert summary.removed == 1
    assert real(keep[0]) in stored(index)
    assert real(inner[0]) not in stored(index)


def test_prune_keeps_the_points_of_files_still_there_that_the_walk_did_not_reach(tmp_path, encoder, index,
                                                                                  monkeypatch):
    """Another shard's files and those in a folder the walk cannot read are not gone:
    a run with --prune removes only points whose file is gone, and those the walk's
    rules leave out (an --exclude'd one: tests/ingest/test_odd_image_files.py)."""
    import errno

    from clipsearch.ingest import pipeline

    lib = tmp_path / "lib"
    photos = draw_collection(lib, 8)
    others = draw_collection(lib / "pngs", 3) + draw_collection(lib / "locked", 2)
    whole_second_mtimes(photos + others)
    run([lib], encoder, index)
    assert index.count() == 13

    for options in ({"shard": (0, 2)}, {"shard": (1, 2)}):
        summary = run([lib], encoder, index, prune=True, **options)
        assert summary.removed == 0 and index.count() == 13, options

    # A folder the walk cannot read (root reads every folder, so the refusal is made up)
    from clipsearch.ingest import prune

    locked = real(lib / "locked")
    real_listdir = os.listdir

    def refused(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_listdir(path)

    walk = pipeline.walk_images
    monkeypatch.setattr(prune.os, "listdir", refused)
    monkeypatch.setattr(pipeline, "walk_images", lambda roots, *a, **k: (
        e for e in walk(roots, *a, **k) if not e.path.startswith(locked + os.sep)))
    summary = run([lib], encoder, index, prune=True)
    assert summary.removed == 0 and index.count() == 13
    monkeypatch.undo()

    photos[0].unlink()
    summary = run([lib], encoder, index, prune=True)
    assert summary.removed == 1 and index.count() == 12 and real(photos[0]) not in stored(index)

    # a rename that changes only the case leaves no point under the old spelling (a file
    # system that ignores case would find the file by it: prune reads the folder's listing)
    photos[1].rename(photos[1].with_name(photos[1].name.upper()))
    run([lib], encoder, index, prune=True)
    assert real(photos[1]) not in stored(index) and index.count() == 12


def test_prune_leaves_a_folder_most_of_whose_images_are_gone_unless_allowed(tmp_path, encoder, index):
    """A drive or share that is not mounted looks like a folder whose photos were all
    deleted: pruning it would cost every vector of it. Gone files are grouped by the
    nearest folder still there (the share's empty mount point); past half of its images
    (and past 10) the group is left, said in not_pruned (the CLI exits 1 on it), the
    rest of the run kept. A share smaller than half the library is caught the same way."""
    lib = tmp_path / "lib"
    photos = draw_collection(lib / "nas" / "2023", 60)  # each of 2 shards holds 10+
    local = draw_collection(lib / "local", 40)
    trip = draw_collection(lib / "trip", 12)
    whole_second_mtimes(photos + local + trip)
    run([lib], encoder, index)
    assert index.count() == 112
    (lib / "nas" / "2023").rename(tmp_path / "elsewhere")  # unmounted: an empty mount point
    new = draw_image(lib / "local" / "new.png", "white", "star")
    for roots, options in (([lib], {}), ([lib / "nas"], {}), ([lib, lib / "nas"], {}), ([lib], {"shard": (0, 2)}),
                           ([lib], {"shard": (1, 2)})):
        summary = run(roots, encoder, index, prune=True, **options)
        assert summary.removed == 0 and index.count() == 113, (roots, options)
        if not options:
            assert summary.not_pruned == (f"not pruned: 60 of the 60 images under {real(lib / 'nas')} are gone (a "
                                          "drive or share that is not mounted?); mount it and run again, or give "
                                          "--allow-missing if they were deleted")
    assert real(new) in stored(index)  # the run's own work is kept

    for gone in local[:2]:  # a few deleted: pruned as ever
        gone.unlink()
    (tmp_path / "elsewhere").rename(lib / "nas" / "2023")
    summary = run([lib], encoder, index, prune=True)
    assert (summary.removed, summary.not_pruned) == (2, None)

    shutil.rmtree(lib / "trip")  # a folder deleted whole: its folder is gone, the library's is not
    assert run([lib], encoder, index, prune=True).removed == 12
    for gone in local[2:30]:  # most of a folder's images deleted: left, unless allowed
        gone.unlink()
    assert run([lib / "local"], encoder, index, prune=True).not_pruned.startswith("not pruned: 28 of the 39 images")
    summary = run([lib / "local"], encoder, index, prune=True, allow_missing=True)
    assert (summary.removed, summary.not_pruned, index.count()) == (28, None, 71)


def test_the_cli_prints_the_summary_then_fails_on_what_prune_left(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    lib = tmp_path / "lib"
    draw_collection(lib / "share", 12)
    args = ["ingest", str(lib), "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "-w", "0", "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (lib / "share").rename(tmp_path / "away")
    (lib / "share").mkdir()
    result = CliRunner().invoke(cli, [*args, "--prune", "--json"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["removed"] == 0 and summary["not_pruned"].startswith("not pruned: 12 of the 12 images")
    assert result.output.strip().splitlines()[-1].startswith("Error: not pruned: 12 of the 12 images under")
    assert CliRunner().invoke(cli, [*args, "--prune", "--allow-missing"]).exit_code == 0


# -- workers -----------------------------------------------------------------------------------


def test_workers_give_identical_vectors(backend, tmp_path, tiny_model_dir, encoder, images):
    (images[0].parent / "bad.jpg").write_bytes(b"nope")
    results = {}
    for workers in (0, 2):
        with open_index(settings_for(backend, tmp_path, tiny_model_dir), create=True) as index:
            summary = run([images[0].parent], encoder, index, workers=workers, batch_size=5)
            assert (summary.embedded, summary.skipped) == (12, 1)
            results[workers] = ({r.payload["path"]: r for r in index.scroll(with_vectors=True)})
    serial, pooled = results[0], results[2]
    assert set(serial) == set(pooled) == {real(p) for p in images}
    for path in serial:
        assert serial[path].payload == pooled[path].payload
        np.testing.assert_allclose(serial[path].vector, pooled[path].vector, atol=1e-6)


# -- refusals ---------------------------------------------------------------------------------


def test_empty_folder_raises(tmp_path, encoder, index):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipsearchError) as excinfo:
        run([empty], encoder, index)
    message = str(excinfo.value)
    assert "no image files" in message and real(empty) in message
    assert "\n" not in message


def test_folder_with_only_hidden_images_raises(tmp_path, encoder, index):
    folder = tmp_path / "hidden-only"
    draw_image(folder / ".secret.png")
    with pytest.raises(ClipsearchError, match="no image files"):
        run([folder], encoder, index)


def test_missing_root_raises(tmp_path, encoder, index):
    with pytest.raises(ClipsearchError, match="not a folder"):
        run([tmp_path / "absent"], encoder, index)



def test_other_model_is_refused(tmp_path, other_model_dir, encoder, index, images):
    from clipsearch.encoders import Encoder

    run([images[0].parent], encoder, index)
    other = Encoder(str(other_model_dir), device="cpu")
    draw_image(images[0].parent / "zz-extra.png")
    with pytest.raises(ClipsearchError, match="model mismatch"):
        run([images[0].parent], other, index)
    assert index.count() == 12


def test_summary_times_the_first_batch_apart(images, encoder, index):
    """`first_batch_seconds` (model load, decoder start and the first batch) lies
    inside the run's seconds, and a run that embeds nothing has none."""
    first = run([images[0].parent], encoder, index, batch_size=4)
    assert first.embedded == 12
    assert 0 < first.first_batch_seconds <= first.seconds
    again = run([images[0].parent], encoder, index, batch_size=4)
    assert again.embedded == 0 and again.first_batch_seconds is None


def test_a_new_models_load_is_announced_and_counted_in_the_runs_time(tmp_path, tiny_model_dir, monkeypatch):
    """A model the cache does not know is loaded with torch before the collection is
    made, seconds before any progress: a line says so, and the summary's time has it."""
    import time

    import clipsearch.encoders.torch_clip as torch_clip

    loaded = torch_clip.Encoder.__init__

    def slow_load(self, *args, **kwargs):
        time.sleep(1.5)  # torch's imports and the weights, on a slow disk
        loaded(self, *args, **kwargs)

    monkeypatch.setattr(torch_clip.Encoder, "__init__", slow_load)
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(tmp_path / "cache"))  # nothing known of the model
    draw_collection(tmp_path / "photos", 3)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(tmp_path / "index"),
                                      "--model", str(tiny_model_dir), "-w", "0", "--json"])
    wall = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert f"loading the model {tiny_model_dir} (torch)..." in result.stderr
    assert json.loads(result.stdout)["seconds"] >= 0.8 * wall, wall
