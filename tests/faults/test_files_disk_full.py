"""A full disk under the files clipsearch writes beside the index (issue #15, faults to
survive): the skip report (`ingest --report FILE`), the known-bad record and the model
identity record (the cache folder, CLIPSEARCH_CACHE_DIR), and the exported ONNX text
tower (the cache folder, after a query on the full path).

Each file is put on its own size-limited tmpfs, filled up first (the index stays on the
ordinary disk). What must hold:

- the skip report is part of what the user asked for: ingest stops, exit 1, with one
  line naming the file and "no space left on device", no traceback; the batches
  committed before stay in the index and answer a search; the report holds whole lines
  only; after space is freed a re-run completes with exact counts;
- the cache only saves time: the command carries on and succeeds, with one warning line
  naming the file or folder and "no space left on device"; nothing half-written is left
  (in particular no partial export that a later query could load); after space is
  freed, the next run writes the cache (a full disk is not remembered as a model whose
  export failed).

Runs the real console script (.venv/bin/clipsearch) with the tiny CLIP and drawn PNGs.
Mounting needs root (CI and sessions run as root); elsewhere each test skips, saying
why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from clipsearch.config import Settings
from clipsearch.encoders import cache as model_cache
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search import Searcher

from faults.conftest import SmallDisk
from support import draw_collection

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("clipsearch"))  # the console script of this venv
NO_SPACE = "no space left on device"


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(size: str = "1m") -> SmallDisk:
        disk = SmallDisk(tmp_path / f"disk{len(disks)}", size)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.unmount()


def run(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def the_error(result: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed command (and nothing that looks like a traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def the_warning(result: subprocess.CompletedProcess) -> str:
    """The one warning line of a command that carried on."""
    assert "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, result.stderr
    return warnings[0]


def summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def photos_with_bad_files(folder: Path, good: int, bad: int) -> list[Path]:
    """`good` drawn images, then (in walk order) `bad` files that are not images, with
    long names so that the report's lines are long."""
    draw_collection(folder, good)
    bad_files = []
    for i in range(bad):
        path = folder / f"zz-not-an-image-{i:02d}-{'x' * 100}.png"
        path.write_text("not a picture\n")
        bad_files.append(path)
    return bad_files


# -- the skip report: a stop -------------------------------------------------------------------


def test_a_full_disk_under_the_skip_report_stops_ingest_and_keeps_what_was_committed(
        tmp_path, small_disk, tiny_model_dir, encoder):
    """One trial: 4 images, then 30 bad files whose report lines (about 250 bytes each)
    fill the 4 KiB left on the report's disk part way through a line."""
    photos = tmp_path / "photos"
    bad = photos_with_bad_files(photos, good=4, bad=30)
    disk = small_disk("1m")
    disk.fill(leave=4096)
    report = disk.path / "skipped.jsonl"
    index = tmp_path / "index"
    args = ["ingest", photos, "--index", index, "--model", tiny_model_dir, "-w", "0", "-b", "2", "--report", report,
            "--json"]

    stopped = run(*args)
    assert stopped.returncode == 1, stopped.stderr
    error = the_error(stopped)
    assert str(report) in error and NO_SPACE in error and "--report" in error, error
    kept = json.loads(stopped.stdout)  # what the run kept, for a script, with the error's line
    assert kept["error"] == error.removeprefix("Error: ") and kept["embedded"] == 4, kept
    lines = report.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line: the one cut short was taken back
    rows = [json.loads(line) for line in lines[:-1]]
    assert 0 < len(rows) < len(bad)
    assert {row["path"] for row in rows} <= {os.path.realpath(p) for p in bad}

    # Both batches of images went to the index before the first bad file, and answer a search.
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(index), device="cpu")
    with open_index(settings) as opened:
        assert opened.count() == 4
        hits = Searcher(encoder, opened).text("a red circle", k=10)
    assert sorted(hit.path for hit in hits) == sorted(os.path.realpath(p) for p in photos.glob("0*.png"))

    disk.free()
    again = summary(run(*args))
    # The images are unchanged; every bad file is reported; those the first run had
    # reported before it stopped are known bad now (the one whose line failed is not).
    assert (again["embedded"], again["unchanged"], again["skipped"], again["known_bad"]) == (0, 4, 30, len(rows))
    rows_after = [json.loads(line) for line in report.read_text().splitlines()]
    assert rows_after[:len(rows)] == rows
    assert sorted(row["path"] for row in rows_after[len(rows):]) == sorted(os.path.realpath(p) for p in bad)


# -- the cache: carry on -----------------------------------------------------------------------


def test_a_full_cache_disk_during_ingest_warns_once_and_the_run_completes(tmp_path, small_disk, tiny_model_dir):
    """One trial: the model identity record and the known-bad record cannot be written;
    the run embeds everything, says so in one line, leaves no temporary file; the next
    run, with space, writes both records."""
    photos = tmp_path / "photos"
    bad = photos_with_bad_files(photos, good=4, bad=2)
    disk = small_disk("256k")
    cache_dir = disk.path / "cache"
    disk.fill(leave=0)
    env = {"CLIPSEARCH_CACHE_DIR": str(cache_dir)}
    args = ["ingest", photos, "--index", tmp_path / "index", "--model", tiny_model_dir, "-w", "0", "--json"]

    first = run(*args, env=env)
    assert (summary(first)["embedded"], summary(first)["skipped"]) == (4, 2)
    warning = the_warning(first)
    assert warning.startswith("clipsearch: warning: cannot write ") and str(cache_dir) in warning, warning
    assert NO_SPACE in warning, warning
    assert disk.files() == []  # no record, and no half-written temporary file

    disk.free()
    second = run(*args, env=env)
    assert (summary(second)["unchanged"], summary(second)["skipped"], summary(second)["known_bad"]) == (4, 2, 0)
    assert "warning" not in second.stderr.lower(), second.stderr
    [record] = (cache_dir / "bad-files").glob("*.json")
    assert set(json.loads(record.read_text())["files"]) == {os.path.realpath(p) for p in bad}
    assert len(list((cache_dir / model_cache.IDENTITIES).glob("*.json"))) == 1


def test_a_full_cache_disk_after_a_query_warns_once_and_a_later_query_exports(tmp_path, small_disk, tiny_model_dir,
                                                                             encoder):
    """One trial through the CLI: the first query's answer is printed and the command
    succeeds, with one warning line; nothing of the export is left; once there is
    room, the next query exports (the full disk was not recorded as a failed export)
    and the one after takes the fast path with the same hits."""
    photos = tmp_path / "photos"
    draw_collection(photos, 8)
    settings = Settings.resolve(model=str(tiny_model_dir), index=str(tmp_path / "index"), device="cpu",
                                collection=f"c{uuid.uuid4().hex[:8]}")
    ingest([str(photos)], encoder, options=IngestOptions(workers=0, quiet=True), settings=settings)
    disk = small_disk("1m")
    cache_dir = disk.path / "cache"
    # Room for the tokenizer (12 KiB) and part of the traced graph (about 190 KiB): the
    # export fails part way, and removing what it wrote frees room for a failure record.
    disk.fill(leave=96 * 1024)
    env = {"CLIPSEARCH_CACHE_DIR": str(cache_dir)}
    args = ["search", "a red circle", "--index", settings.index, "--collection", settings.collection,
            "--model", tiny_model_dir, "-k", "3", "-f", "json"]

    first = run(*args, env=env)
    assert first.returncode == 0, first.stderr
    warning = the_warning(first)
    assert str(cache_dir / model_cache.TOWERS) in warning and NO_SPACE in warning, warning
    hits = [json.loads(line)["path"] for line in first.stdout.splitlines()]
    assert len(hits) == 3
    assert disk.files() == []  # no entry, no half-built .tmp- folder, no failure record

    disk.free()
    second = run(*args, "-v", env=env)
    assert second.returncode == 0, second.stderr
    assert "exported the text tower" in second.stderr and "failed before" not in second.stderr, second.stderr
    assert "warning" not in second.stderr.lower()
    third = run(*args, "-v", env=env)
    assert "fast path: text tower" in third.stderr, third.stderr
    assert [json.loads(line)["path"] for line in third.stdout.splitlines()] == hits


def test_every_amount_of_space_short_of_an_export_leaves_nothing_behind(small_disk, tiny_model_dir, encoder,
                                                                        capsys, monkeypatch):
    """Trials: free space from 0 up, in 24 KiB steps, until the export fits (about 15
    trials on the tiny model): each failure raises CacheFull (so the query's caller
    carries on), warns in one line, removes all it wrote, and is not recorded as a
    failed export; the failures seen include the tokenizer's, torch's and
    onnxruntime's writes (three libraries, three ways of saying "disk full")."""
    from clipsearch.encoders import location
    from clipsearch.encoders.text_export import export_text_tower

    disk = small_disk("1m")
    monkeypatch.setenv("CLIPSEARCH_CACHE_DIR", str(disk.path / "cache"))
    monkeypatch.setattr(model_cache, "_warned", False)  # this process may have warned before
    folder, _ = location.model_folder(str(tiny_model_dir))
    key = location.folder_key(folder)
    causes = set()
    for leave in range(0, 1024 * 1024, 24 * 1024):
        if disk.filler.exists():
            disk.free()
        disk.fill(leave)
        before = disk.free_bytes()
        model_cache.wrote()  # each trial is a fresh process as far as the warning goes
        try:
            export_text_tower(encoder, key, folder, str(tiny_model_dir))
        except model_cache.CacheFull as exc:
            causes.add(type(exc.__cause__).__name__)
            assert disk.free_bytes() == before and disk.files() == [], (leave, disk.files())
            warning = capsys.readouterr().err.strip()
            assert warning.count("\n") == 0 and NO_SPACE in warning and str(model_cache.towers_dir()) in warning
            try:  # what a query does next (encoders/query.py), a failed write included
                model_cache.write_failure(key, str(tiny_model_dir), folder, str(exc))
            except OSError:
                pass
            assert model_cache.read_entry(key) is None  # not recorded: the next query tries again
            continue
        break
    else:
        pytest.fail("the export never fitted in 1 MiB")
    entry = model_cache.read_entry(key)
    assert entry is not None and not entry.failed
    assert len(causes) >= 3, causes
