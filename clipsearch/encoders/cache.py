"""The on-disk model cache: exported text and image towers, and model identity records.

Layout (under the cache_dir setting, CLIPSEARCH_CACHE_DIR: by default the user cache dir, e.g.
~/.cache/clipsearch):

    text-towers/<key>/manifest.json     what was exported: model identity, tokenizer facts
    text-towers/<key>/text.onnx(.data)  the text tower as ONNX, weights in the .data file
    text-towers/<key>/tokenizer.json    the model's tokenizer, for the `tokenizers` library
    image-towers/<key>/manifest.json    the image tower (encoders/image_export.py): identity,
    image-towers/<key>/image.onnx(.data)  preprocessing, probe; ingest encodes with it
    image-towers-int8/<key>/...         the same tower quantized to int8 (--precision int8)
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

A cache that cannot be written (a full disk, a quota, a read-only folder) never fails a
command: the cache only saves time. The first such failure of a process prints one
warning line naming the file and the reason (`warn_unwritable`); what was half written
is removed, and a tower whose export ran out of space is not recorded as a model that
cannot be exported: it is exported again once there is room.

Every kind of tower (`TowerKind`: TEXT, IMAGE, IMAGE_INT8) lives in its own folder
under the same key, and goes through the same functions: read_entry checks a manifest
and the files it names, commit_entry publishes a whole entry in one rename,
write_failure remembers a model that cannot be exported, prune keeps a few of each.

This module imports only the standard library.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import cache_root
from .identity import ModelIdentity

FORMAT = 1
MANIFEST = "manifest.json"
ONNX_FILE = "text.onnx"
ONNX_DATA = "text.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
TOWERS = "text-towers"
IMAGE_TOWERS = "image-towers"
IMAGE_INT8_TOWERS = "image-towers-int8"
VECTORS = "query-vectors"
IDENTITIES = "identities"

# Exported towers kept at most (a ViT-B/32 text tower is about 150-250 MB); the least
# recently used go first, and entries whose model folder is gone go always.
MAX_TOWERS = 4
# Image towers kept at most, per precision (a ViT-B/32 image tower is about 350 MB in
# fp32, 90 MB in int8).
MAX_IMAGE_TOWERS = 2
# Identity records kept at most (a few hundred bytes each), least recently used first.
MAX_IDENTITIES = 64

# A failed write leaves less than this free on the cache's file system: it ran out of
# space, whatever the exception says (onnxruntime reports a full disk as "Failed to write
# external initializers", with no errno; tokenizers as "... (os error 28)").
LOW_SPACE_BYTES = 1 << 20
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
_OUT_OF_SPACE_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")

# -- writing, and failing to ---------------------------------------------------------------


class CacheFull(OSError):
    """The cache's file system (or the user's quota) is full: a fact about this machine,
    not about the model, so it is never recorded as a failed export."""


def reason_of(exc: BaseException) -> str:
    """A failed write's reason as a phrase for one line: "no space left on device"."""
    if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if is_out_of_space(exc):
        return os.strerror(errno.ENOSPC)[0].lower() + os.strerror(errno.ENOSPC)[1:]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_out_of_space(exc: BaseException, where: Path | None = None) -> bool:
    """Whether `exc` (or what it was raised from) means the disk or quota is full;
    with `where`, also when the file system there has under LOW_SPACE_BYTES left."""
    seen = exc
    for _ in range(8):  # the chain of causes, which a library may wrap an OSError in
        if isinstance(seen, OSError) and seen.errno in OUT_OF_SPACE:
            return True
        if any(words in str(seen).lower() for words in _OUT_OF_SPACE_WORDS):
            return True
        following = seen.__cause__ or seen.__context__
        if following is None:
            break
        seen = following
    if where is not None:
        try:
            stats = os.statvfs(where)
        except OSError:
            return False
        return stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES
    return False


_warned = False  # whether this process has said that the cache cannot be written


def warn_unwritable(path: Path, exc: BaseException) -> None:
    """One line on stderr, the first time in this process that a cache file cannot be
    written; later failures are the same story and stay quiet, until a write succeeds
    again (`wrote`). Never raises."""
    global _warned
    if _warned:
        return
    _warned = True
    line = (f"clipsearch: warning: cannot write {path}: {reason_of(exc)}; carrying on without the cache "
            f"(cache_dir {cache_root()}), so later runs repeat this work until it can be written")
    try:
        if "tqdm" in sys.modules:  # keeps clear of a live progress line, as Progress.message does
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:
        pass  # a closed or broken stderr: the warning is all that is lost


def wrote() -> None:
    """A cache write succeeded: a later failure is news again, and is said."""
    global _warned
    _warned = False


def write_atomic(path: Path, data: bytes) -> None:
    """`data` into `path` through a temporary file and a rename: a reader sees the old
    file or the whole new one, never part. A failed write removes its temporary file
    (on a full disk, a half-written one would hold the space that is missing)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- exported towers ----------------------------------------------------------------------


@dataclass(frozen=True)
class TowerKind:
    """One kind of exported tower: its folder under the cache root and what a usable
    entry of it holds."""

    folder: str
    what: str  # for messages: "text tower"
    onnx_file: str
    required: tuple[str, ...]  # manifest fields besides identity and onnx_sizes
    files: tuple[str, ...] = ()  # other files the entry must have
    keep: int = MAX_TOWERS  # entries kept at most (prune)


TEXT = TowerKind(TOWERS, "text tower", ONNX_FILE, ("max_length", "pad_id", "tokenizer_sha256", "probe"),
                 (TOKENIZER_FILE,))
_IMAGE_FIELDS = ("image_size", "preprocess", "probe", "precision")
IMAGE = TowerKind(IMAGE_TOWERS, "image tower", "image.onnx", _IMAGE_FIELDS, keep=MAX_IMAGE_TOWERS)
IMAGE_INT8 = TowerKind(IMAGE_INT8_TOWERS, "int8 image tower", "image.onnx", _IMAGE_FIELDS, keep=MAX_IMAGE_TOWERS)
KINDS = (TEXT, IMAGE, IMAGE_INT8)


def image_kind(precision: str) -> TowerKind:
    return IMAGE_INT8 if precision == "int8" else IMAGE


class DamagedEntry(Exception):
    """A cache entry that cannot be used; it is removed and rebuilt."""


class TowerEntry:
    """One exported tower: a folder with a manifest, the ONNX files and (for a text
    tower) the tokenizer."""

    def __init__(self, folder: Path, manifest: dict, kind: TowerKind = TEXT):
        self.folder = folder
        self.manifest = manifest
        self.kind = kind

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
        return self.folder / self.kind.onnx_file

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


def towers_dir(kind: TowerKind = TEXT) -> Path:
    return cache_root() / kind.folder


def read_entry(key: str, kind: TowerKind = TEXT) -> TowerEntry | None:
    """The entry for `key`: None when there is none; DamagedEntry when it is unusable."""
    folder = towers_dir(kind) / key
    path = folder / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        if folder.exists():  # entries are published whole, manifest included
            raise DamagedEntry(f"{kind.what} cache {folder} is damaged (its manifest is missing)") from None
        return None
    except OSError as exc:
        raise DamagedEntry(f"cannot read {path}: {exc}") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else '?'} is not {FORMAT}")
        entry = TowerEntry(folder, manifest, kind)
        if entry.failed:
            return entry
        entry.identity  # noqa: B018 - validates the identity record
        for field in ("onnx_sizes", *kind.required):
            if field not in manifest:
                raise ValueError(f"no {field!r}")
        if kind.onnx_file not in manifest["onnx_sizes"]:
            raise ValueError(f"{kind.onnx_file} is not listed")
        for name, size in manifest["onnx_sizes"].items():
            actual = (folder / name).stat().st_size
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, expected {size}")
        for name in kind.files:
            if not (folder / name).is_file():
                raise ValueError(f"{name} is missing")
    except Exception as exc:  # JSON, types, missing files: all mean "rebuild"
        raise DamagedEntry(f"{kind.what} cache {folder} is damaged ({exc})") from None
    return entry


def read_or_discard(key: str, kind: TowerKind = TEXT) -> tuple[TowerEntry | None, str]:
    """(the entry for `key` or None, and why a damaged one was removed, or "")."""
    try:
        return read_entry(key, kind), ""
    except DamagedEntry as exc:
        remove_entry(towers_dir(kind) / key)
        return None, str(exc)


def remove_entry(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def new_entry_dir(key: str, kind: TowerKind = TEXT) -> Path:
    """A private temporary folder to build an entry in; `commit_entry` publishes it."""
    root = towers_dir(kind)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    return tmp


def commit_entry(tmp: Path, key: str, manifest: dict, kind: TowerKind = TEXT) -> Path:
    """Write the manifest last and move the folder into place in one rename, so a
    reader sees a whole entry or none. Another process that published the same key
    first wins. A manifest that cannot be written takes the folder with it: the
    entry is not published, and no half-built folder holds the space."""
    manifest = {"format": FORMAT, **manifest}
    try:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
        remove_entry(tmp)
        raise
    final = towers_dir(kind) / key
    if final.exists():  # a damaged or stale entry of the same key
        remove_entry(final)
    try:
        os.rename(tmp, final)
    except OSError:  # published concurrently
        remove_entry(tmp)
    wrote()
    return final


# (kind folder, key) of the exports in this process whose latest run ran out of space
# (tower_export.py): that failure is the machine's, so the write_failure that follows
# it records nothing.
_out_of_space_keys: set[tuple[str, str]] = set()


def export_ran_out_of_space(key: str, kind: TowerKind = TEXT) -> None:
    _out_of_space_keys.add((kind.folder, key))


def write_failure(key: str, model: str, folder: Path, reason: str, kind: TowerKind = TEXT) -> None:
    """Remember that this model (as its files are now) cannot be exported. Not when
    the export ran out of space: that says nothing about the model, and a record
    would keep every later query on the full path after the space is freed."""
    if (kind.folder, key) in _out_of_space_keys:
        _out_of_space_keys.discard((kind.folder, key))  # this failure only: a later one may be the model's
        return
    tmp = new_entry_dir(key, kind)
    commit_entry(tmp, key, {"failed": reason, "model": model, "folder": str(folder), "created": time.time()}, kind)


def prune(keep: str | None = None, max_towers: int = MAX_TOWERS) -> None:
    """Drop entries and identity records whose model folder is gone, leftovers of
    interrupted exports, text towers beyond `max_towers`, image towers beyond their
    kind's `keep`, identity records beyond MAX_IDENTITIES (least recently used
    first), and vectors no text tower uses."""
    _prune_identities(keep)
    for kind in (IMAGE, IMAGE_INT8):
        _prune_towers(kind, keep, kind.keep)
    live = _prune_towers(TEXT, keep, max_towers)
    if live is None:
        return
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


def _prune_towers(kind: TowerKind, keep: str | None, max_towers: int) -> list[tuple[float, Path, dict]] | None:
    """Prune one kind's folder; its entries left (failed records included), or None
    when it has no folder."""
    root = towers_dir(kind)
    if not root.is_dir():
        return None
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
    return live


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
    """Record `identity` for the model files of key `key` (atomically). A record that
    cannot be written is said once (warn_unwritable) and raised as the OSError it is:
    the caller carries on, and the next run loads the model to learn the identity."""
    root = identities_dir()
    path = root / f"{key}.json"
    record = {"format": FORMAT, "model": model, "folder": str(folder), "identity": identity.to_dict(),
              "created": time.time()}
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=2).encode())
    except OSError as exc:
        warn_unwritable(path, exc)
        raise
    wrote()


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
