"""A full disk under the embedded index folder (issue #15).

The index lives on a size-limited tmpfs; a filler file takes the space. The engine maps
its files: a write into a mapped page with no space behind it kills the process with
SIGBUS (measured: "Bus error", no Python exception), and on tmpfs even the first load of
a shard allocates its vector chunk (32 MiB). So clipsearch must refuse before the engine
runs out: one line naming the index folder and "no space left on device", exit 1, no
traceback, the batches committed before kept and searchable; once space is freed the
same command completes with exact counts. One trial each; the real console script, the
tiny CLIP, tiny PNGs. Mounting needs root (CI and sessions run as root); elsewhere the
tests skip, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipsearch.index.edge import MARKER, NEW_COLLECTION, WRITE_RESERVE

from faults.conftest import SmallDisk, one_line_error, read_index, tiny_pngs

pytestmark = pytest.mark.slow


@pytest.fixture
def disk(tmp_path):
    small = SmallDisk(tmp_path / "disk", "200m")
    yield small
    small.unmount()


@pytest.fixture
def photos(tmp_path) -> tuple[Path, Path]:
    """100 images ingested first, then 400 more."""
    first, second = tmp_path / "photos" / "first", tmp_path / "photos" / "second"
    tiny_pngs(first, 100)
    tiny_pngs(second, 400, offset=100)
    return first, second


def test_ingest_stops_at_a_full_disk_keeps_what_it_committed_and_resumes(cli, disk, photos):
    first, second = photos
    index = disk.path / "index"
    assert cli.ingest(first, index).returncode == 0
    assert cli.status(index).returncode == 0  # the first open has mapped the shard's files
    # Room for some batches of 4 past the reserve, not for all 400 images.
    disk.fill(leave=WRITE_RESERVE + 256 * 1024)
    stopped = cli.ingest(second, index, "--batch-size", "4", "-q", "--json")
    one_line_error(stopped, "no space left on device", str(index))

    contents = read_index(index)
    assert 100 < contents.count < 500, contents.count  # stopped mid-run, batches kept
    kept = json.loads(stopped.stdout)  # what a script reading --json learns of it
    assert kept["error"].startswith(f"no space left on device for index {index}")
    assert kept["embedded"] == contents.count - 100 and kept["stopped"] is None
    assert contents.count == len(contents.ids) and contents.ids_match_paths
    check = cli.status(index, "--check")
    assert check.returncode == 0 and "healthy" in check.stdout, check.stdout + check.stderr
    found = cli.search(index)
    assert found.returncode == 0 and len(found.stdout.split()) == 5, found.stderr

    # Not a byte left: even a search is refused with the same line, not a crash.
    disk.fill(leave=0)
    one_line_error(cli.search(index), "no space left on device", str(index))
    one_line_error(cli.status(index), "no space left on device", str(index))

    disk.free()
    resumed = cli.ingest(second, index, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["embedded"] == 500 - contents.count and summary["unchanged"] == contents.count - 100
    after = read_index(index)
    assert after.count == len(after.ids) == 500


def test_a_new_index_on_a_full_disk_is_refused_before_anything_half_made(cli, disk, photos):
    first, _ = photos
    index = disk.path / "new-index"
    disk.fill(leave=0)
    one_line_error(cli.ingest(first, index, "-q"), "no space left on device", str(index))
    assert not index.exists() or sorted(p.name for p in index.iterdir()) == []  # no marker half written

    # Room for the marker, not for the engine's first files: refused before they are made.
    disk.free()
    disk.fill(leave=4 << 20)
    one_line_error(cli.ingest(first, index, "-q"), "no space left on device", str(index),
                   "creating its collection")
    assert sorted(p.name for p in index.iterdir()) == sorted([MARKER, "images.lock"])

    # Room for a write's reserve, not also for what the new collection takes at once: the
    # figure said is what it needs (64 MB made the collection, then refused its first photo).
    disk.free()
    disk.fill(leave=WRITE_RESERVE + (8 << 20))
    refused = cli.ingest(first, index, "-q")
    one_line_error(refused, "no space left on device", str(index), "creating its collection")
    assert f"creating its collection needs {(WRITE_RESERVE + NEW_COLLECTION) >> 20}.0 MB" in refused.stderr

    disk.free()
    done = cli.ingest(first, index, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["embedded"] == 100 and read_index(index).count == 100
