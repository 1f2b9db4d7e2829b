"""The collection's own model, for a command that was given none.

A collection records the model its vectors came from. After `clipsearch reindex
--model my-clip/` that is my-clip/, and ingest, search and serve should go on using
it without being told on every call, as a collection built with the default model
goes on using the default. A model named by --model or CLIPSEARCH_MODEL (or put in
the settings by a caller) always wins: a mismatch is then the usual one-line error,
which names the collection's model. A recorded model folder that is not on this
machine is an error that names it, not a reason to fall back on the default.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from clipsearch.config import BY_NAME, Settings
from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:  # pragma: no cover
    from clipsearch.encoders.identity import ModelIdentity

    from .base import Index

Say = Callable[[str], None]


def with_collection_model(settings: Settings, index: "Index", say: Say | None = None) -> Settings:
    """`settings` with the model the open collection records, where none was named."""
    if not _unnamed(settings):
        return settings
    return _adopt(settings, index.stored_identity(), say)  # None where the collection does not exist (yet)


def with_recorded_model(settings: Settings, say: Say | None = None) -> Settings:
    """The same before the index opens, where the record is readable without opening it
    (an embedded index: two small files). Other backends answer after the open."""
    if not _unnamed(settings) or settings.backend != "edge":
        return settings
    from .edge import recorded_identity

    return _adopt(settings, recorded_identity(settings.index, settings.collection), say)


def _unnamed(settings: Settings) -> bool:
    # The model is checked too: settings changed with dataclasses.replace(model=...)
    # keep model_named False but do name a model.
    return not settings.model_named and settings.model == BY_NAME["model"].default_value


def _adopt(settings: Settings, stored: "ModelIdentity | None", say: Say | None) -> Settings:
    if stored is None or stored.name == settings.model:
        return settings
    if os.path.isabs(stored.name) and not os.path.isdir(stored.name):
        # Not the default instead: it would be loaded (or downloaded) only to be refused
        # by the model check. reindex with the folder's new place records it there.
        raise ClipsearchError(
            f"collection {settings.collection!r} was made with the model folder {stored.name}, which is not on "
            "this machine; give its place with --model (or CLIPSEARCH_MODEL), and `clipsearch reindex --model "
            "NEW-PLACE` records the new place (nothing is embedded again when it is the same model)")
    if say is not None:
        say(f"collection {settings.collection!r} was made with {stored.name}: using it "
            "(--model or CLIPSEARCH_MODEL names another)")
    return settings.with_overrides(model=stored.name)
