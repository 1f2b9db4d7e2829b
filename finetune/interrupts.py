"""Ctrl-C, SIGTERM and SIGHUP while a fine-tune writes: a checkpoint or the final model is
written whole, then the interrupt goes on.

A KeyboardInterrupt raised half-way through writing a checkpoint's weights would
leave a folder that looks like a checkpoint and is not one; half-way through the
final save, a model folder that ingest and search would load. While `deferred()` is
open, SIGINT, SIGTERM and SIGHUP are noted instead of acted on; on leaving it, the handler
that was in place (Python's KeyboardInterrupt, the CLI's SIGTERM/SIGHUP handler, or the
default action) gets the first signal noted. A second Ctrl-C during the write is not
needed: the write takes seconds. SIGKILL cannot be deferred; `last_checkpoint`
(training.py) ignores a checkpoint without its trainer_state.json, written last.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread, where signals arrive anyway
        return
    noted: list[int] = []
    previous: dict[int, Any] = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for held in SIGNALS:
        signal.signal(held, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        if noted:
            _deliver(noted[0], previous[noted[0]])


def _deliver(signum: int, handler) -> None:
    if callable(handler):
        handler(signum, None)  # KeyboardInterrupt for SIGINT, or the CLI's own handler
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action (SIGTERM: end the process), now
    # SIG_IGN, or a handler set outside Python (None): the signal was not ours to act on
