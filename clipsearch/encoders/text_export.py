"""Export a loaded model's text tower to ONNX for the fast query path.

Runs once per model (as its files are now), after a query that took the full path:
torch is already loaded then. The tower is traced with torch's TorchScript-based
exporter, optimized once by onnxruntime (basic, portable graph rewrites) and saved
with its weights in a separate file, which onnxruntime maps instead of parsing. The
result is checked against the full model on a fixed set of texts before it is kept.

Tracing, optimizing and publishing the entry are tower_export.py's, shared with the
image tower: an export cut short is never found by a query, and one that runs out of
space raises cache.CacheFull after one warning line. The query it follows has been
answered, the cache only makes the next one faster, so failing the command would turn
a slower next query into a broken script.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from . import cache
from .cache import ONNX_DATA, ONNX_FILE, TOKENIZER_FILE
from .onnx_text import OnnxTextTower, load_tokenizer, tokenize
from .tower_export import ExportError, build_entry, largest_cosine_distance, onnx_sizes, optimize, trace

__all__ = ["ExportError", "export_text_tower"]

# Texts the export is checked on: short, long, punctuation, non-ASCII, repeated words.
PARITY_TEXTS = (
    "a photo of a dog",
    "x",
    "A red circle on a white background!",
    "the quick brown fox jumps over the lazy dog",
    "Ünïcödé: 日本の桜, café au lait",
    "sunset sunset sunset over the sea",
)
# Cosine distance allowed between the exported and the full tower (the contract is 1e-4).
PARITY_TOLERANCE = 1e-5
# Checked on every load of the tower (see onnx_text.OnnxTextTower).
PROBE_TEXT = "a photo"


def _tokenizer_of(encoder):
    first = encoder.st[0]
    tokenizer = getattr(first, "tokenizer", None)
    if tokenizer is None:
        processor = getattr(first, "processor", None)
        tokenizer = getattr(processor, "tokenizer", processor)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the model's tokenizer ({type(tokenizer).__name__}) has no `tokenizers` backend")
    return tokenizer, backend


def _max_length(encoder, tokenizer) -> int:
    limits = [int(encoder.clip.config.text_config.max_position_embeddings)]
    for value in (getattr(encoder.st, "max_seq_length", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(value, int) and value > 0:
            limits.append(value)
    return min(limits)


def _text_tower(clip):
    """The text tower as its own module: token ids and mask in, projected vector out."""
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids, attention_mask):
            out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            return out if torch.is_tensor(out) else out.pooler_output

    return TextTower(clip).eval()


def export_text_tower(encoder, key: str, folder: Path, model: str) -> tuple[Path, float]:
    """Write the cache entry `key` for `encoder`'s text tower; return its folder and
    the largest cosine distance to the full model seen on PARITY_TEXTS."""
    import onnxruntime
    import torch

    tokenizer, backend = _tokenizer_of(encoder)
    max_length = _max_length(encoder, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    identity = encoder.identity  # hashes the weights: the fast path never has to
    measured: dict[str, float] = {}

    def build(tmp: Path) -> dict:
        backend.save(str(tmp / TOKENIZER_FILE))
        fast_tokenizer = load_tokenizer(tmp / TOKENIZER_FILE, max_length)
        # Two texts of different lengths: the traced graph handles padding.
        sample_ids, sample_mask = tokenize(fast_tokenizer, ["a photo of a cat", "x"], max_length, pad_id)
        clip = encoder.clip
        device = next(clip.parameters()).device
        raw = tmp / "raw.onnx"
        trace(_text_tower(clip), (torch.from_numpy(sample_ids).to(device), torch.from_numpy(sample_mask).to(device)),
              raw, input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                            "text_embeds": {0: "batch"}})
        optimize(raw, tmp / ONNX_FILE, ONNX_DATA)
        raw.unlink()

        tower = OnnxTextTower(tmp / ONNX_FILE, fast_tokenizer, max_length, pad_id)
        fast = tower.encode(list(PARITY_TEXTS))
        probe = tower.encode([PROBE_TEXT])[0]
        del tower
        distance = measured["distance"] = largest_cosine_distance(fast, encoder.encode_texts(list(PARITY_TEXTS)))
        if not distance <= PARITY_TOLERANCE:
            raise ExportError(f"the exported text tower differs from the model (cosine distance {distance:.2e})")
        return {
            "model": model,
            "folder": str(folder),
            "identity": identity.to_dict(),
            "max_length": max_length,
            "pad_id": int(pad_id),
            "tokenizer_sha256": hashlib.sha256((tmp / TOKENIZER_FILE).read_bytes()).hexdigest(),
            "onnx_sizes": onnx_sizes(tmp, ONNX_FILE, ONNX_DATA),
            "parity_max_cosine_distance": distance,
            "probe": {"text": PROBE_TEXT, "vector": [float(x) for x in probe]},
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "created": time.time(),
        }

    return build_entry(cache.TEXT, key, build), measured["distance"]
