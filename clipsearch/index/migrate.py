"""Copy a collection to another index: the way up from an embedded index to a
Qdrant server when one machine is no longer enough.

Vectors, payloads and the model identity travel as they are, in batches. Points the
target already holds with the same payload are not sent again, so an interrupted
migration resumes where it stopped. At the end the counts are checked, the source's
counted again then: an ingest into it during the copy is not a failure of the copy.

A target is used once filled (ingested into, pruned), and a migrate run again later,
to carry over what the source gained since, must not undo that. So a point the target
holds with another payload is replaced only by a newer version of its file (a later
mtime), and a finished copy records in the target how many points it left there: a
copy from the same source into a target whose count has changed since is refused, as
it would put back what was deleted there.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_COLLECTION
from ..errors import ClipsearchError
from ..progress import Progress
from .base import Index


@dataclass
class MigrateSummary:
    total: int = 0  # the source's points when the copy began
    copied: int = 0
    already_there: int = 0
    target_count: int = 0
    source_count: int = 0  # the source's points when the copy ended
    seconds: float = 0.0
    newer_in_target: int = 0  # points the target holds with a newer version of their file: kept

    @property
    def read(self) -> int:
        """Points of the source this copy read (and made sure the target holds)."""
        return self.copied + self.already_there + self.newer_in_target

    def line(self) -> str:
        kept = (f", {self.newer_in_target} kept as the target has them (their files are newer there)"
                if self.newer_in_target else "")
        return (f"copied {self.copied}, already there {self.already_there}{kept}, of {self.total} points "
                f"in {self.seconds:.1f} s; target now holds {self.target_count}")


def migrate(source: Index, target: Index, batch_size: int = 256, progress: Progress | None = None,
            resume: str = "run the same migrate again", reindex: str | None = None) -> MigrateSummary:
    """Copy every point of `source` to `target`. `resume`: what the target's unfinished-copy
    mark tells a person to do, should this stop part way. `reindex`: the name a reindex
    keeps its old collection for (ClientIndex.prepare_switch), whose mark then says so;
    points ingested into the source during that copy are no failure: the reindex's
    catch-up puts them in its new version, and a switch back to this one embeds what
    it lacks."""
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
    origin = f"{source.location} (collection {source.collection})"
    ours = {"from": origin, "collection": source.collection,
            "points": summary.total, "resume": resume, **({"reindex": reindex} if reindex else {})}
    earlier = target.unfinished_copy()
    marks = earlier is None or earlier.get("from") == ours["from"]
    if earlier is None or earlier.get("from") != ours["from"]:  # a fresh copy, not this one resumed
        _refuse_over_later_writes(source, target, origin)
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
    summary.source_count = source.count()
    summary.seconds = time.monotonic() - started
    _show(progress, summary, force=True)
    progress.finish()
    _check_counts(summary, target, grown_is_fine=reindex is not None)
    if marks or _same_source(earlier, ours, summary):
        target.record_unfinished_copy(None)
    _record_finished(target, origin, summary.target_count)
    return summary


# How a backend keeps the finished copies (edge.py: copied.json; client.py: metadata).
def _finished_copies(target: Index) -> dict:
    read = getattr(target, "finished_copies", None)
    return read() if read is not None else {}


def _record_finished(target: Index, source: str, points: int) -> None:
    record = getattr(target, "record_finished_copies", None)
    if record is not None:
        record({**_finished_copies(target), source: {"points": points}})


def _refuse_over_later_writes(source: Index, target: Index, origin: str) -> None:
    """A target this source filled before, whose count has changed since: something
    ingested into it or pruned it, and a copy would put back the points deleted there.
    (Points changed there are safe: _copy keeps the newer.)"""
    if not target.exists():
        return
    earlier = _finished_copies(target).get(origin)
    if not isinstance(earlier, dict) or not isinstance(earlier.get("points"), int):
        return
    now = target.count()
    if now == earlier["points"]:
        return
    def named(index: Index) -> str:
        return "" if index.name == DEFAULT_COLLECTION else f" --collection {index.name}"

    raise ClipsearchError(
        f"target collection {target.name!r} at {target.location} was written to since a migrate from {origin} "
        f"filled it (it held {earlier['points']} points then, {now} now): a migrate again would put back points "
        f"deleted there, so nothing was copied; carry on ingesting into the target (`clipsearch ingest DIR --index "
        f"{target.location}{named(target)}`), or copy into a new collection (`clipsearch migrate --index "
        f"{source.location}{named(source)} --to {target.location} --to-collection NEW`)")


def _check_counts(summary: MigrateSummary, target: Index, grown_is_fine: bool) -> None:
    """Whether the target holds as many points as the source does now, each read by
    this copy; else one line that says which count fell short, and why where it can."""
    now = summary.source_count
    if summary.read >= now and summary.target_count >= now:
        return
    if now > summary.total and summary.read < now:
        if grown_is_fine:
            return
        raise ClipsearchError(
            f"migration incomplete: the source grew from {summary.total} to {now} points while this copied it "
            f"(something ingests into it); {summary.read} were copied or already there and target "
            f"{target.location} holds {summary.target_count}: run the same command again to copy the rest")
    raise ClipsearchError(
        f"migration incomplete: source has {now} points, {summary.read} were copied or already there, and "
        f"target {target.location} holds {summary.target_count}; run the same command again to resume")


def _same_source(earlier: dict | None, ours: dict, summary: MigrateSummary) -> bool:
    """A mark left by a copy from another spelling of this very source (the same server
    through another address or proxy, a folder by another path) is cleared by this
    finished copy: its collection has this source's name, and the target holds exactly
    this source's points, none of its own. A copy from a genuinely different source
    left points of its own there (the target holds more), and its mark stays."""
    if earlier is None:
        return False
    collection = earlier.get("collection")
    if collection is None:  # a mark written before it named its collection apart
        found = re.search(r" \(collection (.+)\)$", str(earlier.get("from", "")))
        collection = found.group(1) if found else None
    return (collection == ours["collection"] and not earlier.get("reindex")
            and summary.target_count == summary.source_count == summary.read)


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


def same_payload(a: Any, b: Any) -> bool:
    """Payloads equal but for a float's last digit: the embedded engine keeps a float
    to 16 significant digits (123456789.12345679 comes back as 123456789.1234568), so a
    copy from a server resumed into an embedded index found such points changed and
    sent them again."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-15, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _newer_in_target(there: dict, copied: dict) -> bool:
    """Whether the target's point is of a later version of the file than the source's
    (ingested there after the copy that put it there): written over, it would go back.
    Without mtimes to compare, the target's stays: a copy never undoes a write."""
    theirs, ours = there.get("mtime_ns"), copied.get("mtime_ns")
    if isinstance(theirs, int) and isinstance(ours, int):
        return theirs > ours
    return True


def _copy(batch, target: Index, summary: MigrateSummary) -> None:
    present = {r.id: r.payload for r in target.retrieve([r.id for r in batch])}
    differ = {r.id for r in batch if r.id in present and not same_payload(present[r.id], r.payload)}
    kept = {r.id for r in batch if r.id in differ and _newer_in_target(present[r.id], r.payload)}
    todo = [r for r in batch if (r.id not in present or r.id in differ) and r.id not in kept]
    summary.newer_in_target += len(kept)
    summary.already_there += len(batch) - len(todo) - len(kept)
    if todo:
        target.upsert([r.id for r in todo], np.stack([r.vector for r in todo]), [r.payload for r in todo])
        summary.copied += len(todo)


def _show(progress: Progress, summary: MigrateSummary, force: bool = False) -> None:
    done = summary.copied + summary.already_there
    rate, eta = progress.rate_and_eta(done, summary.total)
    progress.update(f"migrated {done}/{summary.total} ({summary.copied} copied), {rate:.0f} points/s, ETA {eta}",
                    force=force)
