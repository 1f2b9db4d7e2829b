"""A CLIP text tower exported to ONNX, run by onnxruntime with the `tokenizers` library.

No torch, sentence-transformers or transformers: a query through this tower starts in
well under a second. encoders/text_export.py writes the tower; encoders/query.py
decides when a query uses it. Imports numpy at import time; onnxruntime and
tokenizers on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .vectors import l2_normalize

# How far the tower's output for its probe text may move before the export counts as damaged.
PROBE_TOLERANCE = 1e-5


def tokenize(tokenizer, texts, max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`tokenizers` encodings padded to the longest: (input_ids, attention_mask) int64."""
    encodings = tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return ids, mask


def load_tokenizer(path: Path, max_length: int):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


class OnnxTextTower:
    """An exported text tower in an onnxruntime session, with its tokenizer."""

    def __init__(self, onnx_path: Path, tokenizer, max_length: int, pad_id: int, many: bool = False,
                 probe: tuple[str, Sequence[float]] | None = None, spin: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Optimized once at export time; loading skips the optimizer.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        if not many:
            # Pre-packing copies every weight matrix at load: worth it for many texts only.
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.disable_prepacking", "1")
        if not spin:  # idle threads sleep instead of busy-waiting for the next run
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.many = many
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = pad_id
        # A text whose vector was recorded at export: it rides along with the first
        # batch (nearly free: the weights are read once per run either way) and
        # catches weights damaged on disk since.
        self.probe = probe

    def encode(self, texts: Sequence[str], batch_size: int = 64, running=None) -> np.ndarray:
        """`running` (a threading.Event), when given, is set as the first ONNX run
        starts: from there on this thread no longer needs the GIL for a while."""
        texts = list(texts)
        probe = self.probe
        if probe is not None:
            texts.insert(0, probe[0])
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask = tokenize(self.tokenizer, texts[start:start + batch_size], self.max_length, self.pad_id)
            if running is not None:
                running.set()
            out.append(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        vectors = l2_normalize(np.concatenate(out))
        if probe is not None:
            self.probe = None
            expected = l2_normalize(np.asarray(probe[1], dtype=np.float32))[0]
            distance = float(1.0 - vectors[0] @ expected)
            if not distance <= PROBE_TOLERANCE:
                raise ValueError(f"its output for a known text moved by cosine distance {distance:.1e}: "
                                 "the files changed since the export")
            vectors = vectors[1:]
        return vectors


