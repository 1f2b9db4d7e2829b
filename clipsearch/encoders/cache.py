"""The on-disk model cache: exported text towers and model identity records.

Layout (under the cache_dir setting, CLIPSEARCH_CACHE_DIR: by default the user cache dir, e.g.
~/.cache/clipsearch):

    text-towers/<key>/manifest.json     what was exported: model identity, tokenizer facts
    text-towers/<key>/text.onnx(.data)  the text tower as ONNX, weights in the .data file
    text-towers/<key>/tokenizer.json    the model's tokenizer, for the `tokenizers` library
    query-vectors/<model>/<text>.f32    one cached query vector (encoders/query_vectors.py)
    identities/<key>.json               a model identity alone, recorded by ingest for a
                                        model no query has exported a text tower of yet

An entry's <key> is a hash of the model folder's files (relative path, size, mtime,
inode), so finding it costs a few stat() calls: no torch, no hashing of weights. The
model identity the index is checked against was computed by the full Encoder when
the entry was exported, and is read back from the manifest; an ingest run with nothing
to embed reads it too (`read_identity`), and so loads no model either. Changing any
file of the model folder changes the key, and the next query takes the full path and
exports again.

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from ..config import cache_root
from .identity import ModelIdentity

FORMAT = 1
MANIFEST = "manifest.json"
ONNX_FILE = "text.onnx"
ONNX_DATA = "text.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
TOWERS = "text-towers"
VECTORS = "query-vectors"
IDENTITIES = "identities"

# Exported towers kept at most (a ViT-B/32 text tower is about 150-250 MB); the least
# recently used go first, and entries whose model folder is gone go always.
MAX_TOWERS = 4
# Identity records kept at most (a few hundred bytes each), least recently used first.
MAX_IDENTITIES = 64

# -- exported text towers ------------------------------------------------------------------


class DamagedEntry(Exception):
    """A cache entry that cannot be used; it is removed and rebuilt."""


class TowerEntry:
    """One exported text tower: a folder with a manifest, the ONNX files and the tokenizer."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = folder
        self.manifest = manifest

    @property
    def failed(self) -> str | None:
        """Why the export of this model did not work (it is not tried again until the
        model folder changes), or None for a usable entry."""
        return self.manifest.get("failed")

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.manifest["identity"])

    @property
    def onnx_path(self) -> Path:
        return self.folder / ONNX_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / TOKENIZER_FILE

    @property
    def vector_key(self) -> str:
        """Cached query vectors are valid for this text tower and tokenizer."""
        m = self.manifest
        identity = m["identity"]
        material = f"{identity['text_fingerprint']}\0{identity['dim']}\0{m['tokenizer_sha256']}\0{m['max_length']}"
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def touch(self) -> None:
        """Mark as recently used (the pruning order)."""
        try:
            os.utime(self.folder / MANIFEST)
        except OSError:
            pass


def towers_dir() -> Path:
    return cache_root() / TOWERS


def read_entry(key: str) -> TowerEntry | None:
    """The entry for `key`: None when there is none; DamagedEntry when it is unusable."""
    folder = towers_dir() / key
    path = folder / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        if folder.exists():  # entries are published whole, manifest included
            raise DamagedEntry(f"text tower cache {folder} is damaged (its manifest is missing)") from None
        return None
    except OSError as exc:
        raise DamagedEntry(f"cannot read {path}: {exc}") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else '?'} is not {FORMAT}")
        entry = TowerEntry(folder, manifest)
        if entry.failed:
            return entry
        entry.identity  # noqa: B018 - validates the identity record
        for field in ("max_length", "pad_id", "tokenizer_sha256", "onnx_sizes", "probe"):
            if field not in manifest:
                raise ValueError(f"no {field!r}")
        for name, size in manifest["onnx_sizes"].items():
            actual = (folder / name).stat().st_size
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, expected {size}")
        if not entry.tokenizer_path.is_file():
            raise ValueError(f"{TOKENIZER_FILE} is missing")
    except Exception as exc:  # JSON, types, missing files: all mean "rebuild"
        raise DamagedEntry(f"text tower cache {folder} is damaged ({exc})") from None
    return entry


def read_or_discard(key: str) -> tuple[TowerEntry | None, str]:
    """(the entry for `key` or None, and why a damaged one was removed, or "")."""
    try:
        return read_entry(key), ""
    except DamagedEntry as exc:
        remove_entry(towers_dir() / key)
        return None, str(exc)


def remove_entry(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def new_entry_dir(key: str) -> Path:
    """A private temporary folder to build an entry in; `commit_entry` publishes it."""
    root = towers_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    return tmp


def commit_entry(tmp: Path, key: str, manifest: dict) -> Path:
    """Write the manifest last and move the folder into place in one rename, so a
    reader sees a whole entry or none. Another process that published the same key
    first wins."""
    manifest = {"format": FORMAT, **manifest}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    final = towers_dir() / key
    if final.exists():  # a damaged or stale entry of the same key
        remove_entry(final)
    try:
        os.rename(tmp, final)
    except OSError:  # published concurrently
        remove_entry(tmp)
    return final


def write_failure(key: str, model: str, folder: Path, reason: str) -> None:
    """Remember that this model (as its files are now) cannot be exported."""
    tmp = new_entry_dir(key)
    commit_entry(tmp, key, {"failed": reason, "model": model, "folder": str(folder), "created": time.time()})


def prune(keep: str | None = None, max_towers: int = MAX_TOWERS) -> None:
    """Drop entries and identity records whose model folder is gone, leftovers of
    interrupted exports, towers beyond `max_towers` and identity records beyond
    MAX_IDENTITIES (least recently used first), and vectors no tower uses."""
    _prune_identities(keep)
    root = towers_dir()
    if not root.is_dir():
        return
    live: list[tuple[float, Path, dict]] = []
    for folder in root.iterdir():
        if folder.name.startswith(".tmp-"):
            try:
                if time.time() - folder.stat().st_mtime > 3600:
                    remove_entry(folder)
            except OSError:
                pass
            continue
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            used = (folder / MANIFEST).stat().st_mtime
            source = manifest.get("folder")
        except (OSError, ValueError, AttributeError):
            remove_entry(folder)
            continue
        if folder.name != keep and source and not Path(source).exists():
            remove_entry(folder)
            continue
        live.append((used, folder, manifest))
    live.sort(key=lambda item: item[0], reverse=True)
    towers = [item for item in live if not item[2].get("failed")]
    for _, folder, _ in towers[max_towers:]:
        if folder.name != keep:
            remove_entry(folder)
    kept_vector_keys = set()
    for _, folder, manifest in live:
        if folder.exists() and not manifest.get("failed"):
            try:
                kept_vector_keys.add(TowerEntry(folder, manifest).vector_key)
            except (KeyError, TypeError):
                pass
    vectors = cache_root() / VECTORS
    if vectors.is_dir():
        for folder in vectors.iterdir():
            if folder.name not in kept_vector_keys:
                remove_entry(folder)


# -- identities recorded by ingest --------------------------------------------------------


def identities_dir() -> Path:
    return cache_root() / IDENTITIES


def read_identity(key: str) -> ModelIdentity | None:
    """The identity of the model whose files have key `key`, as the full Encoder
    computed it: from the text tower entry, else from the record ingest wrote. None
    when neither has it; a damaged entry or record counts as none (the next query
    rebuilds the entry, the next load rewrites the record)."""
    try:
        entry = read_entry(key)
    except DamagedEntry:
        entry = None
    if entry is not None and "identity" in entry.manifest:  # not a failed export's entry
        entry.touch()
        return entry.identity
    path = identities_dir() / f"{key}.json"
    try:
        identity = ModelIdentity.from_dict(json.loads(path.read_text())["identity"])
        os.utime(path)  # recently used: the pruning order
    except Exception:  # missing, unreadable, not JSON, no identity: all mean "load the model"
        return None
    return identity


def write_identity(key: str, model: str, folder: Path, identity: ModelIdentity) -> None:
    """Record `identity` for the model files of key `key` (atomically)."""
    root = identities_dir()
    root.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "model": model, "folder": str(folder), "identity": identity.to_dict(),
              "created": time.time()}
    tmp = root / f".{key}.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, root / f"{key}.json")


def _prune_identities(keep: str | None) -> None:
    root = identities_dir()
    if not root.is_dir():
        return
    live: list[tuple[float, Path]] = []
    for path in root.iterdir():
        try:
            used = path.stat().st_mtime
            if path.name.startswith("."):  # an interrupted write
                if time.time() - used > 3600:
                    path.unlink()
                continue
            source = json.loads(path.read_text()).get("folder")
        except (OSError, ValueError, AttributeError):
            path.unlink(missing_ok=True)
            continue
        if path.stem != keep and source and not Path(source).exists():
            path.unlink(missing_ok=True)
            continue
        live.append((used, path))
    live.sort(reverse=True)
    for _, path in live[MAX_IDENTITIES:]:
        if path.stem != keep:
            path.unlink(missing_ok=True)
