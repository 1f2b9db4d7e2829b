"""`clipsearch reindex --model NEW`: a collection embedded again by another model,
without a moment in which searches find nothing.

The new vectors go into a version of the collection (clipsearch/index/versions.py)
while searches keep reading the old one; when the version holds every image, one
switch makes the collection's name mean it. The images come from the stored paths,
not from a walk, and go through the ingest pipeline (decoders, encoder, upserts, the
skip report, the HNSW build) without its lookups: nothing is checked against the
index one file at a time.

A killed reindex resumes: the version keeps what it holds, and a point whose file has
not changed since (size, mtime) is not embedded again. Images ingested into the old
collection while the reindex ran are caught up just before the switch, under the old
collection's lock on the embedded index (so none is lost). A Qdrant server has no such
lock: the old collection is marked as switching before that catch-up
(ClientIndex.prepare_switch), and a write another client makes fails once it finds the
mark (or its collection gone), so every write an ingest counted is in the catch-up, and
one that failed is made again, into the new version, by the ingest run again. Images
gone or unreadable (a share not mounted) stop the reindex before the switch, beyond a
few. A model whose image tower is the recorded one (fine-tuned with --freeze vision)
needs no new vectors: the collection only records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, fields, replace

from clipsearch.config import Settings
from clipsearch.errors import ClipsearchError
from clipsearch.index import Index, open_index
from clipsearch.index.base import Record
from clipsearch.index.client import ClientIndex
from clipsearch.index.layout import Layout
from clipsearch.index.lockfile import InUseError
from clipsearch.index.versions import identity_key, version_name
from clipsearch.progress import Progress

from .pipeline import IngestOptions, Ingestor, lazy_encoder
from .relink import recorded_reach
from .report import check_report_path
from .walk import FileEntry


@dataclass
class ReindexSummary:
    collection: str = ""  # the name, which means `new` now
    old: str = ""  # the collection the name meant
    new: str = ""
    total: int = 0  # images of the old collection
    embedded: int = 0
    resumed: int = 0  # already in the version, from an earlier run that was stopped
    skipped: int = 0  # gone since they were indexed, or unreadable
    removed: int = 0  # points of the version whose images are no longer in the collection
    caught_up: int = 0  # ingested into the old collection while this ran
    reembedded: bool = True  # False: the same image tower (only the model record changed), or a version found
    switched: bool = False  # the name now means another collection than it did (False: only recorded)
    stopped: bool = False  # stopped before the switch (Ctrl-C, SIGTERM): the same command resumes
    # The version was one kept by an earlier switch (not one a stopped run left): `resumed`
    # counts what it held already, `embedded` what was added or changed since it was kept.
    switched_back: bool = False
    unfinished: bool = False  # the version the name was made to mean again was left half-built by a reindex
    kept: str | None = None  # the old collection, kept under this name; None when dropped (or not switched)
    dropped: list[str] = field(default_factory=list)  # collections removed by --drop-old, the old one first
    not_dropped: list[str] = field(default_factory=list)  # why a version could not be dropped
    seconds: float = 0.0

    def line(self) -> str:
        if not self.reembedded and self.switched:  # the name had lost its record (point_name_at)
            text = (f"{self.collection!r} means {self.new!r} again, with its {self.total} vectors: nothing "
                    "embedded")
            if self.unfinished:
                text += ("; a stopped reindex had left it unfinished, and its source is gone: "
                         "`clipsearch ingest DIR` adds the images it lacks")
        elif not self.reembedded:
            text = (f"{self.new!r} keeps its {self.total} vectors: the new model has the same image tower; "
                    "the collection now records it")
        else:
            if self.switched_back:  # what it held was no earlier run's: a switch kept it
                caught = f", {self.caught_up} of them ingested while this ran" if self.caught_up else ""
                text = (f"back to the kept version {self.new!r}: it held {self.resumed} of the {self.total} images; "
                        f"embedded {self.embedded} added or changed since it was kept{caught}, skipped "
                        f"{self.skipped}, in {self.seconds:.1f} s; ")
            else:
                resumed = f", {self.resumed} from an earlier run" if self.resumed else ""
                caught = f", {self.caught_up} ingested meanwhile" if self.caught_up else ""
                text = (f"reindexed {self.embedded} of {self.total} images{resumed}{caught}, skipped "
                        f"{self.skipped}, in {self.seconds:.1f} s; ")
            if not self.switched:
                return text + f"not switched yet: {self.collection!r} still means {self.old!r}"
            text += f"{self.collection!r} now means {self.new!r}"
            if self.kept:
                text += f"; the old collection is kept as {self.kept!r}"
            elif self.old:
                text += f"; the old collection is dropped ({self.old!r})"
        others = [name for name in self.dropped if not (self.switched and self.reembedded and name == self.old)]
        if others:
            text += f"; dropped {', '.join(repr(name) for name in others)}"
        if self.not_dropped:
            text += f"; not dropped: {'; '.join(self.not_dropped)}"
        return text


# A reindex switches only if it could read nearly every image: a share above this (or
# more than MISSING_FLOOR files), gone or unreadable, means a drive or share that is not
# mounted, most likely, and a switch would leave those images out of the collection.
MISSING_SHARE = 0.01
MISSING_FLOOR = 10


@dataclass(frozen=True)
class Stored:
    """What a reindex keeps of a point of the old collection: its file, and a digest
    of its payload to see that it changed (not the payload: a library of millions)."""

    path: str
    digest: str
    # How the walk reached the file (relink.recorded_reach): a point the version makes
    # anew keeps it, so that deleting a link still lets --prune forget what it reached.
    via: tuple[str, ...] = ()
    direct: bool | None = None


def reindex(settings: Settings, options: IngestOptions | None = None, keep_old: bool = True,
            progress: Progress | None = None, allow_missing: bool = False) -> ReindexSummary:
    """Re-embed the collection `settings` names with the model `settings.model`, then
    switch the name to the new vectors. `keep_old=False` drops the old collection at the
    switch, and any other version of the name. The precision is the old collection's
    unless `options` gives one. Images gone or unreadable (more than 1%, or 10) stop it
    before the switch unless `allow_missing`."""
    options = options or IngestOptions(precision="", shard=None)  # a reindex takes every image
    progress = progress or Progress(quiet=options.quiet)
    if options.report:
        check_report_path(options.report)
    started = time.monotonic()
    summary = ReindexSummary(collection=settings.collection)
    try:
        return _reindex(settings, options, keep_old, progress, allow_missing, summary, started)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM, SIGHUP: what it kept, for reindex --json
        filling = getattr(stop, "summary", None)  # the fill it stopped (Ingestor._run), not yet counted
        if filling is not None:
            summary.embedded += filling.embedded
            summary.skipped += filling.skipped
        summary.stopped = not summary.switched
        summary.seconds = time.monotonic() - started
        stop.summary = summary  # type: ignore[attr-defined]
        raise


def _reindex(settings: Settings, options: IngestOptions, keep_old: bool, progress: Progress, allow_missing: bool,
             summary: ReindexSummary, started: float) -> ReindexSummary:
    with _open_old(settings) as old:
        if not old.exists():
            return _point_name_at_version(old, settings, options, summary, started)
        old_identity = old.stored_identity()
        if old_identity is None:
            raise ClipsearchError(f"collection {settings.collection!r} at {old.location} has no clipsearch model "
                                  "record; it was not made by clipsearch")
        summary.old = old.meant()
        options = replace(options, precision=options.precision or old_identity.precision or "fp32")
        encoder = lazy_encoder(settings, options)
        identity = encoder.identity
        if identity_key(identity) == identity_key(old_identity):  # the same image vectors, precision included
            summary.reembedded, summary.new, summary.total = False, summary.old, old.count()
            old.record_identity(identity)  # the name still means the same collection: nothing switched
            if not keep_old:
                summary.dropped = _drop_versions(old, summary)
            summary.seconds = time.monotonic() - started
            return summary
        records = _stored(old)
        layout = _layout_for_version(settings, old)
    summary.new = target = version_name(settings.collection, identity)
    summary.total = len(records)
    with open_index(settings.with_overrides(collection=target, **layout), create=True) as version:
        # A version there with no mark of a reindex under way was kept by an earlier switch.
        summary.switched_back = version.exists() and version.unfinished_copy() is None
        version.ensure_collection(identity)  # or, made by a run that was stopped, checked
        stored = version.stored_identity()
        if stored is not None and (stored.name, stored.text_fingerprint) != (identity.name, identity.text_fingerprint):
            # A kept version met again with a text-only fine-tune of its model (or the
            # model moved): the vectors fit, and searches must use this model's text tower.
            version.record_identity(identity)
        # Until the switch, the version says it is being built (status lists it; a
        # search of it by --collection says it may hold only part of the images).
        command = resume_command(settings, options, keep_old)
        version.record_unfinished_copy({"from": f"reindex of {settings.collection}", "reindex": settings.collection,
                                        "points": summary.total, "resume": f"run the same `{command}` again",
                                        "command": command})
        ingestor = Ingestor(encoder, version, options, progress)
        _fill(ingestor, version, records, summary)
        if ingestor.stopped:
            summary.stopped = True
            summary.seconds = time.monotonic() - started
            return summary
        # From here to the switch the old collection is held (on the embedded index), or
        # marked as switching (on a server, by prepare_switch): nothing can be written to
        # it, and counted, that the version would miss. Closing it unswitched (stopped,
        # failed) takes the mark back.
        with _open_old(settings) as old:
            if old.meant() != summary.old:
                raise ClipsearchError(f"{settings.collection!r} was switched to {old.meant()!r} by another "
                                      "reindex meanwhile; nothing was switched by this one")
            if isinstance(old, ClientIndex):  # its switching mark names this command, should it be killed
                old.switch_command = command
            old.prepare_switch(keep_old, old_identity, progress)  # a server's copy of what it must drop
            now = _stored(old)
            later = {pid: r for pid, r in now.items() if records.get(pid) != r}
            summary.caught_up = len(later)
            if later or now.keys() != records.keys():
                _fill(ingestor, version, now, summary, only=later)
            if ingestor.stopped:
                summary.stopped = True
                summary.seconds = time.monotonic() - started
                return summary
            summary.total = len(now)
            _refuse_missing(summary, ingestor, allow_missing)
            version.record_unfinished_copy(None)
            summary.kept = old.switch(target, keep_old, old_identity)
            summary.switched = True
            if not keep_old:
                summary.dropped.append(summary.old)  # removed by the switch
    if not keep_old:
        try:
            with open_index(settings) as current:
                summary.dropped += _drop_versions(current, summary)
        except ClipsearchError as exc:  # switched all the same: said, not raised
            summary.not_dropped.append(str(exc))
    summary.seconds = time.monotonic() - started
    return summary


def resume_command(settings: Settings, options: IngestOptions, keep_old: bool) -> str:
    """The command that finishes this reindex, for the messages of what it leaves
    behind when stopped: the version's mark, and on a server the switching mark that
    refuses ingests until it has switched."""
    import shlex

    from clipsearch.config import DEFAULT_COLLECTION
    from clipsearch.names import shown

    def word(text: str) -> str:  # as a shell reads it back; a name that is not text as shown() writes it
        return shlex.quote(text) if shown(text) == text else shown(text)

    parts = ["clipsearch reindex", f"--index {word(settings.index)}"]
    if settings.collection != DEFAULT_COLLECTION:
        parts.append(f"--collection {word(settings.collection)}")
    parts.append(f"--model {word(settings.model)}")
    if options.precision and options.precision != "fp32":
        parts.append(f"--precision {options.precision}")
    if not keep_old:
        parts.append("--drop-old")
    return " ".join(parts)


def _point_name_at_version(old: Index, settings: Settings, options: IngestOptions, summary: ReindexSummary,
                           started: float) -> ReindexSummary:
    """The name does not exist (the record of which collection it means was lost, or it
    was never made): where the index holds this model's version of it, the name is
    made to mean that version, nothing embedded; else the usual does-not-exist line."""
    versions = set(old.versions())
    encoder = lazy_encoder(settings, replace(options, precision=options.precision or "fp32"))
    precisions = [options.precision] if options.precision else ["fp32", "int8"]
    found = [version_name(settings.collection, encoder.identity.with_precision(p)) for p in precisions]
    target = next((name for name in found if name in versions), None)
    if target is None:
        old.require_collection()  # raises: names the versions there are, and what to do
        raise ClipsearchError(f"collection {settings.collection!r} has no version for {settings.model}")
    with open_index(settings.with_overrides(collection=target)) as version:
        stored = version.stored_identity()
        summary.total = version.count()
        identity = encoder.identity.with_precision(stored.precision if stored and stored.precision else "fp32")
        if stored is not None and (stored.name, stored.text_fingerprint) != (identity.name, identity.text_fingerprint):
            version.record_identity(identity)  # a text-only fine-tune of the version's model
        if version.unfinished_copy():
            # A stopped reindex filled it from the collection the name meant, which is gone:
            # nothing can resume that, and its mark would promise it forever. An ingest
            # of the folders adds what it lacks.
            version.record_unfinished_copy(None)
            summary.unfinished = True
    old.point_name_at(target)
    summary.old, summary.new, summary.reembedded, summary.switched = "", target, False, True
    summary.seconds = time.monotonic() - started
    return summary


def _stored(index: Index) -> dict[str, Stored]:
    return {r.id: _kept(r) for r in index.scroll()}


def _digest(payload: dict) -> str:
    return hashlib.blake2b(json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _refuse_missing(summary: ReindexSummary, ingestor: Ingestor, allow_missing: bool) -> None:
    if allow_missing or summary.skipped <= max(MISSING_FLOOR, MISSING_SHARE * summary.total):
        return
    first = next(iter(ingestor.report.examples), None)
    example = f" (first: {first[0]}: {first[1]})" if first else ""
    raise ClipsearchError(
        f"{summary.skipped} of {summary.total} images could not be read{example}; not switched, "
        f"{summary.collection!r} still means {summary.old!r}: mount or restore them and run the same command "
        "(what was embedded is kept), or give --allow-missing to switch without them")


def _open_old(settings: Settings) -> Index:
    """The collection the name means now. An embedded one held by another process
    (clipsearch serve, an ingest) is refused as any open is, with what to do here."""
    try:
        return open_index(settings)
    except InUseError as exc:
        raise InUseError(f"{exc}. Reindex reads the collection at its start and switches it at its end: run it "
                         "when that process has finished (clipsearch serve: stop it, reindex, start it again, "
                         "and it serves the new collection)") from None


def _kept(record: Record) -> Stored:
    via, direct = recorded_reach(record.payload)
    return Stored(record.path, _digest(record.payload), tuple(via), direct)


def _fill(ingestor: Ingestor, version: Index, records: dict[str, Stored], summary: ReindexSummary,
          only: dict[str, Stored] | None = None) -> None:
    """Make the version hold an up-to-date point for each of `records`, and nothing
    else; with `only`, just those of `records` are looked at (the catch-up). A file
    that is gone takes its point in the version with it; one that cannot be read now
    (a permission, a share that hiccups) keeps it."""
    held = {r.id: (r.payload.get("size"), r.payload.get("mtime_ns")) for r in version.scroll()}
    extra = [pid for pid in held if pid not in records]
    entries: list[FileEntry] = []
    for pid, record in (only if only is not None else records).items():
        try:
            st = os.stat(record.path)
        except OSError as exc:
            gone = isinstance(exc, FileNotFoundError)
            ingestor.report.add(record.path, "gone since it was indexed" if gone else f"cannot stat: {exc.strerror}")
            summary.skipped += 1
            if gone and pid in held:  # embedded by a run that was stopped, gone since
                extra.append(pid)
            continue
        if held.get(pid) == (st.st_size, st.st_mtime_ns):
            summary.resumed += 1
            continue
        entries.append(FileEntry(record.path, st.st_size, st.st_mtime_ns, st.st_dev, via=record.via,
                                 direct=record.direct))
    for start in range(0, len(extra), 1000):
        version.delete(ids=extra[start:start + 1000])
    summary.removed += len(extra)
    done = ingestor.run_entries(entries)
    summary.embedded += done.embedded
    summary.skipped += done.skipped


def _layout_for_version(settings: Settings, old: Index) -> dict:
    """The old collection's layout (shards, replicas, quantization... on a server; the
    embedded part on an embedded index), with the layout flags given over it: a
    reindex keeps a collection's layout unless told otherwise."""
    current = getattr(old, "current_layout", None)
    found = current() if current is not None else None
    kept = {f.name: getattr(found, f.name) for f in fields(Layout)} if found is not None else {}
    asked = Layout.from_settings(settings).asked()
    return {name: value for name, value in {**kept, **asked}.items() if value is not None}


def _drop_versions(current: Index, summary: ReindexSummary) -> list[str]:
    """Every other version of the name; one that cannot be dropped now (held by another
    process) is said in the summary, and the others go."""
    dropped = []
    for name in current.versions():
        try:
            current.drop(name)
            dropped.append(name)
        except ClipsearchError as exc:
            summary.not_dropped.append(str(exc))
    return dropped
