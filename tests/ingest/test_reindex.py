"""`clipsearch reindex --model NEW` on every backend: the collection's images embedded
again by another model into a version of the collection, then one switch of the name;
the old collection kept (and found again by a reindex back) or dropped; a model with
the same image tower only recorded. The kill and the fine-tune -> reindex -> search
loop are in tests/faults/test_kill_reindex.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.encoders import Encoder
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.index.versions import version_name
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.reindex import reindex
from clipsearch.search import search

from support import draw_collection, draw_image

QUIET = IngestOptions(workers=0, quiet=True, batch_size=8, precision="")


@pytest.fixture
def indexed(backend_settings, tmp_path):
    """A collection of 20 drawings made with the tiny model."""
    photos = draw_collection(tmp_path / "photos", 20)
    ingest([str(tmp_path / "photos")], settings=backend_settings, options=IngestOptions(workers=0, quiet=True))
    return backend_settings, photos


def _identity(settings):
    with open_index(settings) as index:
        return index.stored_identity(), index.meant(), index.count()


def _vectors(settings) -> dict[str, np.ndarray]:
    with open_index(settings) as index:
        return {r.path: r.vector for r in index.scroll(with_vectors=True)}


def test_reindex_switches_the_name_to_the_new_models_vectors(indexed, other_model_dir, tiny_model_dir):
    settings, photos = indexed
    before = _vectors(settings)
    new = settings.with_overrides(model=str(other_model_dir))
    summary = reindex(new, QUIET)

    assert summary.switched and summary.embedded == 20 and summary.total == 20 and summary.skipped == 0
    other = Encoder(str(other_model_dir), "cpu")
    identity, meant, count = _identity(settings)
    assert meant == summary.new == version_name(settings.collection, other.identity)
    assert identity.image_fingerprint == other.identity.image_fingerprint and count == 20
    after = _vectors(settings)
    assert set(after) == set(before) == {str(p) for p in photos}
    # The new model's own vectors for the files, not the old ones copied.
    assert all(abs(float(np.dot(after[p], before[p]))) < 0.999 for p in after)

    hits = search("a red circle", k=5, settings=new)
    assert len(hits) == 5 and {h.path for h in hits} <= set(after)
    with pytest.raises(ClipsearchError, match="model mismatch"):  # the old model no longer fits the name
        search("a red circle", k=5, settings=settings)

    # The old collection is kept, whole, under its own version name.
    old_identity = Encoder(str(tiny_model_dir), "cpu").identity
    assert summary.kept == version_name(settings.collection, old_identity)
    kept = settings.with_overrides(collection=summary.kept)
    kept_identity, kept_meant, kept_count = _identity(kept)
    assert kept_identity.image_fingerprint == old_identity.image_fingerprint and kept_count == 20
    assert all(np.allclose(v, before[p], atol=1e-6) for p, v in _vectors(kept).items())

    # Ingest follows the name: a new photo goes into the new version, embedded by the new model.
    for i in range(3):
        draw_image(Path(photos[0]).parent / "more" / f"new-{i}.png", "green", "square", mark=200 + i)
    more = ingest([str(Path(photos[0]).parent / "more")], settings=new, options=IngestOptions(workers=0, quiet=True))
    assert more.embedded == 3 and _identity(settings)[2] == 23 and _identity(kept)[2] == 20

    # Back to the old model: the kept version is found, and only the 3 new photos are embedded.
    back = reindex(settings, QUIET)
    assert back.switched and back.new == summary.kept and back.resumed == 20 and back.embedded == 3
    assert back.kept == summary.new
    assert _identity(settings)[1:] == (summary.kept, 23)
    assert len(search("a blue square", k=3, settings=settings)) == 3


def test_drop_old_removes_the_old_collection_and_other_versions(indexed, other_model_dir, tiny_model_dir):
    settings, photos = indexed
    new = settings.with_overrides(model=str(other_model_dir))
    first = reindex(new, QUIET)  # keeps the original as a version
    assert first.kept
    back = reindex(settings, QUIET, keep_old=False)
    assert back.kept is None and back.old == first.new and back.new == first.kept and back.embedded == 0
    with open_index(settings) as index:
        assert index.versions() == [] and index.count() == 20
    with open_index(settings.with_overrides(collection=first.new)) as gone:
        assert not gone.exists()


def test_a_model_with_the_same_image_tower_is_only_recorded(indexed, tiny_model_dir, tmp_path):
    """A text-only fine-tune (--freeze vision): nothing embedded, no new collection,
    the collection records the new model and answers it."""
    settings, photos = indexed
    before = _vectors(settings)
    text_tuned = _with_new_text_tower(tiny_model_dir, tmp_path / "text-tuned")
    summary = reindex(settings.with_overrides(model=str(text_tuned)), QUIET)
    assert not summary.reembedded and summary.embedded == 0 and not summary.switched  # the name means what it did
    identity, meant, count = _identity(settings)
    assert meant == summary.old and identity.name == str(text_tuned) and count == 20
    assert all(np.array_equal(v, before[p]) for p, v in _vectors(settings).items())
    assert "same image tower" in summary.line()



def test_back_to_a_kept_version_with_a_text_tuned_model_records_that_model(indexed, other_model_dir, tiny_model_dir,
                                                                           tmp_path):
    """Back to the kept version with a text-only fine-tune of its model: the version's
    vectors are reused, and the name records the fine-tune (its text tower is what
    searches must use), not the model the version was made with."""
    settings, photos = indexed
    away = reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    text_tuned = _with_new_text_tower(tiny_model_dir, tmp_path / "text-tuned")
    back = reindex(settings.with_overrides(model=str(text_tuned)), QUIET)
    assert back.switched and back.new == away.kept and back.embedded == 0
    identity, meant, count = _identity(settings)
    assert meant == away.kept and count == 20 and identity.name == str(text_tuned)
    tuned = Encoder(str(text_tuned), "cpu").identity
    assert identity.text_fingerprint == tuned.text_fingerprint

def test_files_gone_since_indexing_are_skipped_and_reported(indexed, other_model_dir, tmp_path):
    settings, photos = indexed
    photos[0].unlink()
    report = tmp_path / "skipped.jsonl"
    options = IngestOptions(workers=0, quiet=True, batch_size=8, precision="", report=str(report))
    summary = reindex(settings.with_overrides(model=str(other_model_dir)), options)
    assert summary.switched and summary.embedded == 19 and summary.skipped == 1
    assert _identity(settings)[2] == 19
    assert "gone since it was indexed" in report.read_text() and photos[0].name in report.read_text()


def test_an_unmounted_library_stops_the_reindex_before_the_switch(indexed, other_model_dir, tmp_path):
    """Every image gone (a share that is not mounted): nothing switched, the old
    collection whole, one line; with allow_missing the switch goes ahead without them."""
    settings, photos = indexed
    meant = _identity(settings)[1]
    mounted = photos[0].parent
    mounted.rename(tmp_path / "unmounted")
    new = settings.with_overrides(model=str(other_model_dir))
    with pytest.raises(ClipsearchError, match=r"20 of 20 images could not be read \(first: .*gone since it was "
                                              r"indexed\); not switched.*--allow-missing"):
        reindex(new, QUIET)
    assert _identity(settings)[1:] == (meant, 20)
    assert _identity(settings)[0].image_fingerprint != Encoder(str(other_model_dir), "cpu").identity.image_fingerprint
    (tmp_path / "unmounted").rename(mounted)  # mounted again: the same command finishes the job
    summary = reindex(new, QUIET)
    assert summary.switched and summary.embedded == 20 and _identity(settings)[2] == 20


def test_reindex_cli(tmp_path, tiny_model_dir, other_model_dir):
    draw_collection(tmp_path / "photos", 6)
    index = str(tmp_path / "index")
    runner = CliRunner()
    common = ["--index", index, "--workers", "0"]
    result = runner.invoke(cli, ["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir), *common, "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["reindex", "--model", str(other_model_dir), *common, "-q", "--drop-old"])
    assert result.exit_code == 0, result.output
    assert "reindexed 6 of 6 images" in result.output and "the old collection is dropped" in result.output
    status = runner.invoke(cli, ["status", "--index", index])
    assert "means images-" in status.output and "other-clip" in status.output
    version = "images-" + status.output.split("means images-")[1][:12]
    assert sorted(p.name for p in Path(index).iterdir() if p.is_dir()) == [version]
    missing = runner.invoke(cli, ["reindex", "--model", str(other_model_dir), "--index", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_reindex_json_says_what_happened(tmp_path, tiny_model_dir, other_model_dir):
    """--json: nothing switched when the model is only recorded; with --drop-old, the old
    collection the switch removed is among those dropped."""
    import json

    draw_collection(tmp_path / "photos", 6)
    index = str(tmp_path / "index")
    runner = CliRunner()
    common = ["--index", index, "--workers", "0", "-q", "--json"]
    assert runner.invoke(cli, ["ingest", str(tmp_path / "photos"), "--model", str(tiny_model_dir),
                               *common]).exit_code == 0
    same = runner.invoke(cli, ["reindex", "--model", str(tiny_model_dir), *common])
    assert same.exit_code == 0, same.output
    recorded = json.loads(same.output)
    assert recorded["switched"] is False and recorded["reembedded"] is False and recorded["new"] == "images"
    first = json.loads(runner.invoke(cli, ["reindex", "--model", str(other_model_dir), *common]).output)
    assert first["switched"] and first["kept"] == version_name("images", Encoder(str(tiny_model_dir), "cpu").identity)
    dropping = runner.invoke(cli, ["reindex", "--model", str(tiny_model_dir), *common, "--drop-old"])
    assert dropping.exit_code == 0, dropping.output
    dropped = json.loads(dropping.output)
    assert dropped["switched"] and dropped["new"] == first["kept"] and dropped["kept"] is None
    assert dropped["dropped"] == [first["new"]] and dropped["old"] == first["new"]
    assert sorted(p.name for p in Path(index).iterdir() if p.is_dir()) == [first["kept"]]


def _with_new_text_tower(model_dir: Path, out: Path) -> Path:
    """The model with its text tower's weights nudged: what --freeze vision makes."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(model_dir))
    with torch.no_grad():
        for parameter in model.text_model.parameters():
            parameter.add_(0.01)
    model.save_pretrained(str(out))
    CLIPProcessor.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


def test_a_pinned_open_never_mixes_models_across_a_switch(indexed, other_model_dir, tiny_model_dir):
    """clipsearch serve opens pinned: a server's switch must not hand its loaded model
    another model's vectors. The first switch replaces the collection that bears the
    name by an alias: the pinned open then refuses, in one line. From then on it keeps
    its version across switches. A plain open follows every switch."""
    settings, photos = indexed
    if settings.backend == "edge":
        pytest.skip("an embedded collection is locked by its holder: reindex is refused (next test)")
    tiny = Encoder(str(tiny_model_dir), "cpu").identity
    probe = np.ones(16, dtype=np.float32) / 4
    with open_index(settings, pin=True) as pinned:
        pinned.PIN_CHECK_SECONDS = 0
        first = reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
        assert first.switched
        with pytest.raises(ClipsearchError,
                           match=r"switched by clipsearch reindex.*restart it with the new model \(--model, or "
                                 r"neither --model nor CLIPSEARCH_MODEL: the collection's own\)"):
            pinned.query(probe, 3)
    with open_index(settings, pin=True) as pinned:
        pinned.PIN_CHECK_SECONDS = 0
        assert pinned.collection == first.new
        back = reindex(settings, QUIET)
        assert back.switched and back.new == first.kept
        for _ in range(2):
            assert len(pinned.query(probe, 3)) == 3 and pinned.meant() == first.kept
            assert pinned.stored_identity().image_fingerprint != tiny.image_fingerprint
            with open_index(settings) as plain:
                assert plain.stored_identity().image_fingerprint == tiny.image_fingerprint


def test_an_embedded_collection_held_by_another_process_is_refused(tmp_path, tiny_model_dir, other_model_dir):
    from support import settings_for

    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    with open_index(settings):  # a second open description of the lock: as another process holds it
        with pytest.raises(ClipsearchError, match=r"in use by pid .*stop it, reindex, start it again"):
            reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    assert _identity(settings)[1] == settings.collection  # nothing switched, nothing made
    assert sorted(p.name for p in (tmp_path / "index").iterdir() if p.is_dir()) == [settings.collection]


def test_a_damaged_aliases_record_is_one_line_naming_it(tmp_path, tiny_model_dir, other_model_dir):
    from support import settings_for

    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    record = tmp_path / "index" / "aliases.json"
    record.write_text(record.read_text()[:10])  # cut short, as by a full disk outside clipsearch's writes
    with pytest.raises(ClipsearchError, match=r"aliases.json is damaged .*restore it from a backup, or remove it"):
        open_index(settings)
    record.unlink()  # as the message says: the collections are then reached by their own names
    with open_index(settings) as original_gone:
        assert not original_gone.exists()  # the original was kept under its version name
    assert {p.name for p in (tmp_path / "index").iterdir() if p.is_dir()} == {
        version_name(settings.collection, Encoder(str(tiny_model_dir), "cpu").identity),
        version_name(settings.collection, Encoder(str(other_model_dir), "cpu").identity)}


def test_a_server_switch_killed_between_drop_and_alias_is_finished_by_the_next_open(
        indexed, other_model_dir, monkeypatch):
    """A server's first switch drops the collection that bears the name, then makes
    the name an alias: a kill between leaves the name on nothing, which the next
    client to open it finishes, from the mark the version carries."""
    settings, photos = indexed
    if settings.backend == "edge":
        pytest.skip("the embedded index switches by one atomic rename of aliases.json")
    from qdrant_client import QdrantClient

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # as a kill -9 would stop it: nothing after this runs

    with monkeypatch.context() as patch:
        patch.setattr(QdrantClient, "update_collection_aliases", killed)
        with pytest.raises(KeyboardInterrupt):
            reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    other = Encoder(str(other_model_dir), "cpu").identity
    with open_index(settings) as index:  # the name: healed at the open
        assert index.exists() and index.meant() == version_name(settings.collection, other)
        assert index.stored_identity().image_fingerprint == other.image_fingerprint and index.count() == 20
    hits = search("a red circle", k=3, settings=settings.with_overrides(model=str(other_model_dir)))
    assert len(hits) == 3


def test_a_pinned_process_that_made_its_collection_refuses_writes_after_a_switch(
        backend_settings, tmp_path, tiny_model_dir, other_model_dir):
    """serve --watch on a server with no collection yet makes it, pinned: a later
    switch to another model's vectors stops its very next write."""
    settings = backend_settings
    if settings.backend == "edge":
        pytest.skip("an embedded collection is locked by its holder")
    tiny = Encoder(str(tiny_model_dir), "cpu")
    draw_collection(tmp_path / "photos", 6)
    with open_index(settings, create=True, pin=True) as pinned:
        pinned.ensure_collection(tiny.identity)
        vectors = np.eye(2, tiny.dim, dtype=np.float32)
        pinned.upsert(["00000000-0000-0000-0000-000000000001"], vectors[:1], [{"path": "/x/1.png"}])
        ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
        assert reindex(settings.with_overrides(model=str(other_model_dir)), QUIET).switched
        with pytest.raises(ClipsearchError, match="switched by clipsearch reindex"):
            pinned.upsert(["00000000-0000-0000-0000-000000000002"], vectors[1:], [{"path": "/x/2.png"}])
    with open_index(settings) as index:
        assert index.count() == 6  # the version: the photos, and nothing the pinned process wrote after


def test_reindex_keeps_an_embedded_collections_quantization(tmp_path, tiny_model_dir, other_model_dir):
    from support import settings_for

    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings.with_overrides(quantization="int8", vectors_on_disk=True),
           options=IngestOptions(workers=0, quiet=True))
    summary = reindex(settings.with_overrides(model=str(other_model_dir)), QUIET)
    with open_index(settings) as index:
        assert index.meant() == summary.new
        layout = index.stored_layout()
        assert (layout.quantization, layout.vectors_on_disk) == ("int8", True)


def test_status_lists_the_versions_a_reindex_kept(tmp_path, tiny_model_dir, other_model_dir):
    draw_collection(tmp_path / "photos", 4)
    index = str(tmp_path / "index")
    runner = CliRunner()
    common = ["--index", index, "--workers", "0", "-q"]
    photos = str(tmp_path / "photos")
    assert runner.invoke(cli, ["ingest", photos, "--model", str(tiny_model_dir), *common]).exit_code == 0
    assert "versions:" not in runner.invoke(cli, ["status", "--index", index]).output
    assert runner.invoke(cli, ["reindex", "--model", str(other_model_dir), *common]).exit_code == 0
    status = runner.invoke(cli, ["status", "--index", index]).output
    [kept] = [v for v in json.loads(runner.invoke(cli, ["status", "--index", index, "--json"]).output)["versions"]]
    [line] = [line for line in status.splitlines() if line.startswith("versions:")]
    assert f"{kept['collection']!r} (model {kept['model']}) kept" in line and "reindex --model" in line
    assert runner.invoke(cli, ["reindex", "--model", str(other_model_dir), *common, "--drop-old"]).exit_code == 0
    assert "versions:" not in runner.invoke(cli, ["status", "--index", index]).output


def test_status_tells_apart_a_kept_version_whose_model_folder_was_overwritten(tmp_path, tiny_model_dir,
                                                                             other_model_dir):
    """The same folder, other weights (finetune --overwrite): the kept version's line
    gives its image tower's fingerprint, beside the current model of that name."""
    import shutil

    draw_collection(tmp_path / "photos", 4)
    index, model = str(tmp_path / "index"), tmp_path / "my-clip"
    shutil.copytree(tiny_model_dir, model)
    runner = CliRunner()
    common = ["--index", index, "--workers", "0", "-q"]
    assert runner.invoke(cli, ["ingest", str(tmp_path / "photos"), "--model", str(model), *common]).exit_code == 0
    shutil.rmtree(model)
    shutil.copytree(other_model_dir, model)
    assert runner.invoke(cli, ["reindex", "--model", str(model), *common]).exit_code == 0
    facts = json.loads(runner.invoke(cli, ["status", "--index", index, "--json"]).output)
    [kept] = facts["versions"]
    assert kept["model"] == facts["model"]["name"]
    assert kept["image_fingerprint"] != facts["model"]["image_fingerprint"]
    [line] = [line for line in runner.invoke(cli, ["status", "--index", index]).output.splitlines()
              if line.startswith("versions:")]
    assert f"(model {model}, image {kept['image_fingerprint'][:12]}) kept" in line, line
