"""The search stage: embed a query and return the cosine top-k images.

    from clipsearch import search
    for hit in search("a dog on a beach", k=5):          # the package is callable: search.search
        print(hit.rank, hit.score, hit.path)
    search(image="beach.jpg", subtract=["people"])       # more like this, without people

    engine.py    Searcher: query vectors -> top-k hits; search(): the one-call API
    terms.py     weighted text/image terms (--add 2:sunset, --subtract people)
    filters.py   --after/--before/--camera/--near as an index filter (Where)
    gallery.py   an HTML page of the hits as thumbnails
    commands.py  `clipsearch search`
    duplicates.py          byte-identical and near-duplicate groups from the index alone
    duplicates_command.py  `clipsearch duplicates`
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipsearch.lazy_package import lazy_package

__all__ = ["DuplicateGroup", "Duplicates", "SearchHit", "Searcher", "Term", "build_terms", "build_where",
           "find_duplicates", "parse_term", "search", "write_gallery"]

if TYPE_CHECKING:  # pragma: no cover
    from .duplicates import DuplicateGroup, Duplicates, find_duplicates
    from .engine import Searcher, SearchHit, build_terms, search
    from .filters import build_where
    from .gallery import write_gallery
    from .terms import Term, parse_term

lazy_package(__name__, {"SearchHit": "engine", "Searcher": "engine", "build_terms": "engine", "search": "engine",
                      "Term": "terms", "parse_term": "terms", "write_gallery": "gallery",
                      "build_where": "filters",
                      "DuplicateGroup": "duplicates", "Duplicates": "duplicates", "find_duplicates": "duplicates"},
             call="search")
