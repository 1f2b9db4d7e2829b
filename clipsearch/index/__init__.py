"""Index backends behind one interface; `open_index` picks one from the settings."""

from __future__ import annotations

from ..config import Settings
from .base import Hit, Index, Record, ancestor_dirs, canonical_path, canonical_point_id, point_id

__all__ = ["Hit", "Index", "Record", "open_index", "point_id", "canonical_point_id", "canonical_path", "ancestor_dirs"]


def open_index(settings: Settings, create: bool = False) -> Index:
    """Open the collection named by `settings`. `create=True` (ingest) may create an
    embedded index folder; reads never create anything."""
    if settings.backend == "edge":
        from .edge import EdgeIndex

        return EdgeIndex(settings.index, settings.collection, create=create)
    from .client import ClientIndex

    return ClientIndex(settings.index, settings.collection, api_key=settings.api_key,
                       retry_seconds=settings.retry_seconds, grpc=settings.grpc, grpc_port=settings.grpc_port)
