"""`clipsearch reindex` back to a version an earlier switch kept says so: what the
version held came from that switch, not from "an earlier run" (the words for a
stopped reindex resumed), and what it embeds is what was added since it was kept."""

from __future__ import annotations

import json

from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.ingest import IngestOptions, ingest

from support import draw_collection, draw_image, settings_for

QUIET = IngestOptions(workers=0, quiet=True)


def _reindex(settings, model, *more: str):
    return CliRunner().invoke(cli, ["reindex", "--index", settings.index, "--collection", settings.collection,
                                    "--model", str(model), "--workers", "0", "-q", *more])


def test_switching_back_names_the_kept_version_and_what_was_added_since(tmp_path, tiny_model_dir, other_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 6)
    ingest([str(tmp_path / "photos")], settings=settings, options=QUIET)
    away = _reindex(settings, other_model_dir, "--json")
    assert away.exit_code == 0, away.output
    first = json.loads(away.output)
    assert first["kept"] and not first["switched_back"]

    for i in range(2):  # added while the name means the other model's version
        draw_image(tmp_path / "photos" / f"added-{i}.png", "blue", "triangle", mark=40 + i)
    ingest([str(tmp_path / "photos")], settings=settings.with_overrides(model=str(other_model_dir)), options=QUIET)

    back = _reindex(settings, tiny_model_dir)
    assert back.exit_code == 0, back.output
    line = back.output.strip()
    assert "earlier run" not in line
    assert line.startswith(f"back to the kept version {first['kept']!r}: it held 6 of the 8 images; "
                           "embedded 2 added or changed since it was kept"), line
    assert f"{settings.collection!r} now means {first['kept']!r}" in line
    assert f"the old collection is kept as {first['new']!r}" in line
