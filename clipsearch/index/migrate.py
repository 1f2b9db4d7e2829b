"""Copy a collection to another index: the way up from an embedded index to a
Qdrant server when one machine is no longer enough.

Vectors, payloads and the model identity travel as they are, in batches. Points the
target already holds with the same payload are not sent again, so an interrupted
migration resumes where it stopped. At the end the counts are checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ClipsearchError
from ..progress import Progress
from .base import Index


@dataclass
class MigrateSummary:
    total: int = 0
    copied: int = 0
    already_there: int = 0
    target_count: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"copied {self.copied}, already there {self.already_there}, of {self.total} points "
                f"in {self.seconds:.1f} s; target now holds {self.target_count}")


def migrate(source: Index, target: Index, batch_size: int = 256, progress: Progress | None = None,
            resume: str = "run the same migrate again") -> MigrateSummary:
    """Copy every point of `source` to `target`. `resume`: what the target's unfinished-copy
    mark tells a person to do, should this stop part way."""
    if batch_size < 1:
        raise ClipsearchError(f"--batch-size must be at least 1, got {batch_size}")
    progress = progress or Progress()
    source.require_collection()
    identity = source.stored_identity()
    if identity is None:
        raise ClipsearchError(f"collection {source.collection!r} at {source.location} has no model record to migrate")
    _refuse_another_model(target, identity)
    target.ensure_collection(identity)
    summary = MigrateSummary(total=source.count())
    # Until the counts agree, the target says it holds part of its source (status, search).
    # A mark left by a copy from elsewhere stays until that one is finished.
    ours = {"from": f"{source.location} (collection {source.collection})", "points": summary.total,
            "resume": resume}
    earlier = target.unfinished_copy()
    marks = earlier is None or earlier.get("from") == ours["from"]
    if marks:
        target.record_unfinished_copy(ours)
    started = time.monotonic()
    with target.bulk_load():
        batch = []
        for record in source.scroll(batch_size=batch_size, with_vectors=True):
            batch.append(record)
            if len(batch) >= batch_size:
                _copy(batch, target, summary)
                batch = []
                _show(progress, summary)
        if batch:
            _copy(batch, target, summary)
    summary.target_count = target.count()
    summary.seconds = time.monotonic() - started
    _show(progress, summary, force=True)
    progress.finish()
    if summary.copied + summary.already_there != summary.total or summary.target_count < summary.total:
        raise ClipsearchError(
            f"migration incomplete: source has {summary.total} points, target {target.location} holds "
            f"{summary.target_count}; run the same command again to resume"
        )
    if marks:
        target.record_unfinished_copy(None)
    return summary


def _refuse_another_model(target: Index, identity) -> None:
    """A target collection built with another model (or precision) cannot take these
    vectors. Migrate copies vectors as they are and loads no model (--model does not
    apply): the way out is another collection."""
    if not target.exists():
        return
    stored = target.stored_identity()
    if stored is None or identity.is_compatible_with(stored):
        return
    raise ClipsearchError(
        f"model mismatch: target collection {target.collection!r} at {target.location} holds {stored.short()}'s "
        f"vectors, the source {identity.short()}'s; migrate copies vectors as they are: give --to-collection a new "
        "name (a new collection in the target), or --to another index")


def _copy(batch, target: Index, summary: MigrateSummary) -> None:
    present = {r.id: r.payload for r in target.retrieve([r.id for r in batch])}
    todo = [r for r in batch if present.get(r.id) != r.payload]
    summary.already_there += len(batch) - len(todo)
    if todo:
        target.upsert([r.id for r in todo], np.stack([r.vector for r in todo]), [r.payload for r in todo])
        summary.copied += len(todo)


def _show(progress: Progress, summary: MigrateSummary, force: bool = False) -> None:
    done = summary.copied + summary.already_there
    rate, eta = progress.rate_and_eta(done, summary.total)
    progress.update(f"migrated {done}/{summary.total} ({summary.copied} copied), {rate:.0f} points/s, ETA {eta}",
                    force=force)
