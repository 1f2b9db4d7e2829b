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

from typing import TYPE_CHECKING

from .config import Settings
from .errors import ClipsearchError
from .lazy_package import lazy_package

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

if TYPE_CHECKING:  # pragma: no cover
    from . import ingest, search
    from .encoders import Encoder, ModelIdentity
    from .index import Hit, Index, open_index
    from .ingest import IngestOptions, IngestSummary
    from .search import Searcher, SearchHit

# `search` and `ingest` are the stage packages themselves, which can be called as
# functions (clipsearch/lazy_package.py): importing a package binds its name here anyway.
lazy_package(__name__, {"search": None, "ingest": None, "Encoder": "encoders", "ModelIdentity": "encoders",
                        "Hit": "index", "Index": "index", "open_index": "index",
                        "IngestOptions": "ingest", "IngestSummary": "ingest",
                        "SearchHit": "search", "Searcher": "search"})
