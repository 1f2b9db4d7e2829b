"""The Index interface every backend implements, and the types it speaks.

One collection of one index: normalized image vectors, one point per image file,
the file's path and facts as payload, and the identity of the model that made the
vectors. Backends differ in where the data lives, not in what these calls mean; the
contract tests in tests/index/test_index_contract.py run the same calls on each.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..encoders.identity import ModelIdentity
from ..errors import ClipsearchError
from ..names import name_bytes, path_of, stored
from .where import Where

# Fixed forever: changing it would change every point id and duplicate every index.
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "clipsearch:image-path")


def canonical_path(path: str | os.PathLike) -> str:
    """Absolute, symlink-free path: the one spelling of a file that ids derive from."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def point_id(path: str | os.PathLike) -> str:
    """uuid5 of the canonical absolute path, so re-ingesting a file upserts its point
    in place and two writers never create two points for one file."""
    return canonical_point_id(canonical_path(path))


def canonical_point_id(path: str) -> str:
    """point_id of a path already canonical (as the ingest walk yields them): skips
    realpath, which costs an lstat per path component and dominated re-ingests.

    uuid5 over the name's bytes: for a text path exactly uuid.uuid5(POINT_NAMESPACE,
    path); a name that is not UTF-8 hashes its bytes (uuid.uuid5 would refuse its
    surrogate escapes before Python 3.12)."""
    digest = hashlib.sha1(POINT_NAMESPACE.bytes + name_bytes(path), usedforsecurity=False).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))


def ancestor_dirs(path: str) -> list[str]:
    """Every folder above `path`, which lets a keyword filter select a subtree
    (`--in FOLDER`) on every backend without prefix matching. In their stored form
    (names.stored), as `under_value` gives a filter's folder."""
    return list(_folder_and_above(os.path.dirname(path)))


@functools.lru_cache(maxsize=4096)
def _folder_and_above(folder: str) -> tuple[str, ...]:
    # Cached: the files of one folder come in a row, and 100k files of 100 folders
    # otherwise cost 900k dirname calls per ingest.
    parents = []
    current = folder
    while True:
        parents.append(stored(current))
        parent = os.path.dirname(current)
        if parent == current:
            return tuple(parents)
        current = parent


def under_value(folder: str) -> str:
    """The `dirs` value that selects the points below `folder` (a canonical path)."""
    return stored(folder)


# HNSW beam width at query time. Text queries sit apart from the image vectors they
# look for (CLIP's modality gap), and HNSW's recall on such out-of-distribution queries
# falls well below its recall on image-like ones at Qdrant's default; a wider beam buys
# it back for a few milliseconds. 256 was enough at 100k (recall@10 0.9975); at 1M it
# kept 0.82 of a text query's neighbours, 1024 keeps 0.974 for about 0.4 ms more
# (bench/hnsw_ef.py, bench/embedded_quantization.py, BENCHMARKS.md).
DEFAULT_HNSW_EF = 1024

# Payload fields that get a keyword index at collection creation: `dirs` serves
# `--in FOLDER`, `path` lookups by path, `fingerprint` finding a moved file's point.
# The embedded backend keeps them on disk (edge.py: _keyword_index), a server in memory
# (it opens them once, not per query). A collection made before a field was added gets
# its index when next opened for writing.
KEYWORD_FIELDS = ("path", "dirs", "fingerprint")


# Payload indexes for the photo facts (clipsearch/photo_facts.py) that Where filters on.
PHOTO_FIELDS = {"taken": "datetime", "camera_words": "keyword", "location": "geo"}
# Every payload index a collection gets, by field: its kind.
PAYLOAD_INDEXES = {**{name: "keyword" for name in KEYWORD_FIELDS}, **PHOTO_FIELDS}


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The file's real path (names.path_of: bytes that are not UTF-8 included)."""
        return path_of(self.payload)


@dataclass(frozen=True)
class Record:
    id: str
    payload: dict = field(default_factory=dict)
    vector: np.ndarray | None = None

    @property
    def path(self) -> str:
        """The file's real path (names.path_of)."""
        return path_of(self.payload)


class Index(ABC):
    """One collection in one index. Use as a context manager, or call close()."""

    backend: str = ""

    def __init__(self, location: str, collection: str):
        self.location = location  # a folder, ':memory:' or a URL; never holds a key
        # The name asked for; `collection` is what it means where the backend resolves
        # it here (an embedded index's aliases.json: versions.py), else the same name.
        self.name = collection
        self.collection = collection

    # -- collection -------------------------------------------------------------
    @abstractmethod
    def exists(self) -> bool:
        """Whether the collection exists."""

    @abstractmethod
    def stored_identity(self) -> ModelIdentity | None:
        """The model identity recorded in the collection, None if it has none."""

    @abstractmethod
    def _create(self, identity: ModelIdentity) -> None:
        """Create the collection for vectors of `identity.dim`, recording identity."""

    def ensure_collection(self, identity: ModelIdentity) -> None:
        """Create the collection if missing; otherwise refuse a model whose image
        vectors would not match the stored ones."""
        if not self.exists():
            self._create(identity)
            return
        self.check_identity(identity)

    def check_identity(self, identity: ModelIdentity) -> None:
        self.require_collection()
        stored = self.stored_identity()
        if stored is None:
            raise ClipsearchError(
                f"collection {self.collection!r} at {self.location} has no clipsearch model record; "
                "it was not made by clipsearch"
            )
        identity.check_against(stored, self.collection)

    def require_collection(self) -> None:
        if not self.exists():
            raise ClipsearchError(f"collection {self.collection!r} does not exist at {self.location}; "
                                  + self.missing_advice())

    def missing_advice(self) -> str:
        """What to do about a name that does not exist: ingest into it, or, where the
        index holds versions of it (a record of which one it means was lost), use one
        or make the name mean one again."""
        versions = self.version_facts()
        if not versions:
            return "run `clipsearch ingest DIR` first"
        listed = ", ".join(repr(v["collection"]) + (f" (model {v['model']})" if v.get("model") else "")
                           for v in versions)
        return (f"it has versions here: {listed}; use one with --collection NAME, or make {self.name!r} mean one "
                "again with `clipsearch reindex --model MODEL` given that version's model (nothing is embedded)")

    # -- versions (clipsearch reindex: versions.py) ------------------------------
    def meant(self) -> str:
        """The collection the name means now: itself, or the version it was switched to."""
        return self.collection

    @abstractmethod
    def versions(self) -> list[str]:
        """The other collections of this name: versions kept after a switch, or being
        built by a reindex, and an original that a switch could not rename."""

    def version_facts(self) -> list[dict]:
        """versions(), each as {"collection": NAME, "model": its model's name or None,
        "image_fingerprint": its model's image tower's, or None, "unfinished": what a
        reindex (or migrate) into it that has not finished recorded (unfinished_copy),
        or None}."""
        return [{"collection": name, "model": None, "image_fingerprint": None, "unfinished": None}
                for name in self.versions()]

    def point_name_at(self, target: str) -> None:
        """Make the name, which does not exist, mean the version `target` (what a
        reindex to that version's model does when the record of the name was lost).
        The index is closed afterwards."""
        raise ClipsearchError(f"{self.location} cannot make {self.name!r} mean {target!r}; use it with "
                              f"--collection {target}")

    # -- a copy under way (clipsearch migrate) ------------------------------------
    @abstractmethod
    def unfinished_copy(self) -> dict | None:
        """What a `clipsearch migrate` into this collection recorded at its start and
        clears at its end ({"from": ..., "points": N}): None once it finished or where
        none ran. A copy that stopped leaves it, so that status and search can say the
        collection holds only part of its source."""

    @abstractmethod
    def record_unfinished_copy(self, copy: dict | None) -> None:
        """Record (or, with None, clear) the copy under way."""

    @abstractmethod
    def record_identity(self, identity: ModelIdentity) -> None:
        """Record `identity` as the collection's model, its vectors kept: for a model
        whose image tower is the one recorded (a text-only fine-tune)."""

    def prepare_switch(self, keep_old: bool, old_identity: ModelIdentity, progress=None) -> None:
        """What must happen before the last catch-up of a reindex (a server copies a
        collection that bears the name itself, to keep it). Default: nothing."""
        return None

    @abstractmethod
    def switch(self, target: str, keep_old: bool, old_identity: ModelIdentity) -> str | None:
        """Make the name mean `target`, a complete version. The collection it meant is
        kept (the name it can be reached by is returned) or dropped (None). The index
        is closed afterwards."""

    @abstractmethod
    def drop(self, collection: str) -> None:
        """Delete another collection of this index (a version of this name)."""

    # -- points -----------------------------------------------------------------
    @abstractmethod
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> None: ...

    @abstractmethod
    def query(self, vector: np.ndarray, k: int, under: str | None = None,
              exclude_ids: Sequence[str] = (), exact: bool = False,
              hnsw_ef: int | None = DEFAULT_HNSW_EF, where: Where | None = None) -> list[Hit]:
        """Cosine top-k; `under` keeps only paths below that folder and `where` only
        photos taken when, with what and where it says (payload filters, applied
        inside the search, not afterwards)."""

    @abstractmethod
    def recommend(self, positives: Sequence[np.ndarray], negatives: Sequence[np.ndarray], k: int,
                  under: str | None = None, exclude_ids: Sequence[str] = (),
                  hnsw_ef: int | None = DEFAULT_HNSW_EF, where: Where | None = None) -> list[Hit]:
        """Qdrant's recommend query (best-score strategy): images near the positive
        examples and away from the negative ones. Examples are vectors, which both
        backends take (edge takes no ids), so a text query can be one of them.
        `under` and `where` filter as in query()."""

    @abstractmethod
    def count(self, under: str | None = None) -> int: ...

    @abstractmethod
    def delete(self, ids: Sequence[str] = (), under: str | None = None) -> None: ...

    @abstractmethod
    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]: ...

    def find(self, field: str, values: Sequence[str] | None, with_vectors: bool = False,
             limit: int | None = None, fields: Sequence[str] | None = None) -> list[Record]:
        """Points whose keyword payload `field` is one of `values` (or, with None, has
        any value): how ingest finds a moved file's point by its content fingerprint.
        At most `limit` of them; with `fields`, each payload holds only those keys
        (reading fewer is most of the cost of a large lookup). Backends answer through
        the field's payload index; this reference version scans."""
        wanted = None if values is None else set(values)
        found = []
        for record in self.scroll(with_vectors=with_vectors):
            value = record.payload.get(field)
            if value is not None and (wanted is None or value in wanted):
                if fields is not None:
                    record = Record(record.id, {k: record.payload[k] for k in fields if k in record.payload},
                                    record.vector)
                found.append(record)
                if limit is not None and len(found) >= limit:
                    break
        return found

    def copy_points(self, sources: Sequence[str], ids: Sequence[str], payloads: Sequence[dict]) -> set[str]:
        """Write points `ids` with `payloads`, each with the vector of the point
        `sources[i]`: how a moved or copied file keeps its vector. A source that is not
        there (deleted meanwhile) writes nothing; its id is in the set returned."""
        vectors = self._vectors_to_copy(list(dict.fromkeys(sources)))
        kept = [k for k, source in enumerate(sources) if source in vectors]
        if kept:
            self._write_copies([ids[k] for k in kept], [vectors[sources[k]] for k in kept],
                               [payloads[k] for k in kept])
        return {i for i, source in zip(ids, sources) if source not in vectors}

    def _vectors_to_copy(self, ids: list[str]) -> dict:
        """The vectors of those of `ids` that exist, in the form _write_copies takes
        (backends keep their own, to pass them through unconverted)."""
        return {r.id: r.vector for r in self.retrieve(ids, with_vectors=True) if r.vector is not None}

    def _write_copies(self, ids: list[str], vectors: list, payloads: list[dict]) -> None:
        self.upsert(ids, np.stack(vectors), payloads)

    @abstractmethod
    def scroll(self, batch_size: int = 1000, with_vectors: bool = False,
               under: str | None = None) -> Iterator[Record]: ...

    @contextmanager
    def bulk_load(self):
        """Around a large ingest: backends that index while loading may pause that and
        restore it afterwards. Default: nothing to do."""
        yield

    def optimize(self) -> bool:
        """Build search structures after a bulk load; True if anything was done."""
        return False

    def describe(self) -> dict:
        """Facts for `clipsearch status`; never includes a key."""
        identity = self.stored_identity() if self.exists() else None
        return {
            "backend": self.backend,
            "location": self.location,
            "collection": self.name,
            **({"means": self.meant()} if self.meant() != self.name else {}),
            "exists": self.exists(),
            "points": self.count() if self.exists() else 0,
            "model": identity.to_dict() if identity else None,
            **({"unfinished_copy": copy} if self.exists() and (copy := self.unfinished_copy()) else {}),
            **({"versions": versions} if (versions := self.version_facts()) else {}),
        }

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
