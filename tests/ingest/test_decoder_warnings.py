"""Pillow's warnings about files it can still use (corrupt EXIF, a tag longer than the
file) went straight to stderr, hundreds of them on a large collection, through --json
and --quiet runs (issue #15, defect 5). They go into the skip report instead, and the
summary counts the files that had them; the file itself is ingested."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from support import draw_collection


def jpeg_with_a_broken_exif_tag(path, seed: int = 7) -> None:
    """A good picture whose EXIF ImageDescription claims 5,000 bytes: Pillow warns
    "Tag data larger than file" and reads the image. Another seed, another picture
    (byte-identical files are embedded once)."""
    rng = np.random.default_rng(seed)
    exif = Image.Exif()
    exif[0x010E] = "x" * 100
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", exif=exif.tobytes())
    data = bytearray(buffer.getvalue())
    entry = data.find(b"MM\x00*") + 10  # the first IFD entry: the description's
    assert data[entry:entry + 2] == b"\x01\x0e"
    data[entry + 4:entry + 8] = (5000).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "decoder-pool"])
def test_warnings_go_to_the_report_not_stderr(tmp_path, tiny_model_dir, workers):
    photos = tmp_path / "photos"
    draw_collection(photos, 20)
    for i in range(3):
        jpeg_with_a_broken_exif_tag(photos / f"warned-{i}.jpg", seed=i)
    report = tmp_path / "report.jsonl"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLIPSEARCH_")}
    env.update(CLIPSEARCH_MODEL=str(tiny_model_dir), CLIPSEARCH_DEVICE="cpu", HF_HUB_OFFLINE="1",
               CLIPSEARCH_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "clipsearch.cli", "ingest", str(photos), "--index",
                           str(tmp_path / "index"), "--json", "-q", "--report", str(report), "--batch-size", "4",
                           "--workers", str(workers)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --json -q: nothing but the summary, on stdout
    summary = json.loads(done.stdout)
    assert (summary["embedded"], summary["skipped"], summary["warned"]) == (23, 0, 3)
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    warned = {os.path.basename(e["path"]): e for e in entries}
    assert sorted(warned) == ["warned-0.jpg", "warned-1.jpg", "warned-2.jpg"]
    assert all("Tag data larger than file" in e["warning"] and "reason" not in e for e in entries)
