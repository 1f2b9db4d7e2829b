"""A server collection's layout (issue #18): --shards, --replicas, --write-consistency,
--quantization, --vectors-on-disk, --hnsw-m, --hnsw-ef-construct.

The create request is read back from the doubles (tests/doubles/), which record what
they receive, over REST and gRPC: it carries exactly the layout asked for and nothing
else. An existing collection is used as it is, an embedded index applies quantization,
vectors on disk and HNSW and refuses shards and replicas,
searches of a quantized collection rescore, and status shows the layout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from qdrant_client import models

from clipsearch import config
from clipsearch.cli import cli
from clipsearch.encoders.identity import ModelIdentity
from clipsearch.errors import ClipsearchError
from clipsearch.index import open_index
from clipsearch.index.commands import format_status
from clipsearch.index.layout import Layout, cluster_facts, format_cluster

from support import draw_collection, export_server, rest_double, settings_for

DIM = 8
IDENTITY = ModelIdentity(name="/models/tiny", image_fingerprint="i" * 64, text_fingerprint="t" * 64, dim=DIM)
LAYOUT_KEYS = {"shard_number", "replication_factor", "write_consistency_factor", "hnsw_config",
               "quantization_config"}
FULL = {"shards": 6, "replicas": 2, "write_consistency": 2, "quantization": "int8", "vectors_on_disk": True,
        "hnsw_m": 32, "hnsw_ef_construct": 256}


def created(settings, **layout):
    """Create `settings`' collection with `layout` and return the create request's body."""
    settings = settings.with_overrides(**layout)
    with open_index(settings, create=True) as index:
        index.ensure_collection(IDENTITY)
    bodies = rest_double().received_for("create_collection", settings.collection)
    assert len(bodies) == 1
    return bodies[0]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_the_create_request_carries_exactly_the_layout_asked(protocol, tmp_path, tiny_model_dir):
    body = created(settings_for(protocol, tmp_path, tiny_model_dir), **FULL)
    assert body["vectors"] == {"size": DIM, "distance": "Cosine", "on_disk": True}
    assert {key: body[key] for key in LAYOUT_KEYS} == {
        "shard_number": 6, "replication_factor": 2, "write_consistency_factor": 2,
        "hnsw_config": {"m": 32, "ef_construct": 256},
        "quantization_config": {"scalar": {"type": "int8", "always_ram": True}},
    }
    assert set(body) == {"vectors", "metadata", *LAYOUT_KEYS}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_nothing_asked_leaves_every_default_to_qdrant(protocol, tmp_path, tiny_model_dir):
    body = created(settings_for(protocol, tmp_path, tiny_model_dir))
    assert set(body) == {"vectors", "metadata"}
    assert body["vectors"] == {"size": DIM, "distance": "Cosine"}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_binary_quantization_and_part_of_a_layout(protocol, tmp_path, tiny_model_dir):
    body = created(settings_for(protocol, tmp_path, tiny_model_dir), quantization="binary", hnsw_m=8)
    assert body["quantization_config"] == {"binary": {"always_ram": True}}
    assert body["hnsw_config"] == {"m": 8}
    assert set(body) == {"vectors", "metadata", "hnsw_config", "quantization_config"}


def test_the_layout_comes_from_the_environment_and_a_flag_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPSEARCH_SHARDS", "4")
    monkeypatch.setenv("CLIPSEARCH_QUANTIZATION", "INT8")
    monkeypatch.setenv("CLIPSEARCH_VECTORS_ON_DISK", "yes")
    settings = config.Settings.resolve(index="http://qdrant.example:6333", shards=6)
    assert Layout.from_settings(settings) == Layout(shards=6, quantization="int8", vectors_on_disk=True)
    assert settings.oversampling == config.BY_NAME["oversampling"].default


@pytest.mark.parametrize("variable, bad", [
    ("CLIPSEARCH_SHARDS", "0"), ("CLIPSEARCH_REPLICAS", "two"), ("CLIPSEARCH_WRITE_CONSISTENCY", "-1"),
    ("CLIPSEARCH_QUANTIZATION", "int4"), ("CLIPSEARCH_VECTORS_ON_DISK", "maybe"), ("CLIPSEARCH_HNSW_M", "2"),
    ("CLIPSEARCH_HNSW_EF_CONSTRUCT", "x"), ("CLIPSEARCH_OVERSAMPLING", "0.5"),
])
def test_a_bad_layout_value_is_one_line_naming_the_variable(variable, bad):
    with pytest.raises(ClipsearchError) as caught:
        config.Settings.resolve(env={variable: bad})
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"{variable}={bad!r} ")


def test_the_cli_passes_the_layout_flags_to_the_collection_it_creates(tmp_path, tiny_model_dir, monkeypatch):
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    settings = settings_for("rest", tmp_path, tiny_model_dir)
    export_server("rest", monkeypatch)
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--collection", settings.collection, "--model",
                                      str(tiny_model_dir), "-w", "0", "-q", "--shards", "3", "--replicas", "2",
                                      "--quantization", "binary", "--vectors-on-disk"])
    assert result.exit_code == 0, result.output
    body, = rest_double().received_for("create_collection", settings.collection)
    assert (body["shard_number"], body["replication_factor"], body["vectors"]["on_disk"]) == (3, 2, True)
    assert body["quantization_config"] == {"binary": {"always_ram": True}}
    status = CliRunner().invoke(cli, ["status", "--collection", settings.collection])
    assert status.exit_code == 0, status.output
    assert ("layout:       3 shards x 2 replicas (write consistency 1); binary quantization in RAM; "
            "vectors on disk; HNSW m 16, ef_construct 100") in status.output
    facts = json.loads(CliRunner().invoke(cli, ["status", "--collection", settings.collection, "--json"]).output)
    assert facts["layout"] == {"shards": 3, "replicas": 2, "write_consistency": 1, "quantization": "binary",
                               "vectors_on_disk": True, "hnsw_m": 16, "hnsw_ef_construct": 100,
                               "quantized_always_ram": True}
    assert facts["cluster"] is None  # the double reports no cluster: status says nothing of one


def test_migrate_creates_its_target_with_the_layout(tmp_path, tiny_model_dir, monkeypatch):
    source = settings_for("memory", tmp_path, tiny_model_dir)
    with open_index(source, create=True) as index:
        index.ensure_collection(IDENTITY)
        index.upsert(["00000000-0000-0000-0000-000000000001"], np.eye(1, DIM, dtype=np.float32), [{"path": "/a"}])
    target = settings_for("grpc", tmp_path, tiny_model_dir)
    export_server("grpc", monkeypatch)
    result = CliRunner().invoke(cli, ["migrate", "--index", ":memory:", "--collection", source.collection,
                                      "--to", target.index, "--to-collection", target.collection, "-q",
                                      "--quantization", "int8", "--hnsw-ef-construct", "200"])
    assert result.exit_code == 0, result.output
    body, = rest_double().received_for("create_collection", target.collection)
    assert body["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
    assert body["hnsw_config"] == {"ef_construct": 200}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_reindex_makes_the_new_collection_with_the_old_layout_or_the_one_asked(protocol, tmp_path, tiny_model_dir,
                                                                              other_model_dir, monkeypatch):
    """A reindex keeps a cluster's layout (shards, replicas, quantization...) without
    being told; flags given replace it. The first switch keeps the original under its
    version name in its own layout too."""
    photos = tmp_path / "photos"
    draw_collection(photos, 3)
    settings = settings_for(protocol, tmp_path, tiny_model_dir)
    export_server(protocol, monkeypatch)
    name = ["--collection", settings.collection, "-w", "0", "-q"]
    result = CliRunner().invoke(cli, ["ingest", str(photos), "--model", str(tiny_model_dir), *name, "--shards", "3",
                                      "--replicas", "2", "--quantization", "int8", "--hnsw-m", "24"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["reindex", "--model", str(other_model_dir), *name, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    for collection in (summary["new"], summary["kept"]):
        body, = rest_double().received_for("create_collection", collection)
        assert (body["shard_number"], body["replication_factor"], body["hnsw_config"]["m"]) == (3, 2, 24)
        assert body["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
    result = CliRunner().invoke(cli, ["reindex", "--model", str(tiny_model_dir), *name, "--json", "--shards", "5"])
    assert result.exit_code == 0, result.output
    # Back to the kept original: it exists, so it is used as it is (one line says so), not recreated.
    assert json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))["new"] \
        == summary["kept"]
    assert "exists with another layout; using it as it is, without --shards 5 (it has 3)" in result.output


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_an_existing_collection_of_another_layout_is_used_as_it_is(protocol, tmp_path, tiny_model_dir, capsys):
    settings = settings_for(protocol, tmp_path, tiny_model_dir)
    created(settings, shards=2, quantization="int8")
    capsys.readouterr()
    with open_index(settings.with_overrides(shards=2, quantization="int8"), create=True) as index:
        index.ensure_collection(IDENTITY)  # the same layout: not a word
    assert capsys.readouterr().err == ""
    with open_index(settings.with_overrides(shards=6, quantization="int8", vectors_on_disk=True),
                    create=True) as index:
        index.ensure_collection(IDENTITY)
        index.upsert(["00000000-0000-0000-0000-000000000002"], np.eye(1, DIM, dtype=np.float32), [{"path": "/b"}])
        assert index.count() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"collection {settings.collection!r}" in err
    assert "--shards 6 (it has 2)" in err and "--vectors-on-disk on (it has off)" in err
    assert "--quantization" not in err  # asked and had: not a difference
    assert len(rest_double().received_for("create_collection", settings.collection)) == 1  # never recreated
    assert rest_double().received_for("delete_collection", settings.collection) == []


@pytest.mark.parametrize("flag, variable", [("--shards", "CLIPSEARCH_SHARDS"),
                                            ("--replicas", "CLIPSEARCH_REPLICAS")])
def test_the_embedded_index_refuses_distribution_in_one_line(flag, variable, tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    draw_collection(photos, 2)
    value = "2"
    for args, env in (([flag, value], {}), ([], {variable: value})):
        result = CliRunner().invoke(cli, ["ingest", str(photos), "--index", str(tmp_path / "index"), "--model",
                                          str(tiny_model_dir), "-w", "0", "-q", *args], env=env)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and flag in lines[0] and variable in lines[0] and "embedded" in lines[0], lines
    assert not (tmp_path / "index").exists()
    # Reading the embedded index with a layout in the environment is no mistake: nothing is created.
    result = CliRunner().invoke(cli, ["status", "--index", str(tmp_path / "index")], env={variable: value})
    assert result.exit_code == 0, result.output


def test_the_embedded_index_applies_quantization_vectors_on_disk_and_hnsw(tmp_path, tiny_model_dir, capsys):
    """qdrant-edge keeps int8 copies (in RAM), the originals on disk and the HNSW
    parameters asked: in the shard's own configuration, through every reload (the
    indexing threshold's and the offline HNSW build's), and status says so."""
    from clipsearch.index.edge import hnsw_min_points

    settings = settings_for("edge", tmp_path, tiny_model_dir).with_overrides(
        quantization="int8", vectors_on_disk=True, hnsw_m=24)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(300)]

    def saved() -> dict:
        shard = tmp_path / "index" / settings.collection / "shard" / "edge_config.json"
        return json.loads(shard.read_text())

    with open_index(settings, create=True) as index:
        index.ensure_collection(IDENTITY)
        index.upsert(ids, vectors, [{"path": f"/p/{i}.jpg"} for i in range(300)])
    for round_, build in enumerate(("optimize", "optimize_offline")):
        vectors_config = saved()["vectors"][""]
        assert vectors_config["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
        assert vectors_config["on_disk"] is True and saved()["hnsw_config"]["m"] == 24
        with pytest.MonkeyPatch.context() as env, open_index(settings) as index:
            env.setenv("CLIPSEARCH_HNSW_MIN_POINTS", "100")
            assert hnsw_min_points() == 100
            more = [f"00000000-0000-0000-0001-{round_ * 300 + i:012d}" for i in range(300)]
            extra = rng.standard_normal((300, DIM)).astype(np.float32)
            extra /= np.linalg.norm(extra, axis=1, keepdims=True)
            index.upsert(more, extra, [{"path": f"/q/{i}.jpg"} for i in more])  # something to build
            assert getattr(index, build)() is True
            exact = index.query(vectors[7], 10, exact=True)
            approximate = index.query(vectors[7], 10)
            assert exact[0].id == approximate[0].id == ids[7]
            assert len({h.id for h in exact} & {h.id for h in approximate}) >= 9  # rescored with the originals
    assert saved()["vectors"][""]["quantization_config"] == {"scalar": {"type": "int8", "always_ram": True}}
    status = CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection,
                                      "--json"])
    assert json.loads(status.output)["embedded_layout"] == {"quantization": "int8", "vectors_on_disk": True,
                                                            "hnsw_m": 24, "hnsw_ef_construct": 100}
    status = CliRunner().invoke(cli, ["status", "--index", settings.index, "--collection", settings.collection])
    assert "layout:       int8 quantization in RAM; vectors on disk; HNSW m 24, ef_construct 100" in status.output
    capsys.readouterr()
    with open_index(settings.with_overrides(quantization="binary", hnsw_m=None, vectors_on_disk=None), create=True):
        pass
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quantization binary (it has int8)" in err and "using it as it is" in err
    # A collection made without a layout has the engine's: asking for one there is said too.
    plain = settings_for("edge", tmp_path, tiny_model_dir)
    with open_index(plain, create=True) as index:
        index.ensure_collection(IDENTITY)
    capsys.readouterr()
    with open_index(plain.with_overrides(quantization="int8"), create=True):
        pass
    assert "--quantization int8 (it has none)" in capsys.readouterr().err
    status = CliRunner().invoke(cli, ["status", "--index", plain.index, "--collection", plain.collection, "--json"])
    assert json.loads(status.output)["embedded_layout"] is None  # the defaults: nothing to say


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_searches_rescore_with_oversampling_and_exact_ones_read_the_originals(protocol, tmp_path, tiny_model_dir):
    settings = settings_for(protocol, tmp_path, tiny_model_dir).with_overrides(quantization="int8",
                                                                               oversampling=2.5)
    with open_index(settings, create=True) as index:
        index.ensure_collection(IDENTITY)
        index.upsert(["00000000-0000-0000-0000-000000000003"], np.eye(1, DIM, dtype=np.float32), [{"path": "/c"}])
        assert [h.path for h in index.query(np.eye(1, DIM)[0], 5)] == ["/c"]
        index.query(np.eye(1, DIM)[0], 5, exact=True)
        index.recommend([np.eye(1, DIM)[0]], [], 5)
    first, exact, recommend = [{key: value for key, value in b["params"]["quantization"].items() if value}
                               for b in rest_double().received_for("query", settings.collection)]
    # (over gRPC the message's unset flags arrive as false)
    assert first == recommend == {"rescore": True, "oversampling": 2.5}
    assert exact == {"ignore": True}


def test_status_shows_a_clusters_peers_and_shard_states():
    status = models.ClusterStatusOneOf1(
        status="enabled", peer_id=11,
        peers={str(p): models.PeerInfo(uri=f"http://qdrant-{p}:6335/") for p in (11, 22, 33)},
        raft_info=models.RaftInfo(term=1, commit=9, pending_operations=0, leader=11, role="Leader", is_voter=True),
        consensus_thread_status=models.ConsensusThreadStatusOneOf(consensus_thread_status="working",
                                                                  last_update="2026-01-01T00:00:00Z"),
        message_send_failures={})
    shards = models.CollectionClusterInfo(
        peer_id=11, shard_count=2,
        local_shards=[models.LocalShardInfo(shard_id=0, points_count=5, state=models.ReplicaState.ACTIVE)],
        remote_shards=[models.RemoteShardInfo(shard_id=0, peer_id=22, state=models.ReplicaState.PARTIAL),
                       models.RemoteShardInfo(shard_id=1, peer_id=22, state=models.ReplicaState.ACTIVE),
                       models.RemoteShardInfo(shard_id=1, peer_id=33, state=models.ReplicaState.DEAD)],
        shard_transfers=[])
    facts = cluster_facts(status, shards)
    assert facts == {"peers": 3, "this_peer": 11, "shards": {
        "0": [{"peer": 11, "state": "Active"}, {"peer": 22, "state": "Partial"}],
        "1": [{"peer": 22, "state": "Active"}, {"peer": 33, "state": "Dead"}]}}
    assert format_cluster(facts) == ["cluster:      3 peers", "shards:       0 Active+Partial, 1 Active+Dead"]
    assert cluster_facts(models.ClusterStatusOneOf(status="disabled"), None) is None
    shown = format_status({"backend": "server", "location": "http://q:6333", "collection": "images",
                           "exists": True, "points": 5, "model": None, "cluster": facts})
    assert shown.endswith("cluster:      3 peers\nshards:       0 Active+Partial, 1 Active+Dead")
