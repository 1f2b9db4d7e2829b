"""A server collection's name whose alias was deleted (by hand, or another tool): the
versions a reindex left are listed, and reindex with a version's model makes the name
mean it again, nothing embedded. The server half of test_versions_and_damage.py's lost
aliases.json, through the REST and gRPC doubles (and a real server with QDRANT_URL)."""

from __future__ import annotations

import pytest
from qdrant_client import QdrantClient, models

from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.ingest.reindex import reindex
from clipsearch.search import search

from support import draw_collection, export_server, settings_for

QUIET = IngestOptions(workers=0, quiet=True, batch_size=8, precision="")


@pytest.mark.parametrize("kind", ["rest", "grpc", "server"])
def test_a_deleted_alias_lists_the_versions_and_reindex_points_the_name_again(kind, tmp_path, tiny_model_dir,
                                                                              other_model_dir, monkeypatch):
    env = export_server(kind, monkeypatch)
    settings = settings_for(kind, tmp_path, tiny_model_dir)
    draw_collection(tmp_path / "photos", 12)
    ingest([str(tmp_path / "photos")], settings=settings, options=QUIET)
    new = settings.with_overrides(model=str(other_model_dir))
    first = reindex(new, QUIET)
    assert first.switched and first.kept
    client = QdrantClient(url=env["QDRANT_URL"], api_key=env.get("QDRANT_API_KEY"))
    try:
        client.update_collection_aliases(change_aliases_operations=[
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=settings.collection))])
    finally:
        client.close()
    with open_index(settings) as index:
        facts = index.describe()
        assert not facts["exists"]
        assert {v["collection"] for v in facts["versions"]} >= {first.new, first.kept}
        by_name = {v["collection"]: v for v in facts["versions"]}
        assert by_name[first.new]["model"] == str(other_model_dir)
        with pytest.raises(ClipsearchError, match=r"does not exist.*versions here"):
            index.require_collection()
    again = reindex(new, QUIET)
    assert again.switched and not again.reembedded and again.new == first.new and again.embedded == 0
    with open_index(settings) as index:
        assert index.meant() == first.new and index.count() == 12
    assert len(search("a red circle", k=3, settings=new)) == 3
    with pytest.raises(ClipsearchError, match="exists"):  # a name that is a collection is never re-pointed
        with open_index(settings.with_overrides(collection=first.kept)) as kept:
            kept.point_name_at(first.new)
