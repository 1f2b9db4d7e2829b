"""A one-line progress display on stderr: counts, rate and ETA, drawn by tqdm.

Long jobs (an overnight ingest, a fine-tune) print where they are; `quiet` silences
it. The caller builds the text (counts, rate, ETA); this module only decides when and
how it is shown. On a terminal the line is a tqdm display that rewrites itself (cut to
the terminal's width); into a file or pipe it prints a plain line every `interval`
seconds, so logs stay readable (no carriage returns, no bar characters).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

from . import config
from .names import printable

if TYPE_CHECKING:  # pragma: no cover
    from tqdm import tqdm

# tqdm is imported when a line is first drawn on a terminal (or a duration formatted):
# a quiet or logged run does not pay its import (tens of milliseconds).


def stderr_line(text: str) -> None:
    """One line on stderr, clear of a live tqdm progress line; none where the process
    has no stderr (pythonw, a GUI launcher)."""
    if sys.stderr is None:
        return
    line = f"clipsearch: {text}"
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


def format_duration(seconds: float) -> str:
    """H:MM:SS (tqdm's interval format, always with the hours: 0:01:05, 26:00:00)."""
    from tqdm import tqdm

    text = tqdm.format_interval(max(0, int(seconds)))
    return text if text.count(":") == 2 else "0:" + text


def _live_line(stream: TextIO, text: str) -> "tqdm":
    """A tqdm display that shows only the caller's text."""
    from tqdm import tqdm

    class Line(tqdm):
        monitor_interval = 0  # we redraw on every update we show; no monitor thread

    return Line(file=stream, desc=text, bar_format="{desc}", leave=True, dynamic_ncols=True, position=0)


# Seconds after the first item done before a rate measured from it is shown (and an ETA).
STEADY_AFTER = 1.0

class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, interval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        # No stderr at all (pythonw, a GUI launcher, a service manager): nowhere to show it.
        self.quiet = quiet or self.stream is None
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if interval is None:  # the progress_seconds setting: how often a log gets a line
            interval = config.value("progress_seconds")
        if interval is None:
            interval = 0.25 if self.is_tty else 10.0
        self.interval = interval
        self.start = time.monotonic()
        self._last: float | None = None  # when a line was last shown
        self._bar: tqdm | None = None  # the live line on a terminal

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rate_and_eta(self, done: int, total: int | None, since: tuple[float, int] | None = None
                     ) -> tuple[float, str]:
        """(items a second, the time left for `total`). `since`: (a time.monotonic(),
        `done` then) to measure the rate from, past a start nothing was done in (the
        model loading, the walk reaching the first new file); else from the start."""
        elapsed = self.elapsed()
        rate = done / elapsed if elapsed > 0 else 0.0
        if total is not None and done >= total:
            return rate, format_duration(0)  # nothing left, however the rate stands
        if since is not None:
            if time.monotonic() - since[0] < STEADY_AFTER:  # too soon to tell the steady rate
                return rate, "?"
            rate = (done - since[1]) / (time.monotonic() - since[0])
        if total is None or rate <= 0:
            return rate, "?"
        return rate, format_duration((total - done) / rate)

    def update(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if not force and self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        if not self.is_tty:
            self._write(text)
        elif self._bar is None:  # a new live line; tqdm draws it at once
            self._bar = _live_line(self.stream, text)
        else:
            self._bar.set_description_str(text, refresh=True)

    def message(self, text: str) -> None:
        """A line of its own (e.g. 'building HNSW index...'), even when quiet is off.

        tqdm.write clears a live progress line, prints the message and redraws the
        line below it, so the two never garble each other.
        """
        if self.quiet:
            return
        self._write(printable(text))  # a file name in it cannot break the line or the terminal

    def finish(self) -> None:
        """End a live progress line (it stays on screen); the next update starts a new one."""
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()
            self.stream.flush()

    def _write(self, text: str) -> None:
        if self._bar is None:  # no live line to keep clear of
            self.stream.write(text + "\n")
        else:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        self.stream.flush()
