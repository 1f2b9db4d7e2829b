"""A one-line progress display on stderr: counts, rate and ETA.

Long jobs (an overnight ingest, a fine-tune) print where they are; `quiet` silences
it. On a terminal the line rewrites itself; into a file or pipe it prints a line
every `interval` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from . import config


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, interval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if interval is None:  # the progress_seconds setting: how often a log gets a line
            interval = config.value("progress_seconds")
        if interval is None:
            interval = 0.25 if self.is_tty else 10.0
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        self._width = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rate_and_eta(self, done: int, total: int | None) -> tuple[float, str]:
        elapsed = self.elapsed()
        rate = done / elapsed if elapsed > 0 else 0.0
        if total is None or rate <= 0:
            return rate, "?"
        return rate, format_duration((total - done) / rate)

    def update(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        if self.is_tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (e.g. 'building HNSW index...'), even when quiet is off."""
        if self.quiet:
            return
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.is_tty and self._width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
