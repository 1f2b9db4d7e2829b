"""An embedded index that holds versions of a name (clipsearch reindex keeps the old
one): damage to one collection is said, and its advice followed, without touching the
others; a name whose record (aliases.json) was lost lists its versions and is made to
mean one again; migrate refuses the collection a name means as itself, and a target of
another model with advice that works; a reindex that did not finish shows in status."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.reindex import reindex
from clipsearch.search import search

from support import draw_collection, settings_for

QUIET = IngestOptions(workers=0, quiet=True, batch_size=8, precision="")


@pytest.fixture
def reindexed(tmp_path, tiny_model_dir, other_model_dir):
    """20 drawings ingested with the tiny model, then reindexed with the other one: the
    name means the new version, the original is kept as a version of its own."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 20)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    new = settings.with_overrides(model=str(other_model_dir))
    summary = reindex(new, QUIET)
    assert summary.switched and summary.kept
    with open_index(settings) as index:  # opened once since: the load folds the engine's journals
        assert index.count() == 20
    return settings, new, summary, tmp_path / "index"


def _segment(collection: Path) -> Path:
    (only,) = (collection / "shard" / "segments").iterdir()
    return only


DAMAGE = {
    "empty WAL": lambda c: os.truncate(c / "shard" / "wal" / "open-1", 0),
    "empty model record": lambda c: os.truncate(c / "model.json", 0),
    "missing model record": lambda c: (c / "model.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_to_the_version_in_use_names_its_folder_and_the_advice_works(damage, reindexed):
    settings, new, summary, root = reindexed
    DAMAGE[damage](root / summary.new)
    with pytest.raises(ClipsearchError) as refused:
        search("a red circle", k=3, settings=new)
    message = str(refused.value)
    assert "\n" not in message
    assert f"delete {root / summary.new} " in message and f"delete {root} " not in message
    assert repr(summary.kept) in message  # the collection that is left alone
    # As the line says: that folder alone, then ingest again into the name.
    shutil.rmtree(root / summary.new)
    done = ingest([str(root.parent / "photos")], settings=new, options=IngestOptions(workers=0, quiet=True))
    assert done.embedded == 20
    with open_index(settings) as index:
        assert index.meant() == summary.new and index.count() == 20
    assert len(search("a red circle", k=3, settings=new)) == 3
    with open_index(settings.with_overrides(collection=summary.kept)) as kept:
        assert kept.count() == 20  # untouched


def test_a_damaged_vector_chunk_names_the_collections_folder(reindexed):
    settings, new, summary, root = reindexed
    os.truncate(_segment(root / summary.new) / "vector_storage" / "vectors" / "chunk_0.mmap", 1000)
    with pytest.raises(ClipsearchError) as refused:
        search("a red circle", k=3, settings=new)
    message = str(refused.value)
    assert "status --check" in message and f"delete {root / summary.new} " in message, message
    assert "delete the folder" not in message


def test_only_one_collection_in_the_folder_still_says_to_delete_the_folder(tmp_path, tiny_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    root = tmp_path / "index"
    os.truncate(root / settings.collection / "shard" / "wal" / "open-1", 0)
    with pytest.raises(ClipsearchError, match=rf"the index is damaged: delete {root} and ingest again"):
        open_index(settings)


def test_ingest_with_another_model_into_a_name_whose_version_is_gone_is_refused(reindexed, tiny_model_dir):
    """The name still means the deleted version: another model's vectors must not fill a
    folder named for the version's model; the line says what does work, and it does."""
    settings, new, summary, root = reindexed
    shutil.rmtree(root / summary.new)
    with pytest.raises(ClipsearchError, match=rf"means {summary.new!r} .*which is gone.*ingest with the model "
                                              rf"that made it \(--model\).*{summary.kept!r}.*clipsearch reindex"):
        ingest([str(root.parent / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    assert not (root / summary.new).exists()
    back = reindex(settings, QUIET)  # the tiny model: the name means its kept version again
    assert back.switched and back.new == summary.kept and back.embedded == 0
    with open_index(settings) as index:
        assert index.meant() == summary.kept and index.count() == 20


def test_a_lost_aliases_record_lists_the_versions_and_reindex_makes_the_name_mean_one(reindexed):
    settings, new, summary, root = reindexed
    (root / "aliases.json").unlink()
    with open_index(settings) as index:
        facts = index.describe()
        assert not facts["exists"]
        assert {v["collection"] for v in facts["versions"]} == {summary.new, summary.kept}
        with pytest.raises(ClipsearchError, match=rf"does not exist.*versions here: .*{summary.kept!r}.*--collection "
                                                  r"NAME.*clipsearch reindex --model MODEL"):
            index.require_collection()
    runner = CliRunner()
    where = ["--index", str(root), "--collection", settings.collection]
    status = runner.invoke(cli, ["status", *where])
    assert status.exit_code == 0 and "versions:" in status.output and summary.new in status.output, status.output
    assert str(new.model) in status.output  # the model to give reindex
    check = runner.invoke(cli, ["status", "--check", *where])
    assert check.exit_code == 1 and "--collection NAME" in check.output and "ingest DIR" not in check.output
    # --collection VERSION works as it says.
    assert len(search("a red circle", k=3, settings=new.with_overrides(collection=summary.new))) == 3
    # And reindex with the version's model makes the name mean it again, nothing embedded.
    again = reindex(new, QUIET)
    assert again.switched and not again.reembedded and again.new == summary.new and again.embedded == 0
    assert "means" in again.line() and "again" in again.line()
    with open_index(settings) as index:
        assert index.meant() == summary.new and index.count() == 20
    assert len(search("a red circle", k=3, settings=new)) == 3


def test_migrate_to_the_collection_the_name_means_is_refused_as_itself(reindexed):
    settings, new, summary, root = reindexed
    result = CliRunner().invoke(cli, ["migrate", "--index", str(root), "--collection", settings.collection,
                                      "--to", str(root), "--to-collection", summary.new])
    assert result.exit_code != 0 and "names the source collection itself" in result.output, result.output
    assert "in use" not in result.output
    reverse = CliRunner().invoke(cli, ["migrate", "--index", str(root), "--collection", summary.new,
                                       "--to", str(root), "--to-collection", settings.collection])
    assert reverse.exit_code != 0 and "names the source collection itself" in reverse.output, reverse.output


def test_migrate_into_a_collection_of_another_model_advises_another_collection(tmp_path, tiny_model_dir,
                                                                                other_model_dir):
    draw_collection(tmp_path / "photos", 4)
    runner = CliRunner()
    for index, model in (("ma", tiny_model_dir), ("mb", other_model_dir)):
        done = runner.invoke(cli, ["ingest", str(tmp_path / "photos"), "--index", str(tmp_path / index),
                                   "--model", str(model), "--workers", "0", "-q"])
        assert done.exit_code == 0, done.output
    refused = runner.invoke(cli, ["migrate", "--index", str(tmp_path / "ma"), "--to", str(tmp_path / "mb"), "-q"])
    assert refused.exit_code != 0 and "model mismatch" in refused.output, refused.output
    assert "--to-collection" in refused.output and "--model" not in refused.output
    moved = runner.invoke(cli, ["migrate", "--index", str(tmp_path / "ma"), "--to", str(tmp_path / "mb"),
                                "--to-collection", "from-ma", "-q"])
    assert moved.exit_code == 0 and "target now holds 4" in moved.output, moved.output


def test_status_shows_a_reindex_that_did_not_finish(tmp_path, tiny_model_dir, other_model_dir):
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    photos = draw_collection(tmp_path / "photos", 12)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    (tmp_path / "photos").rename(tmp_path / "away")  # a share not mounted: stops before the switch
    new = settings.with_overrides(model=str(other_model_dir))
    with pytest.raises(ClipsearchError, match="not switched"):
        reindex(new, QUIET)
    where = ["--index", str(tmp_path / "index"), "--collection", settings.collection]
    status = CliRunner().invoke(cli, ["status", *where])
    assert status.exit_code == 0 and "reindex:" in status.output and "run the same" in status.output, status.output
    facts = json.loads(CliRunner().invoke(cli, ["status", "--json", *where]).output)
    (version,) = facts["versions"]
    assert version["unfinished"]["reindex"] == settings.collection and version["model"] == str(other_model_dir)
    (tmp_path / "away").rename(tmp_path / "photos")
    assert reindex(new, QUIET).switched and len(photos) == 12
    status = CliRunner().invoke(cli, ["status", *where])
    assert status.exit_code == 0 and "reindex:" not in status.output, status.output
    with open_index(settings) as index:
        assert index.unfinished_copy() is None


def test_the_advice_for_a_damaged_int8_version_names_its_precision_and_works(tmp_path, tiny_model_dir,
                                                                              other_model_dir):
    """The precision is part of a version's name as the model is: advice that gave
    --model alone was refused when followed (another version's vectors)."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 8)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    new = settings.with_overrides(model=str(other_model_dir))
    summary = reindex(new, IngestOptions(workers=0, quiet=True, batch_size=8, precision="int8"))
    root = tmp_path / "index"
    DAMAGE["empty WAL"](root / summary.new)
    with pytest.raises(ClipsearchError) as refused:
        search("a red circle", k=3, settings=new)
    assert "--precision int8" in str(refused.value), refused.value
    shutil.rmtree(root / summary.new)
    done = ingest([str(tmp_path / "photos")], settings=new,
                  options=IngestOptions(workers=0, quiet=True, precision="int8"))
    assert done.embedded == 8 and len(search("a red circle", k=3, settings=new)) == 3


def test_a_half_built_version_made_the_names_again_says_so_and_drops_its_mark(tmp_path, tiny_model_dir,
                                                                              other_model_dir):
    """A reindex stopped half-way, then the collection the name meant deleted (damage):
    reindex makes the name mean the version, says it is unfinished and that an ingest
    completes it, and clears the mark that promised a resume nothing can do any more."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 30)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    away = tmp_path / "away"
    away.mkdir()
    for photo in sorted((tmp_path / "photos").rglob("*.png"))[:15]:  # half of them on a share not mounted
        photo.rename(away / photo.name)
    new = settings.with_overrides(model=str(other_model_dir))
    with pytest.raises(ClipsearchError, match="not switched"):
        reindex(new, QUIET)
    root = tmp_path / "index"
    shutil.rmtree(root / settings.collection)  # the collection the name meant, deleted after damage
    again = reindex(new, QUIET)
    assert again.unfinished and again.embedded == 0 and again.total == 15
    assert "unfinished" in again.line() and "`clipsearch ingest DIR` adds the images it lacks" in again.line()
    status = CliRunner().invoke(cli, ["status", "--index", str(root), "--collection", settings.collection])
    assert status.exit_code == 0 and "reindex:" not in status.output and "incomplete" not in status.output, \
        status.output
    for photo in away.iterdir():
        photo.rename(tmp_path / "photos" / photo.name)
    assert ingest([str(tmp_path / "photos")], settings=new, options=IngestOptions(workers=0, quiet=True)).embedded == 15


def test_a_reindex_that_only_records_the_model_is_not_called_stopped(tmp_path, tiny_model_dir, tiny_st_model_dir):
    """A model with the same image tower (a text-only fine-tune, the same weights in
    another layout) is only recorded and nothing switches: the CLI read that as a
    stopped run and said to run it again."""
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 4)
    ingest([str(tmp_path / "photos")], settings=settings, options=IngestOptions(workers=0, quiet=True))
    tuned = tiny_st_model_dir
    where = ["--index", str(tmp_path / "index"), "--collection", settings.collection, "--model", str(tuned)]
    result = CliRunner().invoke(cli, ["reindex", *where])
    assert result.exit_code == 0 and "same image tower" in result.output and "stopped" not in result.output, \
        result.output
    facts = json.loads(CliRunner().invoke(cli, ["reindex", "--json", *where]).output)
    assert facts["stopped"] is False and facts["reembedded"] is False
