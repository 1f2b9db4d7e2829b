"""The photo share disappearing during an ingest: the run prints its summary, then fails
in one line naming the folder (it did not reach everything), and the next run goes on.
A file that vanishes after it was decoded is reported as vanished, not as a decoder
error."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from clipsearch import images
from clipsearch.cli import cli
from clipsearch.fingerprint import HEAD, TAIL
from clipsearch.images import decode_job
from clipsearch.ingest import pipeline

from support import draw_collection, draw_image


def lost_after(monkeypatch, count: int, lose) -> None:
    """The real walk, with `lose()` (the share going) once it has yielded `count` files."""
    walk = pipeline.walk_images

    def walking(*args, **kwargs):
        for i, entry in enumerate(walk(*args, **kwargs)):
            if i == count:
                lose()
            yield entry

    monkeypatch.setattr(pipeline, "walk_images", walking)


def ingest_args(tmp_path, tiny_model_dir, root) -> list[str]:
    return ["ingest", str(root), "--index", str(tmp_path / "index"), "--model", str(tiny_model_dir), "-w", "0",
            "-q", "--json"]


def test_a_root_gone_during_the_run_fails_after_the_summary_and_the_next_run_goes_on(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    share = tmp_path / "share"
    (share / "2024").mkdir(parents=True)
    for photo in draw_collection(share / "2023", 12)[6:]:  # 12 distinct pictures
        photo.rename(share / "2024" / photo.name)
    args = ingest_args(tmp_path, tiny_model_dir, share)
    lost_after(monkeypatch, 3, lambda: share.rename(tmp_path / "away"))
    result = CliRunner().invoke(cli, [*args, "--prune"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    summary = json.loads(result.stdout.splitlines()[0])  # the summary first, as ever
    assert summary["found"] < 12 and summary["unreached"].startswith(f"{share} is gone or cannot be read now")
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: {share} is gone") and "did not reach everything" in error

    monkeypatch.undo()
    (tmp_path / "away").rename(share)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["embedded"] + summary["unchanged"] == 12 and summary["unreached"] is None


def test_a_share_unmounted_during_the_run_leaves_a_mount_point_that_is_not_the_folder(tmp_path, tiny_model_dir,
                                                                                      monkeypatch, tmpfs):
    """Its mount point is there and can be listed, empty: another folder than the run
    began with. --prune leaves its points to the next run."""
    share = tmpfs.mount(tmp_path / "share")
    draw_collection(share, 12)
    args = ingest_args(tmp_path, tiny_model_dir, share)
    assert CliRunner().invoke(cli, args[:-1]).exit_code == 0
    draw_image(share / "new.png", "white", "star")
    lost_after(monkeypatch, 2, lambda: subprocess.run(["umount", "-l", str(share)], check=True))
    result = CliRunner().invoke(cli, [*args, "--prune", "--allow-missing"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {share} is gone or cannot be read now")
    assert json.loads(result.stdout.splitlines()[0])["removed"] == 0


@pytest.mark.parametrize("size", ["small", "large"])
def test_a_file_that_vanishes_after_its_decode_is_reported_as_vanished(tmp_path, monkeypatch, size):
    """Deleted between its decode and its fingerprint (small) or its full-content hash
    (a file larger than the fingerprint reads)."""
    path = draw_image(tmp_path / "photo.png")
    if size == "large":
        with open(path, "ab") as f:  # bytes after IEND: still a valid PNG
            f.write(os.urandom(HEAD + TAIL + 1))
    read_last = "content_hash" if size == "large" else "fingerprint"
    real = getattr(images, read_last)

    def vanishing(name, *args):
        os.unlink(name)
        return real(name, *args)

    monkeypatch.setattr(images, read_last, vanishing)
    _, decoded, reason, lasting = decode_job((str(path), 224, 100.0))
    assert (decoded, reason, lasting) == (None, "file vanished before it could be read", False)
