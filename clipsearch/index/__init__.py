"""Index backends behind one interface; `open_index` picks one from the settings.

    base.py      the Index contract, Hit and Record, point ids from paths
    edge.py      the embedded default: qdrant-edge in this process, one folder
    client.py    a Qdrant server (REST or gRPC), or qdrant-client's :memory: engine
    layout.py    a server collection's layout: shards, replicas, quantization, HNSW
    versions.py  a collection's versions (reindex) and the name that switches to one
    lockfile.py  one process owns an embedded index
    migrate.py   copy a collection to another index
    adopt.py     the collection's own model, for a command given none
    commands.py  `clipsearch status`, `clipsearch migrate`

Names load on first use: the CLI imports commands.py on every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_package import lazy_package
from .open import open_index

__all__ = ["Hit", "Index", "Record", "open_index", "point_id", "canonical_point_id", "canonical_path", "ancestor_dirs",
           "with_collection_model", "with_recorded_model", "collection_precision", "names_no_model"]

if TYPE_CHECKING:  # pragma: no cover
    from .adopt import collection_precision, names_no_model, with_collection_model, with_recorded_model
    from .base import Hit, Index, Record, ancestor_dirs, canonical_path, canonical_point_id, point_id

_ADOPT = ("with_collection_model", "with_recorded_model", "collection_precision", "names_no_model")
lazy_package(__name__, {**{name: "base" for name in __all__ if name != "open_index" and name not in _ADOPT},
                        **{name: "adopt" for name in _ADOPT}})
