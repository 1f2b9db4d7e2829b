"""`open_index`: the backend the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from .layout import Layout, embedded_part, refuse_on_embedded

if TYPE_CHECKING:  # pragma: no cover
    from .base import Index


def open_index(settings: Settings, create: bool = False, check: bool = False, pin: bool = False) -> "Index":
    """Open the collection named by `settings`. `create=True` (ingest) may create an
    embedded index folder; reads never create anything. `check=True` (`clipsearch
    status --check`) opens a damaged embedded index that a plain open refuses, keeping
    what is wrong in its `open_problems`.

    The settings' collection layout (--shards, --quantization...) applies where a
    collection may be created (`create=True`); an existing one is used as it is, with
    one line on stderr where its layout differs. An embedded index takes the part
    qdrant-edge applies (quantization, vectors on disk, HNSW) and refuses the rest.

    A name switched by `clipsearch reindex` (versions.py) is resolved at every request
    on a server, which suits a command that opens, checks the model and ends. `pin=True`
    (clipsearch serve, which runs for days with one model loaded) keeps the collection
    the name means now, as the embedded index always does: a later switch to another
    model's vectors then never mixes them with this model's queries or writes
    (ClientIndex.pin)."""
    layout = Layout.from_settings(settings)
    if settings.backend == "edge":
        from .edge import EdgeIndex

        if create:
            refuse_on_embedded(layout, settings.index)
        return EdgeIndex(settings.index, settings.collection, create=create, check=check,
                         layout=embedded_part(layout) if create else Layout(), oversampling=settings.oversampling)
    from .client import ClientIndex

    index = ClientIndex(settings.index, settings.collection, api_key=settings.api_key,
                        retry_seconds=settings.retry_seconds, grpc=settings.grpc, grpc_port=settings.grpc_port,
                        layout=layout if create else Layout(), oversampling=settings.oversampling)
    if pin:
        index.pin()
    if create and layout.asked():
        try:
            index.warn_if_layout_differs()
        except BaseException:
            index.close()
            raise
    return index
