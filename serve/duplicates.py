"""POST /api/duplicates: `clipsearch duplicates` run by the server over the index it
holds, for a client that cannot open that index while serve does (`clipsearch
duplicates --server URL`).

One run at a time: the near-duplicate pass asks one nearest-neighbour query per image
(about 90 s at 100k, BENCHMARKS.md), and a second caller waiting behind the first would
only double the load. Each of its index calls takes the index lock on its own, so
searches go on meanwhile.
"""

from __future__ import annotations

import threading
import time

from clipsearch.errors import ClipsearchError
from clipsearch.names import path_fields

from .service import SearchService, canonical_folder, elapsed_ms
from .uploads import Busy


class DuplicateFinder:
    def __init__(self, service: SearchService):
        self.service = service
        self._running = threading.Lock()
        self._since = 0.0  # when the run under way began

    def running(self) -> bool:
        return self._running.locked()

    def find(self, similar: float | None, under: str | None, cancelled: threading.Event | None = None) -> dict:
        """The groups as JSON: each file's `path` (`path_bytes` beside a name that is not
        UTF-8), `id`, `size`, `score`, and its `thumbnail` and `file` URLs; what the run
        could not look at (`no_fingerprint`; `unreadable` and `same_file`, each path as
        {`path`, `path_bytes`}), as the CLI's notes say it. `cancelled`: set when the
        client has gone (the route watches its connection); the near-duplicate pass then
        stops at its next image, and the finder is free for the next caller."""
        from clipsearch.search.duplicates import check_threshold, find_duplicates

        if similar is not None:
            check_threshold(similar, "similar")  # a 400 naming it, before any work
        folder = canonical_folder(under) if under else None
        if not self._running.acquire(blocking=False):
            raise Busy(f"serve is already finding duplicates for another request (for "
                       f"{time.monotonic() - self._since:.0f} s); try again once it is done")
        try:
            self._since = time.monotonic()
            started = time.perf_counter()
            found = find_duplicates(self.service.index, similar, folder, progress=_stops_when(cancelled))
        finally:
            self._running.release()
        return {
            "groups": [{"kind": group.kind, "files": [
                {**path_fields(member.path), "id": member.id, "size": member.size,
                 "score": member.to_dict()["score"], "thumbnail": f"/api/images/{member.id}/thumbnail",
                 "file": f"/api/images/{member.id}/file"} for member in group.members]} for group in found.groups],
            "no_fingerprint": found.no_fingerprint,
            "unreadable": [path_fields(path) for path in found.unreadable],
            "same_file": [[path_fields(path), path_fields(kept)] for path, kept in found.same_file],
            "similar": similar, "took_ms": elapsed_ms(started),
        }


class Cancelled(ClipsearchError):
    """The client left before the answer: nobody reads this."""


def _stops_when(cancelled: threading.Event | None):
    """find_duplicates' per-image progress call, raising Cancelled once `cancelled` is set."""
    if cancelled is None:
        return None

    def check(done: int, total: int) -> None:
        if cancelled.is_set():
            raise Cancelled(f"the client left; stopped after {done} of {total} images")

    return check
