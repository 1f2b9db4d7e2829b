"""clipsearch: text-to-image search over large image folders.

    import clipsearch
    clipsearch.ingest(["/photos"])                     # embed new and changed images
    for hit in clipsearch.search("a dog on a beach", k=5):
        print(hit.rank, hit.score, hit.path)
    settings = clipsearch.Settings.resolve(index="/data/photo-index")
    with clipsearch.open_index(settings) as index:
        print(index.count())

The kernel shared by the three stages (`clipsearch.ingest`, `clipsearch.search`,
`clipsearch.finetune`): settings, the encoders, the index backends and the command
line. Names load on first use, so that `import clipsearch` (every CLI start) imports
no numpy, torch or qdrant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import ClipsearchError

__version__ = "0.1.0"

__all__ = [
    "ClipsearchError",
    "Encoder",
    "Hit",
    "Index",
    "IngestOptions",
    "IngestSummary",
    "ModelIdentity",
    "SearchHit",
    "Searcher",
    "Settings",
    "__version__",
    "ingest",
    "open_index",
    "search",
]

# name -> the module that defines it, imported on first use.
_LAZY = {
    "Encoder": "clipsearch.encoders",
    "ModelIdentity": "clipsearch.encoders",
    "Hit": "clipsearch.index",
    "Index": "clipsearch.index",
    "open_index": "clipsearch.index",
    "IngestOptions": "clipsearch.ingest",
    "IngestSummary": "clipsearch.ingest",
    "SearchHit": "clipsearch.search",
    "Searcher": "clipsearch.search",
}

if TYPE_CHECKING:  # pragma: no cover
    from . import ingest, search
    from .encoders import Encoder, ModelIdentity
    from .index import Hit, Index, open_index
    from .ingest import IngestOptions, IngestSummary
    from .search import Searcher, SearchHit


def __getattr__(name: str) -> Any:
    # `search` and `ingest` are the stage packages themselves, which can be called as
    # functions (see their __init__): importing the package binds the name here anyway.
    if name in ("search", "ingest"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
