"""Wall time per phase of one command, for `--verbose` and bench/cold_query.py.
Standard library only: the CLI creates it before importing anything heavy."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path


class Timings:
    """Wall time per phase of a command, each phase counted once: a phase inside
    another is taken out of the outer one."""

    def __init__(self):
        self.started = time.time()
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        self._stack.append([0.0])
        try:
            yield
        finally:
            inner = self._stack.pop()[0]
            spent = time.perf_counter() - start
            self.add(name, spent - inner)
            if self._stack:
                self._stack[-1][0] += spent

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` to phase `name`: for time spent off this thread."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def line(self) -> str:
        total = time.time() - self.started
        parts = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in self.seconds.items())
        return f"timings: {parts} (command total {total:.3f} s)"

    def write(self, file: str, **extra) -> None:
        """For bench/cold_query.py: absolute start and end, and the phases. A file that
        cannot be written costs the command nothing but a line saying so."""
        data = {"started": self.started, "ended": time.time(), "phases": self.seconds, **extra}
        try:
            Path(file).write_text(json.dumps(data))
        except OSError as exc:
            from .names import printable
            from .progress import stderr_line

            stderr_line(f"cannot write CLIPSEARCH_TIMINGS={printable(str(file))}: {exc.strerror}")

