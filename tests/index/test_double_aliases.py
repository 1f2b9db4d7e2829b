"""Collection aliases and the list of collections in the Qdrant test double
(tests/doubles/), over REST and over gRPC, with qdrant-client as the caller: an alias
serves the point calls as the collection it names, switching it to another collection
in one update_collection_aliases call moves every later call there, and listing,
refusals and deletions answer as a server does."""

from __future__ import annotations

import uuid

import grpc as grpc_lib
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from support import REST_DOUBLE_KEY, rest_double

# The double asks for a key over plain HTTP, as the rest of the suite's legs do.
pytestmark = pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")

_GRPC_STATUS = {grpc_lib.StatusCode.NOT_FOUND: 404, grpc_lib.StatusCode.INVALID_ARGUMENT: 400}


@pytest.fixture(params=["rest", "grpc"])
def client(request):
    double = rest_double()
    client = QdrantClient(url=double.url, api_key=REST_DOUBLE_KEY, prefer_grpc=request.param == "grpc",
                          grpc_port=double.grpc_port, check_compatibility=False)
    yield client
    client.close()


@pytest.fixture
def names(client):
    """Two fresh collections (A with two shards, to see its layout through the alias) and
    an alias name; whatever is left is deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    a, b, alias = f"alias_a_{suffix}", f"alias_b_{suffix}", f"images_{suffix}"
    client.create_collection(a, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE),
                             shard_number=2)
    client.create_collection(b, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    yield a, b, alias
    for name in (a, b):
        client.delete_collection(name)


def _status(exc: Exception) -> int:
    """The HTTP status of a refused call, whichever protocol carried it."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code
    return _GRPC_STATUS.get(exc.code(), -1)


def _refused(call) -> int:
    with pytest.raises((UnexpectedResponse, grpc_lib.RpcError)) as caught:
        call()
    return _status(caught.value)


def _point(i: int, tag: str) -> models.PointStruct:
    vector = [0.0] * 4
    vector[i % 4] = 1.0
    return models.PointStruct(id=i, vector=vector, payload={"tag": tag})


def _create(alias: str, collection: str) -> models.CreateAliasOperation:
    return models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))


def _delete(alias: str) -> models.DeleteAliasOperation:
    return models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))


def _aliases(client: QdrantClient) -> dict[str, str]:
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


def _collection_aliases(client: QdrantClient, name: str) -> list[str]:
    return [a.alias_name for a in client.get_collection_aliases(name).aliases]


def test_an_alias_serves_its_collection_and_switches_atomically(client, names):
    double = rest_double()
    a, b, alias = names
    assert client.update_collection_aliases(change_aliases_operations=[_create(alias, a)]) is True

    assert client.collection_exists(alias)
    assert client.get_collection(alias).config.params.shard_number == 2  # A's layout, kept under A's name
    client.upsert(alias, points=[_point(i, "a") for i in range(3)])
    assert client.count(alias).count == 3
    assert (client.count(a).count, client.count(b).count) == (3, 0)
    hits = client.query_points(alias, query=[1.0, 0.0, 0.0, 0.0], limit=3, with_payload=True).points
    assert hits[0].id == 0 and {h.payload["tag"] for h in hits} == {"a"}
    assert [r.id for r in client.retrieve(alias, ids=[1, 2])] == [1, 2]
    client.delete(alias, points_selector=models.PointIdsList(points=[2]))
    assert client.count(a).count == 2
    assert [p.id for p in client.scroll(alias, limit=10)[0]] == [0, 1]
    assert double.received_for("upsert", alias)  # recorded under the name the request used

    assert _aliases(client)[alias] == a
    assert _collection_aliases(client, a) == [alias]
    assert _collection_aliases(client, b) == []
    listed = {c.name for c in client.get_collections().collections}
    assert {a, b} <= listed and alias not in listed

    # The switch: one request, delete and create together.
    assert client.update_collection_aliases(change_aliases_operations=[_delete(alias), _create(alias, b)]) is True
    assert double.received[-1].route == "update_aliases" and len(double.received[-1].body["actions"]) == 2
    assert _aliases(client)[alias] == b
    assert (_collection_aliases(client, a), _collection_aliases(client, b)) == ([], [alias])
    assert client.get_collection(alias).config.params.shard_number == 1  # B's layout now

    client.upsert(alias, points=[_point(i, "b") for i in range(10, 15)])
    assert (client.count(alias).count, client.count(a).count, client.count(b).count) == (5, 2, 5)
    hits = client.query_points(alias, query=[0.0, 0.0, 1.0, 0.0], limit=10, with_payload=True).points
    assert {h.id for h in hits} == set(range(10, 15)) and {h.payload["tag"] for h in hits} == {"b"}

    # A rejected action leaves every alias as it was: the delete before it is not applied.
    assert _refused(lambda: client.update_collection_aliases(
        change_aliases_operations=[_delete(alias), _create(alias, f"missing_{alias}")])) == 404
    assert _aliases(client)[alias] == b


def test_a_collection_cannot_take_an_alias_name(client, names):
    a, b, alias = names
    client.update_collection_aliases(change_aliases_operations=[_create(alias, a)])
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    assert _refused(lambda: client.create_collection(alias, vectors_config=params)) == 400
    assert alias not in {c.name for c in client.get_collections().collections}
    assert _aliases(client)[alias] == a
    # Nor can an alias take a collection's name.
    assert _refused(lambda: client.update_collection_aliases(change_aliases_operations=[_create(b, a)])) == 400
    assert b not in _aliases(client)


def test_deleting_a_collection_drops_its_aliases_and_layout(client, names):
    double = rest_double()
    a, b, alias = names
    client.update_collection_aliases(change_aliases_operations=[_create(alias, a), _create(f"{alias}_2", a)])
    assert sorted(_collection_aliases(client, a)) == [alias, f"{alias}_2"]
    assert client.delete_collection(alias) is False  # an alias name deletes nothing, as on the server
    assert client.collection_exists(a) and client.collection_exists(alias)

    assert client.delete_collection(a) is True
    assert not client.collection_exists(alias)
    assert {alias, f"{alias}_2"}.isdisjoint(_aliases(client))
    assert a not in double.layouts
    assert _refused(lambda: client.count(alias)) == 404


def test_a_collection_named_aliases_is_not_the_alias_api(client):
    """`/collections/aliases` is the alias API for POST; a collection may still be named "aliases"."""
    params = models.VectorParams(size=4, distance=models.Distance.COSINE)
    client.create_collection("aliases", vectors_config=params)
    try:
        assert client.get_collection("aliases").config.params.vectors.size == 4
        client.upsert("aliases", points=[_point(1, "x")])
        assert client.count("aliases").count == 1
        alias = f"images_{uuid.uuid4().hex[:10]}"
        assert client.update_collection_aliases(change_aliases_operations=[_create(alias, "aliases")]) is True
        assert _collection_aliases(client, "aliases") == [alias]
        assert client.count(alias).count == 1
    finally:
        client.delete_collection("aliases")
