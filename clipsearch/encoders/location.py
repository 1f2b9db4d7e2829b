"""Where a model's files are: a hub id or a local folder, found without loading anything.

A few stat() calls answer "which folder holds this model, and has it changed?"
(`locate`), which is how the caches recognise a model without importing torch.
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ClipsearchError
from ..names import name_bytes

# A model folder with more files than this (or deeper) is not keyed: full path.
MAX_FILES = 1000
MAX_DEPTH = 3
# Part of every key: changing it retires every cache entry at once.
KEY_FORMAT = 1

# What `clipsearch finetune` writes in its output folder from its start (finetune/pipeline.py's RUN_FILE).
FINETUNE_RUN_FILE = "finetune_run.json"

LOCAL_MODEL_HINT = (
    "set CLIPSEARCH_MODEL (or --model) to a local CLIP folder, either a sentence-transformers "
    "folder (modules.json) or a transformers CLIP folder (config.json)"
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, because the hub client retries for over a minute before it
    admits there is no network."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.sep + os.sep in name or Path(name).exists()


def resolve_model_location(name: str) -> tuple[str, bool]:
    """Return (what to load, is_local). Fails early, with one line, on a local path
    that is not a model folder."""
    if _looks_like_path(name):
        folder = Path(name).expanduser().resolve()
        if not folder.is_dir():
            what = "is a file, not a model folder" if folder.exists() else "does not exist"
            raise ClipsearchError(f"model folder {folder} {what}; {LOCAL_MODEL_HINT}")
        if not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
            if (folder / FINETUNE_RUN_FILE).is_file():
                replaced = folder.with_name(f".{folder.name}.replaced")  # finetune --overwrite set it aside
                kept = (f"; the model it replaces is kept in {replaced} (move it back to use it meanwhile)"
                        if replaced.is_dir() else "")
                checkpointed = any((folder / "checkpoints").glob("checkpoint-*"))
                raise ClipsearchError(
                    f"{folder} holds a fine-tune that has not saved its model (still training, or stopped): "
                    f"`clipsearch finetune DATA -o {folder} --resume` finishes it"
                    + (" from its last checkpoint" if checkpointed else "") + kept)
            raise ClipsearchError(
                f"{folder} is not a model folder (no modules.json or config.json); {LOCAL_MODEL_HINT}"
            )
        return str(folder), True
    return name, False


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder, found the way huggingface_hub finds it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model already downloaded (its `main`), or None."""
    if repo_id.count("/") != 1:
        return None
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    folder = repo / "snapshots" / commit
    return folder if commit and folder.is_dir() else None


def model_folder(model: str) -> tuple[Path | None, str]:
    """(the folder holding `model`'s files, why not) without loading anything."""
    try:
        location, is_local = resolve_model_location(model)
    except ClipsearchError as exc:
        return None, str(exc)
    if is_local:
        return Path(location), ""
    snapshot = hub_snapshot(location)
    if snapshot is None:
        return None, f"hub model {location!r} is not in the Hugging Face cache ({hub_cache_dir()}) yet"
    return snapshot, ""


def folder_key(folder: Path) -> str | None:
    """A hash of every file under `folder` by relative path, size, mtime and inode
    (symlinks followed, as in the hub's cache). None for a folder too big to key."""
    entries: list[str] = []

    def walk(path: Path, rel: str, depth: int) -> bool:
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            return False
        for item in items:
            if item.name.startswith("."):
                continue
            name = f"{rel}{item.name}"
            try:
                st = item.stat()  # follows symlinks
            except OSError:
                continue
            if item.is_dir():
                if depth >= MAX_DEPTH or not walk(Path(item.path), name + "/", depth + 1):
                    return False
            else:
                entries.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
                if len(entries) > MAX_FILES:
                    return False
        return True

    if not walk(folder, "", 0) or not entries:
        return None
    digest = hashlib.sha256(name_bytes(f"clipsearch-text-tower:{KEY_FORMAT}\0{folder}\0"))
    digest.update(name_bytes("\n".join(entries)))
    return digest.hexdigest()[:32]


def locate(model: str) -> tuple[Path | None, str | None, str]:
    """(model folder, cache key, why there is no key) for `model` as its files are
    now: a few stat() calls, nothing loaded. A folder of None means a hub model not
    downloaded yet (loading it may download it)."""
    folder, why = model_folder(model)
    if folder is None:
        return None, None, why
    key = folder_key(folder)
    if key is None:
        return folder, None, f"model folder {folder} has too many files or levels to key a cache by"
    return folder, key, ""
