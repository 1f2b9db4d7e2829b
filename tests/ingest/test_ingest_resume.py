"""Ingest survives kill -9 at any moment, and shards split a folder exactly."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from clipsearch.config import Settings
from clipsearch.index import open_index, point_id
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.pipeline import in_shard, parse_shard

from support import settings_for

CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")


def many_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.new("RGB", (40, 32), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(path)
        paths.append(path)
    return paths


def start_ingest(folder, index, model):
    env = dict(os.environ, CLIPSEARCH_PROGRESS_SECONDS="0.05", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [CLIPSEARCH, "ingest", str(folder), "--index", str(index), "--model", str(model),
         "--batch-size", "4", "--workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_embedded(proc, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        match = re.search(r"embedded (\d+)", line)
        if match and int(match.group(1)) >= at_least:
            return int(match.group(1))
        if time.monotonic() > deadline:
            break
    raise AssertionError("ingest never reported progress")


@pytest.mark.parametrize("kill_after", ["model-load", "mid-run"])
def test_kill_minus_nine_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, kill_after):
    photos = many_images(tmp_path / "photos", 400)
    index = tmp_path / "index"
    proc = start_ingest(tmp_path / "photos", index, tiny_model_dir)
    committed_seen = 0
    if kill_after == "mid-run":
        committed_seen = wait_for_embedded(proc, 8)
    else:
        time.sleep(1.5)  # still importing or loading the model
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the first run finished before it could be killed"

    rerun = subprocess.run(
        [CLIPSEARCH, "ingest", str(tmp_path / "photos"), "--index", str(index), "--model", str(tiny_model_dir),
         "--workers", "0", "--json", "-q"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    import json

    summary = json.loads(rerun.stdout)
    # Files whose content is already indexed (a repeated picture) are copied, not embedded.
    assert summary["embedded"] + summary["unchanged"] + summary["copied"] == len(photos)
    # Batches committed before the kill are not redone.
    assert summary["unchanged"] >= committed_seen
    with open_index(Settings.resolve(index=str(index), model=str(tiny_model_dir))) as idx:
        assert idx.count() == len(photos)
        stored = {r.payload["path"] for r in idx.scroll()}
    assert stored == {str(p.resolve()) for p in photos}


def test_parse_shard_rejects_bad_specs():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "a/b", "3", "1/0"):
        with pytest.raises(Exception, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("backend", ["edge", "memory"])
def test_shards_partition_a_folder_exactly(tmp_path, encoder, tiny_model_dir, backend):
    photos = many_images(tmp_path / "photos", 60)
    settings = settings_for(backend, tmp_path, tiny_model_dir)
    per_shard = []
    for i in range(3):
        with open_index(settings, create=True) as index:
            before = index.count() if index.exists() else 0
            summary = ingest([str(tmp_path / "photos")], encoder, index,
                             IngestOptions(workers=0, shard=(i, 3), quiet=True))
            per_shard.append(summary.embedded)
            assert index.count() == before + summary.embedded
    with open_index(settings) as index:
        assert index.count() == len(photos)
        ids = [r.id for r in index.scroll()]
    assert len(ids) == len(set(ids)) == len(photos)
    assert sum(per_shard) == len(photos)
    assert all(n > 0 for n in per_shard)
    for i in range(3):
        expected = sum(in_shard(point_id(p), (i, 3)) for p in photos)
        assert per_shard[i] == expected
