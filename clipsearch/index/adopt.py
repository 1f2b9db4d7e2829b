"""The collection's own model and precision, for a command that was given none.

A collection records the model its vectors came from. After `clipsearch reindex
--model my-clip/` that is my-clip/, and ingest, search and serve should go on using
it without being told on every call, as a collection built with the default model
goes on using the default. A model named by --model or CLIPSEARCH_MODEL (or put in
the settings by a caller) always wins: a mismatch is then the usual one-line error,
which names the collection's model. A recorded model folder that is not on this
machine is an error that names it, not a reason to fall back on the default. The
same for the image precision (fp32, int8) a collection holds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from clipsearch.config import BY_NAME, Settings
from clipsearch.errors import ClipsearchError

if TYPE_CHECKING:  # pragma: no cover
    from clipsearch.encoders.identity import ModelIdentity

Say = Callable[[str], None]


def with_collection_model(settings: Settings, stored: "ModelIdentity | None", say: Say | None = None) -> Settings:
    """`settings` with the model `stored` names (the collection's record, None where it
    does not exist yet), where none was named."""
    if not names_no_model(settings) or stored is None or stored.name == settings.model:
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


def with_recorded_model(settings: Settings, say: Say | None = None) -> Settings:
    """The same before the index opens, where the record is readable without opening it
    (an embedded index: two small files). Other backends answer after the open."""
    if not names_no_model(settings) or settings.backend != "edge":
        return settings
    from .edge import recorded_identity

    return with_collection_model(settings, recorded_identity(settings.index, settings.collection), say)


def collection_precision(stored: "ModelIdentity | None", default: str, collection: str,
                         say: Say | None = None) -> str:
    """The image precision `stored` (the collection's record) holds, else `default`: for
    a run that named none (a nightly `clipsearch ingest` into an int8 collection)."""
    if stored is None or not stored.precision or stored.precision == default:
        return default
    if say is not None:
        say(f"collection {collection!r} holds {stored.precision} image vectors: embedding {stored.precision} "
            "ones (--precision or CLIPSEARCH_PRECISION names the other)")
    return stored.precision


def names_no_model(settings: Settings) -> bool:
    """Whether `settings` leave the model to the collection: only then is its record
    worth reading to choose one. The model is checked too: settings changed with
    dataclasses.replace(model=...) keep model_named False but do name a model."""
    return not settings.model_named and settings.model == BY_NAME["model"].default_value
