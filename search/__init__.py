"""The search stage: embed a query and return the cosine top-k images.

    from search import search
    for hit in search("a dog on a beach", k=5):
        print(hit.rank, hit.score, hit.path)
"""

from .engine import SearchHit, Searcher, search

__all__ = ["SearchHit", "Searcher", "search"]
