"""The collection's own model, for a command that was given none.

A collection records the model its vectors came from. After `clipsearch reindex
--model my-clip/` that is my-clip/, and ingest, search and serve should go on using
it without being told on every call, as a collection built with the default model
goes on using the default. A model named by --model or CLIPSEARCH_MODEL always wins:
a mismatch is then the usual one-line error, which names the collection's model.
A recorded model folder that is gone is an error that names it, not a reason to fall
back on the default.
"""

from __future__ import annotations

import os
from typing import Callable

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError

from .base import Index


def with_collection_model(settings: Settings, index: Index, say: Callable[[str], None] | None = None) -> Settings:
    """`settings` with the model the collection records, where no model was named and
    the collection's differs from the default. Reads the collection's record only."""
    if settings.model_named:
        return settings
    stored = index.stored_identity()  # None where the collection does not exist (yet)
    if stored is None or stored.name == settings.model:
        return settings
    if os.path.isabs(stored.name) and not os.path.isdir(stored.name):
        # Moved or deleted. Not the default instead: it would be loaded (or downloaded)
        # only to be refused by the model check.
        raise ClipsearchError(f"collection {settings.collection!r} was made with the model folder {stored.name}, "
                              "which is not there any more; give its new place with --model (or CLIPSEARCH_MODEL)")
    if say is not None:
        say(f"collection {settings.collection!r} was made with {stored.name}: using it "
            "(--model or CLIPSEARCH_MODEL names another)")
    return settings.with_overrides(model=stored.name)
