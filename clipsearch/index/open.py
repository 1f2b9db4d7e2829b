"""`open_index`: the backend the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from .base import Index


def open_index(settings: Settings, create: bool = False, check: bool = False) -> "Index":
    """Open the collection named by `settings`. `create=True` (ingest) may create an
    embedded index folder; reads never create anything. `check=True` (`clipsearch
    status --check`) opens a damaged embedded index that a plain open refuses, keeping
    what is wrong in its `open_problems`."""
    if settings.backend == "edge":
        from .edge import EdgeIndex

        return EdgeIndex(settings.index, settings.collection, create=create, check=check)
    from .client import ClientIndex

    return ClientIndex(settings.index, settings.collection, api_key=settings.api_key,
                       retry_seconds=settings.retry_seconds, grpc=settings.grpc, grpc_port=settings.grpc_port)
