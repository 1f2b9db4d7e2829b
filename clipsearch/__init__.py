"""clipsearch: text-to-image search over large image folders.

    from clipsearch import Settings, open_index
    from clipsearch.ingest import ingest
    from clipsearch.search import search

    if __name__ == "__main__":                   # ingest's decoders run the script again (spawn)
        ingest("/photos")                        # embed new and changed images
        for hit in search("a dog on a beach", k=5):
            print(hit.rank, hit.score, hit.path)
        settings = Settings.resolve(index="/data/photo-index")
        with open_index(settings) as index:
            print(index.count())

The kernel shared by the three stages (`clipsearch.ingest`, `clipsearch.search`,
`clipsearch.finetune`): settings, the encoders, the index backends and the command
line. Names load on first use, so that `import clipsearch` (every CLI start) imports
no numpy, torch or qdrant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import Settings
from .errors import BusyError, ClipsearchError, UsageError
from .lazy_package import lazy_package

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "ClipsearchError",
    "Encoder",
    "Hit",
    "Index",
    "IngestOptions",
    "IngestSummary",
    "ModelIdentity",
    "QueryEncoders",
    "SearchHit",
    "Searcher",
    "Settings",
    "UsageError",
    "__version__",
    "ingest",
    "open_index",
    "search",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import ingest, search
    from .encoders import Encoder, ModelIdentity, QueryEncoders
    from .index import Hit, Index, open_index
    from .ingest import IngestOptions, IngestSummary
    from .search import Searcher, SearchHit

# `search` and `ingest` are the stage packages themselves, which can be called as
# functions (clipsearch/lazy_package.py): importing a package binds its name here anyway.
# A type checker sees the packages: typed code imports the functions from them
# (`from clipsearch.search import search`). QueryEncoders is the text encoder a
# long-lived Searcher holds (README: Python API).
lazy_package(__name__, {"search": None, "ingest": None, "Encoder": "encoders", "ModelIdentity": "encoders",
                        "QueryEncoders": "encoders",
                        "Hit": "index", "Index": "index", "open_index": "index",
                        "IngestOptions": "ingest", "IngestSummary": "ingest",
                        "SearchHit": "search", "Searcher": "search"})
