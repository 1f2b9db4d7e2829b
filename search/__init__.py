"""The search stage: embed a query and return the cosine top-k images.

    from search import search
    for hit in search("a dog on a beach", k=5):
        print(hit.rank, hit.score, hit.path)
    search(image="beach.jpg", subtract=["people"])   # more like this, without people
"""

from .engine import SearchHit, Searcher, build_terms, search
from .terms import Term, parse_term

__all__ = ["SearchHit", "Searcher", "Term", "build_terms", "parse_term", "search", "write_gallery"]


def __getattr__(name: str):
    # The gallery pulls in Pillow: loaded when asked for, not on every query.
    if name == "write_gallery":
        from .gallery import write_gallery

        return write_gallery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
