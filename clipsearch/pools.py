"""Process pools for decoding images: ingest's decoders, serve's upload checker and
finetune's image check.

'spawn', not fork: forking a process that holds threads (torch's, onnxruntime's,
uvicorn's) can deadlock. And SIGHUP is blocked in the processes a pool starts, and in
multiprocessing's resource tracker: a shell closing (the terminal or SSH session gone)
sends it to the whole job, where it would end a worker under its batch and the tracker
(which leaked the pool's semaphores and printed tracebacks). The command itself handles
it (cli.py) and stops its pool once it has committed what it holds; the workers end
with it anyway (their task pipe closes)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.resource_tracker
import signal
from typing import Callable


def spawn_pool(workers: int, initializer: Callable[[], None] | None = None):
    """A spawn-context Pool of `workers` processes that a closing terminal leaves to
    their parent to stop. Callable from any thread (a signal mask is per thread, and
    children inherit it)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        multiprocessing.resource_tracker.ensure_running()
        return multiprocessing.get_context("spawn").Pool(workers, initializer=initializer)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
