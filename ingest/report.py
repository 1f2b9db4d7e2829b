"""The skipped-files report: one JSON object per line, {"path", "reason"}."""

from __future__ import annotations

import json
from collections import deque
from typing import TextIO

# How many of the latest skips `recent` keeps (serve's progress endpoint shows them).
RECENT = 20


class SkipReport:
    def __init__(self, path: str | None):
        self.path = path
        self._file: TextIO | None = None
        self.count = 0
        self.examples: list[tuple[str, str]] = []  # the first few, for the summary
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT)  # the last few, newest last

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append((path, reason))
        self.recent.append((path, reason))
        if self.path:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(json.dumps({"path": path, "reason": reason}, ensure_ascii=False) + "\n")
            self._file.flush()  # a killed run still leaves its report behind

    def lines(self) -> list[str]:
        """What the run prints about its skipped files: the first few, and where the rest are."""
        if not self.count:
            return []
        shown = [f"skipped {path}: {reason}" for path, reason in self.examples]
        more = self.count - len(self.examples)
        if self.path:
            shown.append(f"{'all ' if more else ''}{self.count} skipped file{'s' * (self.count != 1)} "
                         f"listed in {self.path}")
        elif more:
            shown.append(f"... and {more} more (--report FILE lists every one)")
        return shown

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
