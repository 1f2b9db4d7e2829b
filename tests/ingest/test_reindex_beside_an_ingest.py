"""A reindex on a Qdrant server while another client ingests into the same name: no
write an ingest counted is lost at the switch. The embedded index holds its lock over
the switch; a server has none, so the old collection is marked as switching before the
reindex's last catch-up, and an ingest's write that finds the mark (or its collection
gone) fails in one line instead of being counted. Through the REST and gRPC doubles."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch.cli import cli
from clipsearch.encoders import Encoder
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index, point_id
from clipsearch.index.client import ClientIndex
from clipsearch.index.versions import version_name
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.reindex import reindex

from support import draw_collection, draw_image, export_server, settings_for

QUIET = IngestOptions(workers=0, quiet=True, batch_size=4, precision="")


def _new_photos(folder, count, first=1000):
    """Pictures unlike draw_collection's (marked), so ingest embeds them, not relinks."""
    return [draw_image(folder / f"new-{i}.png", "blue", "triangle", mark=first + i) for i in range(count)]


def _ingested(kind, tmp_path, model_dir, count, options=QUIET):
    """Settings of a server collection (`kind`'s double) holding `count` drawn photos, and the photos."""
    settings = settings_for(kind, tmp_path, model_dir)
    photos = draw_collection(tmp_path / "photos", count)
    ingest([str(tmp_path / "photos")], settings=settings, options=options)
    return settings, photos


def _status(settings) -> str:
    return CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection]).output


def _paths(settings) -> set[str]:
    with open_index(settings) as index:
        return {r.path for r in index.scroll()}


@pytest.mark.parametrize("kind", ["rest", "grpc"])
@pytest.mark.parametrize("switch", ["first", "later"])
def test_an_ingest_just_before_the_switch_is_kept_or_refused_never_lost(kind, switch, tmp_path, tiny_model_dir,
                                                                        other_model_dir, monkeypatch):
    """The ingest writes after the reindex's last catch-up, just before the switch: the
    first switch of a name drops that collection, a later one moves the alias off it.
    Either way the ingest must not count what the name then lacks."""
    settings, _ = _ingested(kind, tmp_path, tiny_model_dir, 12)
    current, new = str(tiny_model_dir), str(other_model_dir)
    if switch == "later":  # the name is an alias already; the reindex switches it back
        assert reindex(settings.with_overrides(model=new), QUIET).switched
        current, new = new, str(tiny_model_dir)
    added = _new_photos(tmp_path / "meanwhile", 5)
    outcome: list = []
    real_switch = ClientIndex.switch

    def ingest_then_switch(self, *args, **kwargs):
        try:
            outcome.append(ingest([str(tmp_path / "meanwhile")], settings=settings.with_overrides(model=current),
                                  options=QUIET))
        except ClipsearchError as exc:
            outcome.append(exc)
        return real_switch(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ClientIndex, "switch", ingest_then_switch)
        summary = reindex(settings.with_overrides(model=new), QUIET)
    assert summary.switched
    [result] = outcome
    if isinstance(result, ClipsearchError):  # refused: in one line, saying what to do
        assert "`clipsearch reindex` switched" in str(result) and "run the same command again" in str(result)
        again = ingest([str(tmp_path / "meanwhile")], settings=settings.with_overrides(model=new), options=QUIET)
        assert again.embedded + again.unchanged == 5
    else:
        assert result.embedded == 5
    assert {str(p) for p in added} <= _paths(settings)  # counted, so there
    with open_index(settings) as index:
        assert index.count() == 17


def test_a_write_that_lands_in_the_new_version_after_a_first_switch_is_taken_back(tmp_path, tiny_model_dir,
                                                                                  other_model_dir):
    """A writer that confirmed its last batch before the reindex marked the collection,
    and writes its next one after the first switch made the name an alias of the new
    version: that batch lands there, among another model's vectors. It is taken back
    and the writer fails; the ingest run again adds the image with the new model."""
    settings, photos = _ingested("rest", tmp_path, tiny_model_dir, 12)
    tiny = Encoder(str(tiny_model_dir), "cpu")
    with open_index(settings, create=True) as writer:
        writer.ensure_collection(tiny.identity)
        [first] = writer.retrieve([point_id(photos[0])], with_vectors=True)
        writer.upsert([first.id], first.vector[None, :], [first.payload])  # confirmed, before the reindex
        assert reindex(settings.with_overrides(model=str(other_model_dir)), QUIET).switched
        late = tiny.encode_images([Image.new("RGB", (8, 8))] * 2)
        ids = [point_id(photos[1]), point_id(tmp_path / "photos" / "late.png")]
        with pytest.raises(ClipsearchError, match="`clipsearch reindex` switched"):
            writer.upsert(ids, late, [{"path": str(photos[1])}, {"path": str(tmp_path / "photos" / "late.png")}])
    with open_index(settings) as index:
        assert index.meant() == version_name(settings.collection, Encoder(str(other_model_dir), "cpu").identity)
        held = {r.id: r.vector for r in index.scroll(with_vectors=True)}
    assert not any(np.allclose(vector, late[0], atol=1e-4) for vector in held.values())  # no tiny vector stays
    assert point_id(photos[1]) not in held
    again = ingest([str(tmp_path / "photos")], settings=settings.with_overrides(model=str(other_model_dir)),
                   options=QUIET)
    assert again.embedded == 1
    with open_index(settings) as index:
        assert index.count() == 12


def test_a_reindex_stopped_before_its_switch_leaves_ingests_working(tmp_path, tiny_model_dir, other_model_dir,
                                                                    monkeypatch):
    export_server("rest", monkeypatch)  # the key, for the commands
    settings, _ = _ingested("rest", tmp_path, tiny_model_dir, 8)

    def stopped(self, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the catch-up, before the switch

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(ClientIndex, "switch", stopped)
        reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    assert "switching:" not in _status(settings)
    _new_photos(tmp_path / "more", 3)
    assert ingest([str(tmp_path / "more")], settings=settings, options=QUIET).embedded == 3


def test_status_says_while_a_name_is_being_switched(tmp_path, tiny_model_dir, other_model_dir, monkeypatch):
    export_server("rest", monkeypatch)  # the key, for the commands
    settings, _ = _ingested("rest", tmp_path, tiny_model_dir, 4)
    said = []

    def look_then_switch(self, *args, **kwargs):
        said.append(_status(settings))
        return real_switch(self, *args, **kwargs)

    real_switch = ClientIndex.switch
    monkeypatch.setattr(ClientIndex, "switch", look_then_switch)
    reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    assert "switching:    a reindex is switching this name" in said[0]


def test_an_ingest_during_the_reindexs_copy_of_the_old_collection_is_caught_up(tmp_path, tiny_model_dir,
                                                                              other_model_dir, monkeypatch):
    """The first switch of a name keeps the old collection by copying it (migrate):
    an ingest that adds to it during that copy is no failure of the copy (it said
    'migration incomplete: source has 300 points, target holds 305'); the catch-up puts
    the new images in the new version. The copy reads 256 points a page: the images
    added are named so that their points come on the second page."""
    settings, _ = _ingested("rest", tmp_path, tiny_model_dir, 300, options=IngestOptions(workers=0, quiet=True))
    late = tmp_path / "late"
    names = (f"late-{i}.png" for i in range(10_000))
    chosen = [name for name in names if point_id(late / name).startswith("f")][:5]
    kept = version_name(settings.collection, Encoder(str(tiny_model_dir), "cpu").identity)
    real_upsert, ingested = ClientIndex.upsert, []

    def ingest_during_the_copy(self, *args, **kwargs):
        if self.collection == kept and not ingested:
            for i, name in enumerate(chosen):
                draw_image(late / name, "green", "square", mark=2000 + i)
            ingested.append(ingest([str(late)], settings=settings, options=QUIET))
        return real_upsert(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ClientIndex, "upsert", ingest_during_the_copy)
        summary = reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    assert ingested[0].embedded == 5
    assert summary.switched and summary.kept == kept and summary.caught_up == 5
    assert {str(late / name) for name in chosen} <= _paths(settings)
    with open_index(settings) as index:
        assert index.count() == 305


def test_a_partial_copy_of_the_old_collection_is_not_listed_as_kept(tmp_path, tiny_model_dir, other_model_dir,
                                                                    monkeypatch):
    export_server("rest", monkeypatch)  # the key, for the commands
    settings, _ = _ingested("rest", tmp_path, tiny_model_dir, 8)
    kept = version_name(settings.collection, Encoder(str(tiny_model_dir), "cpu").identity)
    real_upsert = ClientIndex.upsert

    def stop_in_the_copy(self, *args, **kwargs):
        if self.collection == kept:
            raise KeyboardInterrupt
        return real_upsert(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(ClientIndex, "upsert", stop_in_the_copy)
        reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    status = _status(settings)
    assert not [line for line in status.splitlines() if line.startswith("versions:") and kept in line]
    assert f"reindex:      {kept!r}" in status
