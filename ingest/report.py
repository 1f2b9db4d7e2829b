"""The skipped-files report: one JSON object per line, {"path", "reason"} for a file
skipped, {"path", "warning"} for one embedded although its decoder warned (corrupt
EXIF and the like: collected here instead of printed, hundreds of them, on stderr).

A path that is not valid UTF-8 is written as clipsearch/names.py stores it: a text
stand-in in "path" and the exact bytes, base64, in "path_bytes"; every line stays valid
UTF-8 JSON.

A report that cannot be written (the disk is full, a quota, the folder is gone) stops
the run with one line naming the file and the reason. Carrying on would end with
"N skipped files listed in FILE" over a file that lacks some of them: the user asked
for every skipped file, and a silently short list is worse than a stop that loses
nothing (every batch handed to the index before it is committed; a re-run skips those
files as unchanged). A line is written whole or not at all: a short write is cut back
to where the line began, so a reader never meets half a line, and a re-run's lines
follow the earlier ones cleanly.
"""

from __future__ import annotations

import errno
import json
import os
from collections import deque
from typing import BinaryIO, Sequence

from clipsearch.encoders.cache import reason_of
from clipsearch.errors import ClipsearchError
from clipsearch.names import path_fields
from clipsearch.output_files import check_output_file

# How many of the latest skips `recent` keeps (serve's progress endpoint shows them).
RECENT = 20
# How many skipped files a run names on stderr (the report file lists every one).
SHOWN = 5

# Which skips stderr names first, most urgent first: a file whose point this run took out
# of the index (it went bad since it was embedded: no longer found by a search), one
# first found bad now, one the walk could not use (a broken link, a loop), and one an
# earlier run found bad. The last two are the same every run: first, they hid the new.
LOST_POINT, NEW, WALK, AS_BEFORE = range(4)


def check_report_path(path: str) -> None:
    """A report that could not be written at all is refused before the run starts, not
    at its first skipped file. Opens nothing: a run that skips nothing leaves no file."""
    check_output_file(path, "--report", "to append the skipped files to")


class SkipReport:
    def __init__(self, path: str | None):
        self.path = path
        self._file: BinaryIO | None = None
        self.count = 0
        self.warned = 0  # files embedded with decoder warnings
        self._shown: list[tuple[int, int, str, str]] = []  # (rank, order, path, reason) of those to name
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT)  # the last few, newest last
        if path:
            check_report_path(path)

    def add(self, path: str, reason: str, rank: int = NEW) -> None:
        self.count += 1
        if len(self._shown) < SHOWN or (rank, self.count) < max(self._shown)[:2]:
            self._shown.append((rank, self.count, path, reason))
            self._shown = sorted(self._shown)[:SHOWN]
        self.recent.append((path, reason))
        if self.path:
            line = json.dumps({**path_fields(path), "reason": reason}, ensure_ascii=False) + "\n"
            self._append(line.encode("utf-8", "surrogateescape"))

    def resolved(self, path: str) -> None:
        """`path` was embedded after all (fixed since): off the list of recent skips,
        which serve shows as what is wrong now. The report file keeps its history."""
        if any(skipped == path for skipped, _ in self.recent):
            kept = [(skipped, reason) for skipped, reason in self.recent if skipped != path]
            self.recent.clear()
            self.recent.extend(kept)

    def warn(self, path: str, messages: Sequence[str]) -> None:
        """A file that was embedded although its decoder warned about it."""
        self.warned += 1
        if self.path:
            line = json.dumps({**path_fields(path), "warning": "; ".join(messages)}, ensure_ascii=False) + "\n"
            self._append(line.encode("utf-8", "surrogateescape"))

    def _append(self, data: bytes) -> None:
        """One whole line, written through (unbuffered): a killed run still leaves its
        report behind, and a failed write is seen here, at the line that failed."""
        assert self.path is not None
        start = None
        try:
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)
            start = self._file.seek(0, os.SEEK_END)
            view = memoryview(data)
            while view:
                written = self._file.write(view)  # a raw file may write part of it
                if not written:  # nothing went: the disk took no more
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[written:]
        except OSError as exc:
            if start is not None and self._file is not None:
                try:
                    self._file.truncate(start)  # no half line; a full disk still allows this
                except OSError:
                    pass
            raise ClipsearchError(
                f"cannot write the skip report {self.path} (--report): {reason_of(exc)}; the images embedded "
                "before this are kept: make room (or give another --report file) and run again") from None

    @property
    def examples(self) -> list[tuple[str, str]]:
        """(path, reason) of the skipped files a run names: the most urgent, in order."""
        return [(path, reason) for _, _, path, reason in self._shown]

    def lines(self) -> list[str]:
        """What the run prints about its skipped files: the first few, and where the rest are."""
        warned = []
        if self.warned:
            files = f"{self.warned} file{'s' * (self.warned != 1)}"
            warned = [f"{files} embedded with decoder warnings, listed in {self.path}" if self.path else
                      f"{files} embedded with decoder warnings (--report FILE lists them)"]
        if not self.count:
            return warned
        shown = [f"skipped {path}: {reason}" for path, reason in self.examples]
        more = self.count - len(self.examples)
        if self.path:
            shown.append(f"{'all ' if more else ''}{self.count} skipped file{'s' * (self.count != 1)} "
                         f"listed in {self.path}")
        elif more:
            shown.append(f"... and {more} more (--report FILE lists every one)")
        return shown + warned

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # unbuffered: nothing is left to write, so nothing can fail for want of space
            except OSError:
                pass
