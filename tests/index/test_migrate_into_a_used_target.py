"""`clipsearch migrate` run again after the target has been used (ingested into,
pruned): it never undoes a write made there. A point re-ingested in the target from a
newer file keeps the target's version; the source's points added since are carried
over; a target pruned since is refused in one line, nothing copied (a copy would put
the deleted points back). Through an embedded target and the REST double."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.index import open_index, point_id
from clipsearch.ingest import IngestOptions, ingest

from support import draw_collection, draw_image, export_server, settings_for

QUIET = IngestOptions(workers=0, quiet=True)


def _migrate(source, target) -> "object":
    return CliRunner().invoke(cli, ["migrate", "--index", source.index, "--collection", source.collection,
                                    "--to", target.index, "--to-collection", target.collection, "-q"])


def _ingested(target_backend, tmp_path, tiny_model_dir, monkeypatch):
    """(an embedded source holding 10 photos, a target of `target_backend`, the photos)."""
    source = settings_for("edge", tmp_path / "source", tiny_model_dir)
    target = settings_for(target_backend, tmp_path / "target", tiny_model_dir)
    if target.backend == "server":
        export_server(target_backend, monkeypatch)
    photos = draw_collection(tmp_path / "photos", 10)
    ingest([str(tmp_path / "photos")], settings=source, options=QUIET)
    return source, target, photos


def _points(settings) -> dict:
    with open_index(settings) as index:
        return {r.id: (r.payload, r.vector) for r in index.scroll(with_vectors=True)}


@pytest.mark.parametrize("target_backend", ["edge", "rest"])
def test_a_migrate_run_again_keeps_what_was_written_to_the_target(target_backend, tmp_path, tiny_model_dir,
                                                                   monkeypatch):
    source, target, photos = _ingested(target_backend, tmp_path, tiny_model_dir, monkeypatch)
    first = _migrate(source, target)
    assert first.exit_code == 0, first.output

    # The target is used: a photo edited since is ingested there, not into the source.
    edited = photos[3]
    draw_image(edited, "green", "square", mark=7)
    os.utime(edited, ns=(os.stat(edited).st_atime_ns, os.stat(edited).st_mtime_ns + 10**9))
    assert ingest([str(tmp_path / "photos")], settings=target, options=QUIET).embedded == 1
    written = _points(target)[point_id(edited)]
    # The source goes on too: a photo only it has.
    draw_image(tmp_path / "later" / "new.png", "blue", "triangle", mark=9)
    ingest([str(tmp_path / "later")], settings=source, options=QUIET)

    again = _migrate(source, target)
    assert again.exit_code == 0, again.output
    assert "copied 1, already there 9, 1 kept as the target has them" in again.output
    held = _points(target)
    assert held[point_id(edited)][0] == written[0]  # not put back to the source's older version
    assert np.allclose(held[point_id(edited)][1], written[1], atol=1e-6)
    assert point_id(tmp_path / "later" / "new.png") in held and len(held) == 11


@pytest.mark.parametrize("target_backend", ["edge", "rest"])
def test_a_migrate_run_again_over_a_target_pruned_since_is_refused(target_backend, tmp_path, tiny_model_dir,
                                                                    monkeypatch):
    source, target, photos = _ingested(target_backend, tmp_path, tiny_model_dir, monkeypatch)
    assert _migrate(source, target).exit_code == 0
    photos[0].unlink()
    assert ingest([str(tmp_path / "photos")], settings=target, options=IngestOptions(
        workers=0, quiet=True, prune=True)).removed == 1

    again = _migrate(source, target)
    assert again.exit_code != 0
    [line] = again.output.strip().splitlines()
    assert "was written to since a migrate from" in line and "held 10 points then, 9 now" in line
    assert f"`clipsearch ingest DIR --index {target.index} --collection {target.collection}`" in line
    assert "--to-collection NEW" in line
    held = _points(target)
    assert point_id(photos[0]) not in held and len(held) == 9
