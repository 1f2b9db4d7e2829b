"""The live index: an incremental ingest of the watched folders, then their changes.

    watcher = FolderWatcher(["/photos"], Ingestor(encoder, index, options))  # or a factory
    watcher.start()          # returns at once; the work runs on one background thread
    watcher.state()          # for GET /api/ingest
    watcher.wait_idle(60)    # True once the first scan is done and nothing is queued
    watcher.stop()           # what was embedded stays committed

The thread first runs the ingest stage's incremental ingest over the folders
(Ingestor.run, without its HNSW build: serve builds that elsewhere, without blocking
queries), then follows watchdog's events (recursive). The observer starts before the
scan, so nothing changed during the scan is missed; a file both scanned and heard of
is skipped the second time as unchanged (size and mtime).

Events are reduced to a set of paths, and a path is judged when its batch is
processed, not when the event came: a file that exists is ingested (run_files), a
folder that exists is walked as the first scan walks (run: a folder moved or copied
in; with prune, the points under it whose files are gone go, as a folder replaced by
another sends no event for the old one's files), a path that is gone has its points
removed (remove: a file's point, or every point under a folder). A move is its
source gone and its destination new. A batch starts once no event has come for
`debounce` seconds, or `max_batch` paths are queued, or the oldest queued path has
waited `max_wait` seconds (a steady stream of events is still processed); each batch
is at most `max_batch` paths.
A file still being written is ingested as it is, and again when its later events
come (a decode error meanwhile is only a skip in the report).

Some changes send no event: files written from another machine on a network share
(inotify hears only this kernel's writes), a share unmounted and mounted again (its
watches end with it), events the kernel dropped when its queue overflowed in a burst
(watchdog then reports them lost), folders beyond the inotify watch limit. So every
`rescan_every` seconds, at once after lost events, and when a watched folder's identity
changes (ROOT_POLL), the thread walks the folders again as the first scan does
(unchanged files cost a stat), with a new observer first: its watches then cover what
is mounted now.

Paths the walk passes over (hidden files and folders, --exclude, other extensions)
and paths outside the folders are ignored at once. A link to a folder is a folder: the
walk follows it, and so does its batch (inotify does not follow it: what changes inside
a linked folder outside the watched ones is found by the next walk). A link deleted, or
made to point elsewhere, takes the points of the files that only it reached (their
`via`: Ingestor.remove, and the prune of the batch's walk of the link). A bad file is
skipped, named in one line when it is first skipped (`watch: skipped PATH: reason`;
a walk names the first NAMED_IN_A_WALK and counts the rest), and shows in
state()["errors"] while it stays bad (LiveSkips); anything unexpected in a batch is one
line on stderr, and the watcher goes on (the paths of that batch are retried at their
next event). Every walk ends with its summary line; a batch's line says where it was.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from watchdog.events import FileSystemEventHandler

from clipsearch.errors import ClipsearchError
from clipsearch.ingest import Ingestor, IngestSummary, image_extensions, walked_path
from clipsearch.ingest.report import NEW, SkipReport
from clipsearch.names import shown

# The longest a path waits while events keep coming (seconds).
MAX_WAIT = 5.0
# The longest one wait for the next timed walk (a day): a wait of years overflows the clock.
LONGEST_WAIT = 86400.0
# How often each watched folder is looked at: one gone, replaced (a rename swapped it,
# a restore), or a share unmounted or mounted on it sends no event watchdog passes on
# (IN_MOVE_SELF, IN_UNMOUNT), so a change of the folder's identity starts a walk, which
# watches it anew.
ROOT_POLL = 5.0
# What state() counts for a walk of the folders, and for the changes heard since.
WALK_COUNTS = ("found", "embedded", "moved", "copied", "unchanged", "skipped", "removed")
SINCE_COUNTS = ("embedded", "moved", "copied", "skipped", "removed")
# How many newly skipped files one walk of the folders names in the log (a first scan of
# a library may skip thousands: the rest are counted), and how many of the files bad
# now state()["errors"] lists, the latest.
NAMED_IN_A_WALK = 20
ERRORS_SHOWN = 100


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class FolderWatcher:
    def __init__(self, folders: Sequence[str], ingestor: Ingestor | Callable[[], Ingestor],
                 on_idle: Callable[["FolderWatcher"], object] | None = None, debounce: float = 1.0,
                 max_batch: int = 1000, max_wait: float = MAX_WAIT, rescan_every: float | None = None):
        """`ingestor`: the one Ingestor that does all the work (its encoder, index and
        options), or a callable that builds it, called on the watcher's thread (the
        model then loads there, not in the caller's). Its HNSW build is turned off.
        `on_idle(watcher)` is called on the watcher's thread after the first scan and
        after each batch; state() says "optimizing" while it runs. `rescan_every`:
        seconds between walks of the folders (None or 0: only after lost events)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.roots = [os.path.realpath(os.path.abspath(os.fsdecode(f))) for f in folders]
        for root in self.roots:
            if not os.path.isdir(root):
                raise ClipsearchError(f"{root} is not a folder")
        self._factory = None if isinstance(ingestor, Ingestor) else ingestor
        self.ingestor: Ingestor | None = ingestor if isinstance(ingestor, Ingestor) else None
        self.on_idle = on_idle
        self.debounce = debounce
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.rescan_every = rescan_every or None
        self.rescans = 0  # walks since the first scan
        # Set while on_idle runs; serve may also set it around an HNSW build of its own.
        self.optimizing = False
        self.batches = 0  # batches processed since start (each at most max_batch paths)
        self.last_error: str | None = None
        self._extensions = image_extensions()
        self._cond = threading.Condition()
        self._queue: set[str] = set()
        self._first_event: float | None = None  # when the oldest queued path came
        self._last_event = 0.0
        self._in_work: list[str] = []
        self._busy = False  # a scan or a batch is running
        self._run_started: float | None = None
        self._scanned = False  # the first scan is over (done, failed or stopped)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._observer = None
        self._rescan_reason: str | None = None  # a walk is asked for (events lost), why
        self._root_ids: dict[str, tuple[int, int] | None] = {}  # (st_dev, st_ino) of each root the observer watches
        self._poller: threading.Thread | None = None
        self._next_rescan: float | None = None  # monotonic time of the next timed walk
        # The ingestor's totals when the walk in progress began (None between walks) and
        # when the last one ended: state()'s counts are differences of these.
        self._walk_base: IngestSummary | None = None
        self._walk_started = 0.0
        self._last_walk: dict = {**dict.fromkeys(WALK_COUNTS, 0), "seconds": 0.0}
        self._since_base = IngestSummary()

    # -- the caller's side ------------------------------------------------------
    def start(self) -> "FolderWatcher":
        self._observer = self._start_observer()
        for root, kind in network_mounts(self.roots):
            _say(f"watch: {root} is a {kind} share: what other machines write there sends no event here; "
                 + (f"it is found by the walk {self._every()} (--rescan)" if self.rescan_every
                    else "give --rescan MINUTES to find it"))
        self._thread = threading.Thread(target=self._main, name="clipsearch-watch", daemon=True)
        self._thread.start()
        self._poller = threading.Thread(target=self._poll_roots, name="clipsearch-watch-roots", daemon=True)
        self._poller.start()
        return self

    def _poll_roots(self) -> None:
        """Every ROOT_POLL seconds, each root's identity against the one its watches were
        made on; a change asks for a walk. Its own thread: a stat of a share that went
        away can hang, and must not hold the lock the page's progress needs."""
        next_poll = time.monotonic() + ROOT_POLL
        while True:
            with self._cond:  # woken by every event too: the time is what counts
                while not self._stopping and (left := next_poll - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._stopping:
                    return
                known = dict(self._root_ids)
            next_poll = time.monotonic() + ROOT_POLL
            changed = [root for root, identity in known.items() if _identity(root) != identity]
            if changed:
                with self._cond:
                    if known == self._root_ids:  # not watched anew meanwhile
                        self._root_ids = {**known, **{root: _identity(root) for root in changed}}
                        self._rescan_reason = self._rescan_reason or (
                            f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} gone, replaced or "
                            "mounted anew")
                        self._cond.notify_all()

    def _start_observer(self):
        """A new observer watching every root that is a folder now; None, said in one
        line, where the kernel's inotify limits allow none (the timed walks remain)."""
        from watchdog.observers import Observer  # inotify on Linux

        observer = Observer()
        handler = _Handler(self)
        observer.daemon = True
        identities = {root: _identity(root) for root in self.roots}  # before the watches: a change after is seen
        with self._cond:
            self._root_ids = identities
        try:
            for root in self.roots:
                if os.path.isdir(root):  # a share not mounted now: watched after the walk that finds it
                    observer.schedule(handler, root, recursive=True)
            observer.start()  # where the watches are added: the watch limit is met here
        except OSError as exc:
            try:  # its inotify reader and threads end with it
                observer.stop()
            except Exception:
                pass
            if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                raise
            _say(f"watch: {exc.strerror or exc} (raise it: sysctl fs.inotify.max_user_watches=524288 and "
                 "fs.inotify.max_user_instances=1024); changes are found only by the walk "
                 + (self._every() if self.rescan_every else "--rescan MINUTES asks for"))
            return None
        return observer

    def _every(self) -> str:
        """How often the timed walk comes, for messages."""
        return f"every {(self.rescan_every or 0) / 60:g} minutes"

    def request_rescan(self, reason: str) -> None:
        """Walk the folders again as soon as the thread is free (what lost events ask)."""
        with self._cond:
            self._rescan_reason = self._rescan_reason or reason
            self._cond.notify_all()

    def root_deleted(self, path: str) -> None:
        """The kernel said a watched folder itself was deleted (IN_DELETE_SELF): its
        watch is gone. A folder made again at its path may get the same inode number
        (file systems reuse a freed one at once), which the root poll would take for the
        same folder, never walked or watched again: the identity is forgotten, so the
        folder that comes back is new to the poll."""
        with self._cond:
            if path in self._root_ids:
                self._root_ids = {**self._root_ids, path: None}

    def stop(self, timeout: float | None = None) -> None:
        """Stop following changes and end the thread; a batch in progress ends after
        its current encode batch, which is committed."""
        with self._cond:  # with the flag, under one lock: _rescan installs no observer after this
            self._stopping = True
            observer = self._observer
            self._cond.notify_all()
        if self.ingestor is not None:
            self.ingestor.stop()
        if observer is not None:
            observer.stop()
            observer.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._poller is not None:
            self._poller.join(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once the first scan is done and no path is queued or in work; False
        if that did not happen within `timeout` seconds. An event the observer has
        not delivered yet (watchdog holds inotify events about half a second, to pair
        moves) is not known here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not (self._scanned and not self._queue and not self._busy and self._rescan_reason is None):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def state(self) -> dict:
        """What GET /api/ingest shows: the phase; `walk`, the counts of the walk of the
        folders in progress (so far) or else of the last one, with its `seconds` and
        whether it is `running`; `since_walk`, what the changes heard since that walk
        ended did (zero while one runs); the top-level counts, the two together
        (`found` and `unchanged`: the walk's, so `found` is the library's size as that
        walk saw it); `pending` (paths queued or in work), the rate and ETA of the run
        in progress (0.0 and None between runs), `errors`: the files skipped that are still
        bad (the latest ERRORS_SHOWN, each once)."""
        ingestor = self.ingestor
        with self._cond:
            pending = len(self._queue) + len(self._in_work)
            busy, scanned, run_started = self._busy, self._scanned, self._run_started
            total = ingestor.totals() if ingestor is not None else IngestSummary()
            if self._walk_base is not None:
                walk = {**_counts(total, self._walk_base, WALK_COUNTS),
                        "seconds": round(time.monotonic() - self._walk_started, 1), "running": True}
                since = dict.fromkeys(SINCE_COUNTS, 0)
            else:
                walk = {**self._last_walk, "running": False}
                since = _counts(total, self._since_base, SINCE_COUNTS)
        if self.optimizing:
            phase = "optimizing"
        elif (busy or not scanned) and (ingestor is None or not ingestor.walk_done):
            phase = "scanning"  # a walk (the first or a later one) has not reached every file yet
        elif busy or not scanned:
            phase = "embedding"
        else:
            phase = "watching"
        rate, eta = 0.0, None
        if busy and ingestor is not None and run_started is not None:
            current = ingestor.summary
            elapsed = time.monotonic() - run_started
            rate = current.embedded / elapsed if elapsed > 0 else 0.0
            to_embed = ingestor.to_embed()  # estimated while the walk is under way
            if to_embed is not None and rate > 0:
                eta = max(to_embed - current.embedded, 0) / rate
        errors = ingestor.report.latest() if ingestor is not None and isinstance(ingestor.report, LiveSkips) else []
        return {
            "watching": self._thread is not None and self._thread.is_alive() and not self._stopping,
            "state": phase,
            "found": walk["found"],
            "embedded": walk["embedded"] + since["embedded"],
            "moved": walk["moved"] + since["moved"],  # found again under a new path: nothing embedded
            "copied": walk["copied"] + since["copied"],
            "unchanged": walk["unchanged"],
            "skipped": walk["skipped"] + since["skipped"],
            "removed": walk["removed"] + since["removed"],
            "walk": walk,
            "since_walk": since,
            "pending": pending,
            "rate": round(rate, 2),
            "eta_seconds": None if eta is None else round(eta, 1),
            "errors": [{"path": path, "reason": reason} for path, reason in errors],
            "batches": self.batches,
            "rescans": self.rescans,
            "last_error": self.last_error,
        }

    # -- the observer's side ----------------------------------------------------
    def note(self, path: str | bytes, is_directory: bool) -> None:
        """Queue a changed path, if the walk would reach it (what the handler calls)."""
        lexical = walked_path(os.fsdecode(path), self.roots, self._exclude())
        if lexical is None or lexical in self.roots:
            return
        if not is_directory and os.path.splitext(lexical)[1].lower() not in self._extensions \
                and not _is_linked_folder(lexical) and not self._reached_through(lexical):
            return  # another type of file (RAW, sidecar), there or deleted: nothing indexed
        with self._cond:
            now = time.monotonic()
            if not self._queue:
                self._first_event = now
            self._queue.add(lexical)
            self._last_event = now
            self._cond.notify_all()

    def _reached_through(self, lexical: str) -> bool:
        """Whether a name that is no image file nor a link to a folder now may still
        matter: deleted, it may have been a link to a folder, by which the index
        reached files (their `via`, under it in `dirs`), whose points its batch then
        removes. inotify cannot say what a deleted name was (a link to a folder is no
        folder to it), so the index is asked, once a name: a deleted RAW or sidecar
        is not queued. Where the index cannot answer, it is queued."""
        if os.path.lexists(lexical):
            return False
        ingestor = self.ingestor
        if ingestor is None:
            return True  # still being built: the batch tells
        try:
            return ingestor.index.count(under=lexical) > 0
        except Exception:  # no collection yet, an index busy or gone: the batch tells
            return True

    def _exclude(self) -> Sequence[str]:
        return self.ingestor.options.exclude if self.ingestor is not None else ()

    # -- the watcher's thread ---------------------------------------------------
    def _main(self) -> None:
        try:
            self._scan()
            while True:
                work = self._next_work()
                if work is None:
                    return
                if isinstance(work, str):
                    self._rescan(work)
                else:
                    self._process(work)
                self._idle()
        except BaseException as exc:  # never die silently
            _say(f"clipsearch serve: the folder watcher stopped: {type(exc).__name__}: {exc}")
            raise
        finally:
            with self._cond:
                self._scanned = True
                self._busy = False
                self._cond.notify_all()

    def _scan(self, rescan: bool = False) -> None:
        with self._cond:
            self._busy = True
            self._run_started = time.monotonic()
        try:
            if self.ingestor is None:
                assert self._factory is not None  # no ingestor given: a factory was
                built = self._factory()
                self.ingestor = built
            ingestor = self.ingestor
            ingestor.options = dataclasses.replace(ingestor.options, optimize=False)
            self._skips()
            roots = self.roots
            if rescan:  # a root gone since start (a share not mounted now) keeps its points
                roots = [root for root in self.roots if os.path.isdir(root)]
                for root in sorted(set(self.roots) - set(roots)):
                    _say(f"watch: {root} is not a folder now (a share not mounted?): its images stay indexed; "
                         "it is walked again when it is back")

            if not self._stopping and roots:
                with self._cond:
                    self._walk_base, self._walk_started = ingestor.totals(), time.monotonic()
                unwalked = _under(sorted(set(self.roots) - set(roots)))
                try:
                    with self._naming(lambda path: not unwalked(path), limit=NAMED_IN_A_WALK):
                        summary = ingestor.run(roots, allow_empty=True)
                finally:  # --allow-missing is for the first scan: a later walk over a share gone empty keeps it
                    ingestor.options = dataclasses.replace(ingestor.options, allow_missing=False)
                    self._walk_ended(ingestor)
                _say(summary.line())  # every walk: what it added and removed, if anything
                if summary.not_pruned:
                    _say(f"{summary.not_pruned} (serve --allow-missing)")
        except Exception as exc:
            self._failed("the walk of the folders" if rescan else "the first ingest", exc)
        finally:
            with self._cond:
                self._busy = False
                self._scanned = True
                self._run_started = None
                if self.rescan_every:
                    self._next_rescan = time.monotonic() + self.rescan_every
                self._cond.notify_all()
        if self.ingestor is not None and not rescan:
            self._idle()

    def _skips(self) -> LiveSkips:
        """The ingestor's skip report, made a LiveSkips at the first call (its --report
        file kept)."""
        ingestor = self.ingestor
        assert ingestor is not None
        if not isinstance(ingestor.report, LiveSkips):
            ingestor.report = LiveSkips(ingestor.options.report, ingestor.progress.message)
        return ingestor.report

    @contextmanager
    def _naming(self, covered: Callable[[str], bool], limit: int | None = None) -> Iterator[None]:
        """Around one call to the ingestor: new bad files named (at most `limit`), and
        once the call has ended whole, the bad files it covered and did not skip again
        off the list."""
        skips = self._skips()
        skips.begin(limit)
        yield
        assert self.ingestor is not None
        summary = self.ingestor.summary
        if not self.ingestor.stopped and not summary.unreached:
            skips.settle(covered)

    def _walk_ended(self, ingestor: Ingestor) -> None:
        """The walk's counts kept for state(); the changes heard are counted from here."""
        with self._cond:
            total = ingestor.totals()
            if self._walk_base is not None:
                self._last_walk = {**_counts(total, self._walk_base, WALK_COUNTS),
                                   "seconds": round(time.monotonic() - self._walk_started, 1)}
            self._walk_base, self._since_base = None, total

    def _rescan(self, reason: str) -> None:
        """Watch anew (a share mounted again, folders the limit left out), then walk."""
        if not self.ingestor or not self.ingestor.options.quiet:
            _say(f"watch: walking the folders again ({reason})")
        # The old observer goes first: both would hold a full set of watches against the
        # user's limit. An event missed between is found by the walk that follows.
        with self._cond:
            old, self._observer = self._observer, None
        if old is not None:
            old.stop()
            old.join(5)
        try:
            new = self._start_observer()
        except OSError as exc:
            new = None
            self._failed("watching the folders anew", exc)
        with self._cond:
            if not self._stopping:
                self._observer, new = new, None
        if new is not None:  # stop() came meanwhile: it never saw this one
            new.stop()
            new.join(5)
        self.rescans += 1
        self._scan(rescan=True)

    def _next_work(self) -> list[str] | str | None:
        """The next batch of paths, or why to walk the folders again; None once stopping."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._next_rescan is not None and now >= self._next_rescan:
                    self._rescan_reason = self._rescan_reason or self._every()
                if self._rescan_reason is not None:
                    reason, self._rescan_reason, self._next_rescan = self._rescan_reason, None, None
                    self._busy = True  # from now: wait_idle must not see a gap before the walk
                    return reason
                until_rescan = None if self._next_rescan is None else self._next_rescan - now
                if self._queue:
                    quiet_for = now - self._last_event
                    waited = now - (self._first_event or now)
                    if len(self._queue) >= self.max_batch or quiet_for >= self.debounce or waited >= self.max_wait:
                        batch = sorted(self._queue)[:self.max_batch]
                        self._queue.difference_update(batch)
                        if not self._queue:
                            self._first_event = None
                        self._in_work = batch
                        self._busy = True
                        self._run_started = now
                        return batch
                    self._cond.wait(max(0.01, min(self.debounce - quiet_for, self.max_wait - waited,
                                                  until_rescan if until_rescan is not None else self.max_wait)))
                else:
                    self._cond.wait(None if until_rescan is None else max(0.01, min(until_rescan, LONGEST_WAIT)))
            return None

    def _process(self, batch: list[str]) -> None:
        ingestor = self.ingestor
        try:
            if ingestor is None:  # the first scan could not even build it
                raise RuntimeError("no ingestor (its construction failed at start)")
            # A folder that exists (moved or copied in, or one replaced by another within
            # the debounce: no event names the old one's files) is walked as the folders
            # are, with the ingestor's prune (serve's): the points of its files gone go, by
            # ingest/prune.py's rules (not where most are gone: a drive not mounted).
            folders = [path for path in batch if os.path.isdir(path)]
            folders = [f for f in folders if not any(f.startswith(other + os.sep) for other in folders)]
            files: list[str] = []
            gone: list[str] = []
            for path in batch:
                if not os.path.lexists(path):
                    gone.append(path)
                elif not any(path == f or path.startswith(f + os.sep) for f in folders):
                    files.append(path)  # a folder moved in comes with an event for each of its files too
            # New files first: a renamed file or folder is then recognised by its content and
            # its points moved (ingest/relink.py), before the old paths' removal would drop them.
            before = ingestor.totals()
            if files:
                with self._naming(_under(files)):
                    ingestor.run_files(files, roots=self.roots)  # a link in them to a file elsewhere: its `via`
            held_back = []
            for folder in folders:
                if self._stopping:
                    break
                if os.path.isdir(folder):  # else gone since: its own event comes
                    summary = self._walk_folder(folder)
                    if summary.not_pruned:
                        held_back.append(folder)
            if gone:
                ingestor.remove(gone)
                self._skips().forget(gone)
            # The batch's own deletions (rm -rf of a folder made again) counted as "most of
            # the folder gone": judged again without them, and said only if that still holds.
            for folder in held_back:
                if not self._stopping and os.path.isdir(folder):
                    summary = self._walk_folder(folder)
                    if summary.not_pruned:
                        _say(f"watch: {summary.not_pruned} (serve --allow-missing)")
            done = _counts(ingestor.totals(), before, SINCE_COUNTS)
            self.batches += 1
            if not ingestor.options.quiet and any(done.values()):
                _say(f"watch: ingested {done['embedded']}, moved or copied {done['moved'] + done['copied']}, "
                     f"skipped {done['skipped']}, removed {done['removed']}: {_where(batch)}")
        except Exception as exc:
            self._failed(f"a batch of {len(batch)} changed path{'s' * (len(batch) != 1)}", exc)
        finally:
            with self._cond:
                self._in_work = []
                self._busy = False
                self._run_started = None
                self._cond.notify_all()

    def _walk_folder(self, folder: str) -> IngestSummary:
        """A folder of a batch (moved or copied in, a link to one made), walked as the
        folders are, with no progress line; every file it skips named."""
        assert self.ingestor is not None
        with self._naming(_under([folder])):
            # within the roots: a link to a folder elsewhere is walked as reached through
            # it, so deleting or retargeting the link later takes its images' points along
            return self.ingestor.run([folder], allow_empty=True, show_progress=False, within=self.roots)

    def _idle(self) -> None:
        if self.on_idle is None or self._stopping:
            return
        self.optimizing = True
        try:
            self.on_idle(self)
        except Exception as exc:
            self._failed("on_idle", exc)
        finally:
            self.optimizing = False

    def _failed(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        _say(f"clipsearch serve: {self.last_error} (the watcher goes on)")


class LiveSkips(SkipReport):
    """The skip report of a live index: what is wrong now, each file named once.

    The ingestor's report (its --report file, if any, still gets every line): a file
    is named in the log when it is first skipped, not again while it stays bad (every
    walk skips a known-bad file again), and off `current` once it is embedded
    (resolved), gone, or not skipped again by a call that looked at it (covered: a
    file relinked as a move or copy, which no decode resolves). begin() and settle()
    frame each of the watcher's calls to the ingestor; lines() is what a walk prints
    at its end (ingest's list of examples would name old, fixed and repeated files, and
    point to a --report serve lacks)."""

    def __init__(self, path: str | None, say: Callable[[str], None]):
        super().__init__(path)
        self.say = say
        self.current: dict[str, str] = {}  # path -> reason, oldest first
        self._lock = threading.Lock()  # state() reads `current` from the server's threads
        self._limit: int | None = None
        self._named = 0
        self._unnamed = 0
        self._again: set[str] = set()  # skipped by the call in progress
        self._warned_before = 0

    def begin(self, limit: int | None = None) -> None:
        """A call starts: name at most `limit` new bad files (None: every one)."""
        self._limit, self._named, self._unnamed, self._again = limit, 0, 0, set()
        self._warned_before = self.warned

    def add(self, path: str, reason: str, rank: int = NEW) -> None:
        super().add(path, reason, rank)
        self._again.add(path)
        with self._lock:
            named = path in self.current
            self.current[path] = reason  # the latest reason, in its first place
        if named:
            return
        if self._limit is not None and self._named >= self._limit:
            self._unnamed += 1
        else:
            self._named += 1
            self.say(f"watch: skipped {shown(path)}: {reason}")

    def resolved(self, path: str) -> None:
        super().resolved(path)
        with self._lock:
            self.current.pop(path, None)

    def settle(self, covered: Callable[[str], bool]) -> None:
        """The call ended, whole: a bad file it covered and did not skip again is fine
        now (or gone)."""
        self._drop(lambda path: path not in self._again and covered(path))

    def forget(self, gone: Sequence[str]) -> None:
        """Deleted files, and every file under deleted folders, are nothing wrong now."""
        self._drop(_under(gone))

    def _drop(self, which: Callable[[str], bool]) -> None:
        with self._lock:
            self.current = {path: reason for path, reason in self.current.items() if not which(path)}

    def latest(self, count: int = ERRORS_SHOWN) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.current.items())[-count:]

    def lines(self) -> list[str]:
        lines = []
        if self._unnamed:
            lines.append(f"watch: ... and {self._unnamed} more skipped file{'s' * (self._unnamed != 1)} not named "
                         f"here (GET /api/ingest lists the latest {ERRORS_SHOWN} in its errors)")
        warned = self.warned - self._warned_before
        if warned:
            lines.append(f"watch: {warned} file{'s' * (warned != 1)} embedded with decoder warnings")
        self._unnamed, self._warned_before = 0, self.warned
        return lines


def _under(paths: Sequence[str]) -> Callable[[str], bool]:
    """Whether a path is one of `paths` or lies under one (as given, or resolved: a
    skip names a link's target)."""
    prefixes = {p for path in paths for p in (path, os.path.realpath(path))}
    return lambda path: any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)


def _where(paths: Sequence[str]) -> str:
    """Where a batch was, for its line: its one path, or how many under which folder."""
    if len(paths) == 1:
        return shown(paths[0])
    return f"{len(paths)} paths under {shown(os.path.commonpath(paths))}"


def _is_linked_folder(path: str) -> bool:
    """A link to a folder: inotify reports it as a file (no IN_ISDIR), the walk follows it."""
    return os.path.islink(path) and os.path.isdir(path)


class _Handler(FileSystemEventHandler):
    """watchdog's events, reduced to paths."""

    def __init__(self, watcher: FolderWatcher):
        super().__init__()
        self.watcher = watcher

    def dispatch(self, event) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        if kind == "events_lost":  # the kernel's queue overflowed: which files changed is unknown
            self.watcher.request_rescan("the kernel dropped file events")
            return
        if event.is_directory and kind in ("modified", "closed"):
            return  # a folder's own metadata: its files have their own events
        if kind == "deleted" and event.is_directory:
            self.watcher.root_deleted(os.fsdecode(event.src_path))  # a root's own deletion: see there
        note = self.watcher.note
        note(event.src_path, event.is_directory)
        if kind == "moved":
            note(event.dest_path, event.is_directory)


# File systems whose files other machines change without an inotify event here.
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "sshfs", "fuse.rclone", "davfs", "fuse.davfs2", "afs", "lustre", "beegfs", "gpfs",
    "vboxsf", "fuse.vmhgfs-fuse", "drvfs", "fuse.gvfsd-fuse", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
})


def network_mounts(roots: Sequence[str], mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(folder, file system type) for each root on a network file system and each
    network mount below a root; [] where the mount table cannot be read (not Linux)."""
    try:
        with open(mountinfo, "rb") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    mounts: dict[str, str] = {}  # mount point -> type; later lines (mounted over) win
    for line in lines:
        fields, _, rest = line.partition(b" - ")
        parts, kinds = fields.split(), rest.split()
        if len(parts) >= 5 and kinds:
            point = os.fsdecode(_unescape(parts[4]))
            mounts[point] = os.fsdecode(kinds[0])
    found = []
    for root in roots:
        own = max((p for p in mounts if root == p or root.startswith(p.rstrip("/") + "/")), key=len, default=None)
        if own is not None and mounts[own] in NETWORK_FILE_SYSTEMS:
            found.append((root, mounts[own]))
        found += [(p, kind) for p, kind in sorted(mounts.items())
                  if p.startswith(root.rstrip("/") + "/") and kind in NETWORK_FILE_SYSTEMS]
    return found


def _identity(folder: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a folder; None where there is no folder."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _unescape(field: bytes) -> bytes:
    """mountinfo writes a space, tab, newline and backslash in a path as \\ooo (octal)."""
    return re.sub(rb"\\([0-7]{3})", lambda octal: bytes([int(octal.group(1), 8)]), field)


def _counts(total: IngestSummary, base: IngestSummary, names: Sequence[str]) -> dict[str, int]:
    """The ingestor's counts since `base`, its totals then."""
    return {name: getattr(total, name) - getattr(base, name) for name in names}
