"""Everything that turns images or text into vectors.

    protocol.py       ImageTextEncoder: the contract every encoder below keeps
    torch_clip.py     Encoder: the full CLIP through sentence-transformers (torch)
    lazy.py           LazyEncoder: ingest's encoder; loads the model only when a file needs it
    image_towers.py   ImageTowers: ingest's choice between the ONNX image tower and the full model
    query.py          QueryEncoders: a query's choice between the ONNX text tower and the full model
    onnx_text.py      the exported text tower in onnxruntime, with its tokenizer
    onnx_image.py     the exported image tower in onnxruntime, with the model's preprocessing
    text_export.py    exports a loaded model's text tower to ONNX, checked against it
    image_export.py   exports a loaded model's image tower to ONNX (fp32, int8), checked against it
    tower_export.py   what both exports share: tracing, optimizing, publishing the cache entry
    location.py       where a model's files are (hub id or folder), keyed without loading
    cache.py          the model cache: exported towers and identity records
    query_vectors.py  the query-vector cache
    identity.py       ModelIdentity: what made a collection's vectors (model, image precision)
    vectors.py        l2_normalize

Nothing here imports torch, onnxruntime or a stage at import time, nor the index
package (the import contracts in pyproject.toml make that a test); names load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_package import lazy_package

__all__ = ["Encoder", "FastTextEncoder", "ImageTextEncoder", "LazyEncoder", "ModelIdentity", "QueryEncoders",
           "l2_normalize"]

if TYPE_CHECKING:  # pragma: no cover
    from .identity import ModelIdentity
    from .lazy import LazyEncoder
    from .protocol import ImageTextEncoder
    from .query import FastTextEncoder, QueryEncoders
    from .torch_clip import Encoder
    from .vectors import l2_normalize

# Loaded on first use: the index package needs only identity.py, a query only query.py.
lazy_package(__name__, {"Encoder": "torch_clip", "FastTextEncoder": "query", "ImageTextEncoder": "protocol",
                        "LazyEncoder": "lazy", "ModelIdentity": "identity", "QueryEncoders": "query",
                        "l2_normalize": "vectors"})

