"""A collection's versions: what `clipsearch reindex` builds, and the name that moves.

People name a collection (`images`) and keep that name while the model behind it
changes. Re-embedding with a new image tower therefore fills a new collection, a
version named `<name>-<key>` where the key is the new image tower's (identity_key),
while searches keep reading the old one; when it is complete one switch makes the
name mean the version: on a Qdrant server (and qdrant-client's :memory:) the name
becomes an alias, which every client follows at its next request; on the embedded
index the index folder records it in `aliases.json`, read at every open.

The key depends only on what made the vectors, so a killed reindex resumes into the
same version, and reindexing back to an earlier model finds the version it kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from ..encoders.identity import FP32, ModelIdentity
from ..errors import ClipsearchError

ALIASES = "aliases.json"  # in an embedded index folder: {"format": 1, "aliases": {name: collection}}
KEY_LENGTH = 12


def identity_key(identity: ModelIdentity) -> str:
    """12 hex digits naming the image vectors `identity` makes (tower, size, precision)."""
    text = f"{identity.image_fingerprint}:{identity.dim}:{identity.precision or FP32}"
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def version_name(name: str, identity: ModelIdentity) -> str:
    return f"{name}-{identity_key(identity)}"


def is_version_of(candidate: str, name: str) -> bool:
    return re.fullmatch(re.escape(name) + f"-[0-9a-f]{{{KEY_LENGTH}}}", candidate) is not None


# -- the embedded index's record of its names ------------------------------------------

def read_aliases(root: Path) -> dict[str, str]:
    """{name: collection} recorded in an embedded index folder ({} when none)."""
    path = root / ALIASES
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not the JSON clipsearch writes"
        raise ClipsearchError(f"{path} is damaged ({why}); it says which collection each name means: restore it "
                              "from a backup, or remove it to use the collections by their own names") from None
    aliases = data.get("aliases") if isinstance(data, dict) else None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ClipsearchError(f"{path} is damaged (no aliases table); restore it from a backup, or remove it "
                              "to use the collections by their own names")
    return dict(aliases)


def write_aliases(root: Path, aliases: dict[str, str]) -> None:
    """Atomically (rename over), and durably: a kill leaves the old table or the new.
    The caller holds the index's aliases lock (edge.py)."""
    path = root / ALIASES
    descriptor, staging = tempfile.mkstemp(prefix=f".{ALIASES}.", dir=root)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump({"format": 1, "aliases": aliases}, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    descriptor = os.open(root, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
