"""How a server collection is laid out: shards, replicas, quantization, where vectors
live, the HNSW graph's parameters.

Set once, when clipsearch creates the collection (ingest, migrate): Qdrant cannot
change the shard count of a collection that exists, and clipsearch never recreates
one, so an existing collection is used as it is and a layout that differs from the
one asked for is said in one line (client.py). Every field left None is Qdrant's own
default, and is not sent: the create request carries exactly what was asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ..config import BY_NAME, QUANTIZATIONS
from ..errors import ClipsearchError

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings


@dataclass(frozen=True)
class Layout:
    shards: int | None = None
    replicas: int | None = None
    write_consistency: int | None = None
    quantization: str | None = None  # none, int8, binary
    vectors_on_disk: bool | None = None
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None

    def __post_init__(self) -> None:
        # The CLI's parsers have checked these already; the Python API's callers have not.
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ClipsearchError(f"quantization {self.quantization!r} is not one of {', '.join(QUANTIZATIONS)} "
                                  f"({option_name('quantization')})")

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Layout":
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def asked(self) -> dict[str, Any]:
        """The fields given (flag or environment), by name."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    # -- the create request --------------------------------------------------------------
    def create_arguments(self, dim: int) -> dict[str, Any]:
        """qdrant-client create_collection's arguments for this layout (vectors included),
        with nothing for what was not asked."""
        from qdrant_client import models

        arguments: dict[str, Any] = {"vectors_config": models.VectorParams(
            size=dim, distance=models.Distance.COSINE, on_disk=self.vectors_on_disk)}
        for name, argument in (("shards", "shard_number"), ("replicas", "replication_factor"),
                               ("write_consistency", "write_consistency_factor")):
            if getattr(self, name) is not None:
                arguments[argument] = getattr(self, name)
        if self.hnsw_m is not None or self.hnsw_ef_construct is not None:
            arguments["hnsw_config"] = models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct)
        # always_ram: the quantized vectors are what every search reads; the originals,
        # read only to rescore a few candidates, may then live on disk (--vectors-on-disk).
        if self.quantization == "int8":
            arguments["quantization_config"] = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, always_ram=True))
        elif self.quantization == "binary":
            arguments["quantization_config"] = models.BinaryQuantization(
                binary=models.BinaryQuantizationConfig(always_ram=True))
        return arguments

    # -- an existing collection ----------------------------------------------------------
    @classmethod
    def of_collection(cls, info) -> "Layout":
        """The layout a server reports for a collection (qdrant-client's CollectionInfo)."""
        params = info.config.params
        vectors = params.vectors
        hnsw = info.config.hnsw_config
        return cls(shards=params.shard_number, replicas=params.replication_factor,
                   write_consistency=params.write_consistency_factor,
                   quantization=quantization_name(info.config.quantization_config),
                   vectors_on_disk=bool(getattr(vectors, "on_disk", None)),
                   hnsw_m=getattr(hnsw, "m", None), hnsw_ef_construct=getattr(hnsw, "ef_construct", None))

    def differences(self, actual: "Layout") -> list[str]:
        """`--shards 6 (it has 1)` for each field asked for that the collection does not
        have. A field the server does not report is not compared."""
        found = []
        for name, wanted in self.asked().items():
            have = getattr(actual, name)
            if have is not None and have != wanted:
                found.append(f"{BY_NAME[name].flag} {shown(wanted)} (it has {shown(have)})")
        return found


def quantization_name(config) -> str:
    """none, int8, binary, or the name of another kind the collection was made with."""
    if config is None:
        return "none"
    if getattr(config, "scalar", None) is not None:
        return str(getattr(config.scalar.type, "value", config.scalar.type))
    if getattr(config, "binary", None) is not None:
        return "binary"
    return type(config).__name__.removesuffix("Quantization").lower() or "other"


def always_ram(config) -> bool | None:
    """Whether the server keeps the quantized vectors in RAM (None: no quantization)."""
    inner = next((getattr(config, kind) for kind in ("scalar", "binary", "product")
                  if getattr(config, kind, None) is not None), None) if config is not None else None
    return None if inner is None else bool(inner.always_ram)


def option_name(name: str) -> str:
    """How a message names a layout setting: its flag and variable."""
    setting = BY_NAME[name]
    return f"{setting.flag} / {setting.env[0]}"


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# What qdrant-edge applies to the embedded index's one shard (clipsearch/index/edge.py):
# the vectors' storage and search structures. Distribution has no meaning in one folder.
EMBEDDED_FIELDS = ("quantization", "vectors_on_disk", "hnsw_m", "hnsw_ef_construct")


def refuse_on_embedded(layout: Layout, location: str) -> None:
    """The embedded index (qdrant-edge, one folder) is one shard on one machine: shards,
    replicas and write consistency there are a mistake, said in one line naming the
    first one given."""
    refused = [name for name in layout.asked() if name not in EMBEDDED_FIELDS]
    if refused:
        raise ClipsearchError(f"{option_name(refused[0])} applies to a Qdrant server collection (--index http://...); "
                              f"the embedded index {location} is one shard on one machine")


def embedded_part(layout: Layout) -> "Layout":
    """The part of `layout` the embedded index applies."""
    return Layout(**{name: getattr(layout, name) for name in EMBEDDED_FIELDS})


# -- `clipsearch status` -------------------------------------------------------------------


def layout_facts(info) -> dict[str, Any]:
    """A server collection's layout as status shows it (JSON-ready)."""
    facts = asdict(Layout.of_collection(info))
    facts["quantized_always_ram"] = always_ram(info.config.quantization_config)
    return facts


def cluster_facts(status, shards) -> dict[str, Any] | None:
    """The peers of a cluster and each shard's replicas with their states, from
    qdrant-client's ClusterStatus and CollectionClusterInfo; None where the server
    runs without cluster mode (status "disabled")."""
    if getattr(status, "status", None) != "enabled":
        return None
    replicas: dict[int, list[dict[str, Any]]] = {}
    if shards is not None:
        for shard in shards.local_shards:
            replicas.setdefault(shard.shard_id, []).append({"peer": shards.peer_id, "state": _state(shard.state)})
        for shard in shards.remote_shards:
            replicas.setdefault(shard.shard_id, []).append({"peer": shard.peer_id, "state": _state(shard.state)})
    return {"peers": len(status.peers), "this_peer": status.peer_id,
            "shards": {str(shard_id): replicas[shard_id] for shard_id in sorted(replicas)}}


def _state(state) -> str:
    return str(getattr(state, "value", state))


def format_layout(layout: dict[str, Any]) -> str:
    """One line: `2 shards x 2 replicas (write consistency 1); int8 quantization in RAM;
    vectors on disk; HNSW m 16, ef_construct 100`."""
    parts = [f"{layout['shards'] or 1} shard{'s' if (layout['shards'] or 1) > 1 else ''} x "
             f"{layout['replicas'] or 1} replica{'s' if (layout['replicas'] or 1) > 1 else ''} "
             f"(write consistency {layout['write_consistency'] or 1})"]
    quantization = layout["quantization"]
    if quantization == "none":
        parts.append("no quantization")
    else:
        parts.append(f"{quantization} quantization " + ("in RAM" if layout["quantized_always_ram"] else
                                                         "(not pinned in RAM)"))
    parts.append("vectors on disk" if layout["vectors_on_disk"] else "vectors in RAM")
    if layout["hnsw_m"] is not None:
        parts.append(f"HNSW m {layout['hnsw_m']}, ef_construct {layout['hnsw_ef_construct']}")
    return "; ".join(parts)


def format_embedded_layout(layout: dict[str, Any]) -> str:
    """One line for an embedded collection created with a layout (edge.py layout.json):
    `int8 quantization in RAM; vectors on disk; HNSW m 24`."""
    parts = []
    if layout.get("quantization") not in (None, "none"):
        parts.append(f"{layout['quantization']} quantization in RAM")
    parts.append("vectors on disk" if layout.get("vectors_on_disk") else "vectors in RAM")
    hnsw = [f"{name} {layout[key]}" for name, key in (("m", "hnsw_m"), ("ef_construct", "hnsw_ef_construct"))
            if layout.get(key) is not None]
    if hnsw:
        parts.append("HNSW " + ", ".join(hnsw))
    return "; ".join(parts)


def format_cluster(cluster: dict[str, Any]) -> list[str]:
    """`cluster:` and `shards:` lines: the peers' count, each shard's replica states."""
    lines = [f"cluster:      {cluster['peers']} peer{'s' if cluster['peers'] != 1 else ''}"]
    if cluster["shards"]:
        states = ", ".join(f"{shard_id} " + "+".join(r["state"] for r in replicas)
                           for shard_id, replicas in cluster["shards"].items())
        lines.append(f"shards:       {states}")
    return lines
