"""Process pools for decoding images: ingest's decoders, serve's upload checker and
finetune's image check.

'spawn', not fork: forking a process that holds threads (torch's, onnxruntime's,
uvicorn's) can deadlock. And SIGHUP is blocked in the processes a pool starts, and in
multiprocessing's resource tracker: a shell closing (the terminal or SSH session gone)
sends it to the whole job, where it would end a worker under its batch and the tracker
(which leaked the pool's semaphores and printed tracebacks). The command itself handles
it (cli.py) and stops its pool once it has committed what it holds; the workers end
with it anyway (their task pipe closes).

spawn runs the parent's main script again in each process it starts, before the
worker's own code: a script that calls clipsearch without `if __name__ == "__main__":`
calls it again there, and fails (the index is held by the parent) or starts a process
of its own, which a process still starting may not. multiprocessing.Pool replaces a
worker that dies, at once and forever, so such a pool never decodes anything and its
caller waited for ever. spawn_pool returns once a worker has started, and raises as
soon as one ends before any did."""

from __future__ import annotations

import multiprocessing
import multiprocessing.resource_tracker
import signal
from typing import Any, Callable

from .errors import ClipsearchError

# How often the start of a pool looks at whether a worker has ended.
START_POLL_SECONDS = 0.05

UNGUARDED_SCRIPT = (
    "the decoding processes ended as they started{status}: a script that calls clipsearch must call it under "
    "`if __name__ == \"__main__\":`, because multiprocessing's spawn runs the script again in every process "
    "it starts (see README, Python API)")


def spawn_pool(workers: int, initializer: Callable[[], None] | None = None):
    """A spawn-context Pool of `workers` processes that a closing terminal leaves to
    their parent to stop, returned once one of them has started. Callable from any
    thread (a signal mask is per thread, and children inherit it)."""
    context = multiprocessing.get_context("spawn")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        multiprocessing.resource_tracker.ensure_running()
        started = context.Event()  # a semaphore: after the tracker, which must start with SIGHUP blocked
        pool = context.Pool(workers, initializer=_start, initargs=(started, initializer))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        # The processes the pool started first (Pool has no public handle on them).
        _await_start(started, list(pool._pool))  # type: ignore[attr-defined]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    return pool


def _start(started: Any, initializer: Callable[[], None] | None) -> None:
    """A worker's first code, once its process is up (the main script run again and
    all): the caller's initializer, then the word that a worker has started."""
    if initializer is not None:
        initializer()
    started.set()


def _await_start(started: Any, workers: list) -> None:
    """Wait until a worker has started; a worker that ended before any did means that
    none ever will (the module docstring)."""
    while not started.wait(START_POLL_SECONDS):
        ended = [w.exitcode for w in workers if w.exitcode is not None]
        if ended:
            raise ClipsearchError(UNGUARDED_SCRIPT.format(status=f" (exit status {ended[0]})"))
