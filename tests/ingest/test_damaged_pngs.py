"""A PNG whose compressed data stream is cut short, inside chunks that are otherwise
well formed, was embedded 80% black: reading its EXIF orientation decoded it, the
decode error was swallowed, and the next load() returned the partial picture (issue
#15, defect 3). A partial decode is a skipped file with its reason."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from clipsearch.images import SkipImage, load_image

from support import draw_collection


def rewrite_png(source, target, change_idat) -> None:
    """`source` with each IDAT chunk's data passed through `change_idat`, CRCs made valid."""
    data = source.read_bytes()
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            body = change_idat(body)
        out += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        pos += 12 + length
    target.write_bytes(bytes(out))


def noisy_png(path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (160, 240, 3), dtype=np.uint8)).save(path)
    return path


def test_a_cut_data_stream_is_skipped_not_half_black(tmp_path):
    good = noisy_png(tmp_path / "good.png")
    cut = tmp_path / "cut.png"
    rewrite_png(good, cut, lambda body: body[: len(body) // 2])
    assert load_image(str(good)).image.size  # the untouched file decodes
    try:
        decoded = load_image(str(cut))
    except SkipImage as exc:
        assert "corrupt or truncated" in str(exc)
    else:
        black = (np.asarray(decoded.image) == 0).all(axis=2).mean()
        raise AssertionError(f"a cut PNG was decoded ({black:.0%} black pixels) instead of skipped")


def test_ingest_skips_and_reports_the_cut_png(tmp_path, tiny_model_dir):
    from clipsearch import IngestOptions, Settings, ingest

    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    rewrite_png(noisy_png(tmp_path / "source.png"), photos / "cut.png", lambda body: body[: len(body) // 3])
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu")
    summary = ingest([str(photos)], settings=settings,
                     options=IngestOptions(workers=0, quiet=True, report=str(tmp_path / "skipped.jsonl")))
    assert (summary.embedded, summary.skipped) == (3, 1)
    assert "cut.png" in (tmp_path / "skipped.jsonl").read_text()
