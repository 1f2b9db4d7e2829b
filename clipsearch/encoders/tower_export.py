"""What exporting any tower to ONNX shares: tracing, optimizing, and publishing the entry.

text_export.py and image_export.py each say what their tower is (a module to trace,
sample inputs, a parity check against the full model, a manifest); this module turns
that into a cache entry the same way for both:

  - traced with torch's TorchScript-based exporter, optimized once by onnxruntime
    (basic, portable graph rewrites) and saved with its weights in a separate file,
    which onnxruntime maps instead of parsing (`trace`, `optimize`);
  - built in a private temporary folder and published by one rename with its manifest
    written last (cache.commit_entry, through `build_entry`): an export cut short
    (killed, or out of space) is never found, and leaves no half-built folder behind
    when it fails here;
  - an export that runs out of space says so in one warning line and raises
    cache.CacheFull: the command it serves goes on without the cache, and since a full
    disk says nothing about the model, it is tried again next time rather than
    remembered as a model that cannot be exported.

torch and onnxruntime are imported inside the functions: the callers have loaded torch
already (they export from a loaded model).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, TextIO

import numpy as np

from . import cache

OPSET = 17


class ExportError(Exception):
    """The model cannot be exported (or its export does not match it): remembered,
    and the torch path answers until the model's files change."""


def trace(module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
          dynamic_axes: dict[str, dict[int, str]]) -> None:
    """`module` (in eval mode) traced on `args` into the ONNX file `path`; the
    exporter's warnings and prints are kept off the command's stdout."""
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(_ThisThreadTo(sys.stderr)), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


class _ThisThreadTo:
    """sys.stdout while this thread exports: its prints go to `target` (none where that
    is None: a process without stderr), while an app's other threads print where they
    did; sys.stdout is one for the whole process."""

    def __init__(self, target: TextIO | None):
        self._thread = threading.get_ident()
        self._target = target
        self._original = sys.stdout

    def _stream(self) -> TextIO | None:
        return self._target if threading.get_ident() == self._thread else self._original

    def write(self, text: str) -> int:
        stream = self._stream()
        return len(text) if stream is None else stream.write(text)

    def flush(self) -> None:
        stream = self._stream()
        if stream is not None:
            stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream(), name)


def optimize(raw: Path, out: Path, data_name: str) -> None:
    """onnxruntime's basic graph optimizations, applied once and saved, so that
    loading the model later can skip them; weights go to `data_name`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])


def largest_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest cosine distance between matching rows of two sets of unit vectors."""
    return float(np.max(1.0 - np.sum(a * b, axis=1)))


def onnx_sizes(folder: Path, *names: str) -> dict[str, int]:
    """The manifest's record of the ONNX files, which read_entry checks on every load."""
    return {name: (folder / name).stat().st_size for name in names if (folder / name).exists()}


def build_entry(kind: cache.TowerKind, key: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Run `build(tmp)`, which writes a tower's files into the temporary folder `tmp`
    and returns its manifest; publish the entry; return its folder. Whatever fails
    removes `tmp`; running out of space raises cache.CacheFull (said once)."""
    try:
        tmp = cache.new_entry_dir(key, kind)
    except OSError as exc:
        if cache.is_out_of_space(exc):
            raise out_of_space(key, kind, cache.towers_dir(kind), exc) from exc
        raise
    try:
        manifest = build(tmp)
    except BaseException as exc:
        # Measured before the partial export is removed, which frees what it took.
        full = isinstance(exc, Exception) and cache.is_out_of_space(exc, where=tmp)
        cache.remove_entry(tmp)
        if full:
            raise out_of_space(key, kind, tmp.parent, exc) from exc
        raise
    try:
        return cache.commit_entry(tmp, key, manifest, kind)  # removes tmp if it fails
    except OSError as exc:
        if cache.is_out_of_space(exc, where=tmp.parent):
            raise out_of_space(key, kind, tmp.parent, exc) from exc
        raise


def out_of_space(key: str, kind: cache.TowerKind, folder: Path, exc: BaseException) -> cache.CacheFull:
    """Say once that the cache is full, and keep the failure from being recorded. The
    libraries' own words for it vary (onnxruntime: "Failed to write external
    initializers"), so the line and the error give the errno's."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno in cache.OUT_OF_SPACE else errno.ENOSPC
    full = cache.CacheFull(code, os.strerror(code), str(folder))
    cache.export_ran_out_of_space(key, kind)
    cache.warn_unwritable(folder, full)
    return full


class ExportOutcome(NamedTuple):
    result: Any  # what the export returned; None when it failed
    failure: str | None = None  # why it failed, one line
    lasting: bool = False  # the failure is the model's, remembered (not the disk's)


def export_once(export: Callable[[], Any], key: str, model: str, folder: Path, kind: cache.TowerKind
                ) -> ExportOutcome:
    """Run an export of a tower (text or image) the way both are run: a full cache is
    this machine's disk, not the model, so it is not remembered and the export is tried
    again once there is room; any other failure is the model's, remembered in the cache
    so that later runs take the full model without trying again. After a success the
    exports of older versions of the model's files are pruned."""
    try:
        result = export()
    except cache.CacheFull as exc:
        return ExportOutcome(None, first_line(exc))
    except Exception as exc:
        reason = first_line(exc)
        with contextlib.suppress(OSError):
            cache.write_failure(key, model, folder, reason, kind)
        return ExportOutcome(None, reason, lasting=True)
    with contextlib.suppress(OSError):
        cache.prune(keep=key)
    return ExportOutcome(result)


def first_line(exc: BaseException) -> str:
    """An error's first line (its type's name when it says nothing), for one-line messages."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
