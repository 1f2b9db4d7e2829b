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
import os
import signal
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, MutableMapping, NoReturn

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future

from .errors import ClipsearchError

# How often the start of a pool looks at whether a worker has ended.
START_POLL_SECONDS = 0.05

UNGUARDED_SCRIPT = (
    "the decoding processes ended as they started{status}: a script that calls clipsearch must call it under "
    "`if __name__ == \"__main__\":`, because multiprocessing's spawn runs the script again in every process "
    "it starts (see README, Python API)")


# Room for why a worker's initializer failed, in the shared memory its parent reads.
WHY_BYTES = 400


def unguarded_call_line() -> int | None:
    """The line of the running script (the __main__ module, run as a file) from which
    clipsearch was called at the top level, outside `if __name__ == "__main__":`, or
    None. Such a call works while a run decodes in its own process (a few dozen images)
    and fails once it starts its spawn pool: said at once rather than on the day the
    folder grows."""
    import ast
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return None  # an interactive session, a notebook, python -c: nothing is run again
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return None
    line = frame.f_lineno
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.If) and node.lineno <= line <= (node.end_lineno or node.lineno) \
                and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            return None
    return line


def _fail_start(why: Any, exc: BaseException) -> NoReturn:
    """End this worker, its initializer having failed: why (its first line) goes to the
    parent, which says it in one line; no traceback from each worker on the terminal."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    why.value = text.encode("utf-8", "replace")[:WHY_BYTES - 1]
    os._exit(1)


def _start_failure(why: Any, status: str) -> ClipsearchError:
    """The error for workers that ended before any started: their initializer's own
    error where one was recorded, else the script without the __main__ guard."""
    if why.value:
        return ClipsearchError(f"the decoding processes could not start{status}: "
                               f"{why.value.decode('utf-8', 'replace')}")
    return ClipsearchError(UNGUARDED_SCRIPT.format(status=status))


def spawn_pool(workers: int, initializer: Callable[[], None] | None = None):
    """A spawn-context Pool of `workers` processes that a closing terminal leaves to
    their parent to stop, returned once one of them has started. Callable from any
    thread (a signal mask is per thread, and children inherit it)."""
    context = multiprocessing.get_context("spawn")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        multiprocessing.resource_tracker.ensure_running()
        started = context.Event()  # a semaphore: after the tracker, which must start with SIGHUP blocked
        why = context.RawArray("c", WHY_BYTES)
        pool = context.Pool(workers, initializer=_start, initargs=(started, why, initializer))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        # The processes the pool started first (Pool has no public handle on them).
        _await_start(started, why, list(pool._pool))  # type: ignore[attr-defined]
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    return pool


def _start(started: Any, why: Any, initializer: Callable[[], None] | None) -> None:
    """A worker's first code, once its process is up (the main script run again and
    all): the caller's initializer, then the word that a worker has started."""
    if initializer is not None:
        try:
            initializer()
        except BaseException as exc:
            _fail_start(why, exc)
    started.set()


def _await_start(started: Any, why: Any, workers: list) -> None:
    """Wait until a worker has started; a worker that ended before any did means that
    none ever will (the module docstring)."""
    while not started.wait(START_POLL_SECONDS):
        ended = [w.exitcode for w in workers if w.exitcode is not None]
        if ended:
            raise _start_failure(why, f" (exit status {ended[0]})")


# -- a pool that survives a worker's death ------------------------------------------------
#
# multiprocessing.Pool replaces a worker that dies (the OOM killer, kill -9) and never
# answers the task it held: its caller waited for ever, idle. Worse, a worker killed
# while waiting for a task holds the task queue's lock, and every other worker, and
# Pool.terminate() itself, then wait on it for good. concurrent.futures'
# ProcessPoolExecutor notices a worker that ends (its process sentinel), fails every
# task in flight with BrokenProcessPool and stops the others. TaskPool adds which task
# each worker was running, so that the tasks a dead worker held are named, and
# in_order() starts a fresh pool for the rest.


@dataclass(frozen=True)
class WorkerDied:
    """in_order()'s outcome for a task whose worker process died while running it."""

    how: str  # "killed by SIGKILL: out of memory?", "exit status 1"


# Where each worker of a TaskPool notes the task it runs: (pid, task number or -1).
_claim: Any = None
_claims: Any = None


def _start_worker(claims: Any, taken: Any, started: Any, why: Any, initializer: Callable[[], None] | None) -> None:
    """A TaskPool worker's first code: the caller's initializer, a slot to note its
    tasks in, and the word that a worker has started."""
    global _claim, _claims
    if initializer is not None:
        try:
            initializer()
        except BaseException as exc:
            _fail_start(why, exc)
    with taken.get_lock():
        slot = taken.value
        taken.value += 1
    if 2 * slot + 1 < len(claims):
        _claim, _claims = slot, claims
        claims[2 * slot], claims[2 * slot + 1] = os.getpid(), -1
    started.set()


def _run_task(function: Callable[[Any], Any], argument: Any, number: int) -> Any:
    """A task in a TaskPool worker, noted as this worker's while it runs."""
    if _claims is not None:
        _claims[2 * _claim + 1] = number
    try:
        return function(argument)
    finally:
        if _claims is not None:
            _claims[2 * _claim + 1] = -1


def _how(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"killed by {name}{': out of memory?' if -exitcode == signal.SIGKILL else ''}"


class TaskPool:
    """A spawn-context ProcessPoolExecutor of `workers` processes, which a closing
    terminal leaves to their parent to stop (as spawn_pool's), and which knows the task
    each worker runs: once it is broken, casualties() names the tasks of the workers
    that died of their own. Each submit() gets the next task number."""

    def __init__(self, workers: int, initializer: Callable[[], None] | None = None):
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with _sighup_blocked():
            multiprocessing.resource_tracker.ensure_running()
            # Semaphores (the Event, the Value's lock, the executor's queues) after the
            # tracker, which must start with SIGHUP blocked: the first one starts it.
            self._claims = context.RawArray("q", 2 * workers)
            self._started = context.Event()
            self.why = context.RawArray("c", WHY_BYTES)  # why an initializer failed (_fail_start)
            self._executor = ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker,
                initargs=(self._claims, context.Value("i", 0), self._started, self.why, initializer))
        # The executor's own record of its processes (it has no public one before Python
        # 3.14's terminate_workers): to stop them at once, and to read how each ended.
        self._processes: MutableMapping[int, Any] = self._executor._processes
        self.tasks = 0

    def submit(self, function: Callable[[Any], Any], argument: Any):
        """(task number, future) of function(argument). Never raises: on a pool already
        broken the future holds the BrokenProcessPool."""
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        number, self.tasks = self.tasks, self.tasks + 1
        try:
            with _sighup_blocked(), _stops_deferred():  # the executor starts its processes as tasks come
                return number, self._executor.submit(_run_task, function, argument, number)
        except BrokenProcessPool as exc:
            future: Future = Future()
            future.set_exception(exc)
            return number, future

    @property
    def started(self) -> bool:
        """Whether any worker got as far as its first task."""
        return self._started.is_set()

    def casualties(self) -> tuple[dict[int, str], list[str]]:
        """Once broken: ({task number: how its worker died}, how each worker that died of
        its own ended). Waits for the executor to have stopped the other workers (at
        once: it terminates them), which end by SIGTERM and hold no casualty."""
        self._executor.shutdown(wait=True)
        ended = {pid: p.exitcode for pid, p in list(self._processes.items())
                 if p.exitcode is not None and p.exitcode != -signal.SIGTERM}
        held: dict[int, str] = {}
        for slot in range(len(self._claims) // 2):
            pid, number = self._claims[2 * slot], self._claims[2 * slot + 1]
            if pid in ended and number >= 0:
                held[number] = _how(ended[pid])
        return held, [_how(code) for code in ended.values()]

    def close(self) -> None:
        """Stop every worker now (a task in hand is dropped), and the executor."""
        for process in list(self._processes.values()):
            if process.exitcode is None:
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)


class _Slot:
    """One task of in_order(): what it runs, and its future, or how its worker died."""

    __slots__ = ("key", "function", "argument", "number", "future", "died")

    def __init__(self, key: Any, function: Callable[[Any], Any], argument: Any):
        self.key, self.function, self.argument = key, function, argument
        self.number = -1
        self.future: Future | None = None
        self.died: WorkerDied | None = None


def _settled(slot: _Slot) -> bool:
    return slot.died is not None or slot.future is not None and slot.future.done()


def in_order(tasks: Iterable[tuple[Any, Callable[[Any], Any], Any]], workers: int, window: int, *,
             initializer: Callable[[], None] | None = None, say: Callable[[str], None] | None = None
             ) -> Iterator[tuple[Any, Any]]:
    """(key, function(argument)) for each (key, function, argument) of `tasks`, run in a
    TaskPool of `workers`, in the order given, at most `window` in flight; a result is
    handed on as soon as those before it are. The pool starts at the first task.

    A worker that dies (the OOM killer, kill -9) costs the task it held, whose outcome
    is a WorkerDied, and nothing else: the pool's other tasks go to a fresh pool, and
    `say` is told in one line. Workers that end before any started (a script that
    calls clipsearch without the __main__ guard), or that keep dying with no task to
    blame and nothing done in between, raise ClipsearchError. Closing the iterator
    stops the workers at once."""
    from concurrent.futures.process import BrokenProcessPool

    pool: TaskPool | None = None
    pending: deque[_Slot] = deque()
    ever_started = False
    blameless = 0  # breaks in a row that named no task, with no result between them

    def submit(slot: _Slot) -> None:
        nonlocal pool
        if pool is None:
            pool = TaskPool(workers, initializer)
        slot.number, slot.future = pool.submit(slot.function, slot.argument)

    def restart() -> None:
        """The pool broke: note who died holding what, and give the rest to a new pool."""
        nonlocal pool, ever_started, blameless
        assert pool is not None
        broken, pool = pool, None
        ever_started = ever_started or broken.started
        held, ended = broken.casualties()
        if not ever_started and ended and not ended[0].startswith("killed"):
            raise _start_failure(broken.why, f" ({ended[0]})")
        blameless = 0 if held else blameless + 1
        if blameless >= 2:
            raise ClipsearchError(f"the decoding processes keep ending ({', '.join(ended) or 'no exit status'}) "
                                  "with no file to blame; what was done before is kept")
        lost = [slot for slot in pending
                if slot.died is None and slot.future is not None
                and isinstance(slot.future.exception(), BrokenProcessPool)]
        for slot in lost:
            if slot.number in held:
                slot.died = WorkerDied(held[slot.number])
            else:
                submit(slot)
        if say is not None:
            how = ", ".join(sorted(set(held.values()) or set(ended))) or "it ended"
            files = sum(slot.died is not None for slot in lost)
            held_files = f"the {'file it was' if files == 1 else f'{files} files they were'} reading skipped, " \
                if files else ""
            say(f"a decoding process died ({how}): {held_files}the decoders started again")

    def first() -> tuple[Any, Any]:
        nonlocal blameless
        while True:
            slot = pending[0]
            if slot.died is not None:
                pending.popleft()
                return slot.key, slot.died
            assert slot.future is not None
            try:
                result = slot.future.result()
            except BrokenProcessPool:
                restart()
                continue
            pending.popleft()
            blameless = 0
            return slot.key, result

    try:
        for key, function, argument in tasks:
            slot = _Slot(key, function, argument)
            submit(slot)
            pending.append(slot)
            while len(pending) >= window or (pending and _settled(pending[0])):
                yield first()
        while pending:
            yield first()
    finally:
        if pool is not None:
            pool.close()


# The signals the CLI turns into an exception in the main thread (cli.py).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _stops_deferred:
    """Ctrl-C, SIGTERM and SIGHUP held meanwhile, and raised once it is over. The
    executor's submit takes the locks of queues its manager thread shares: an exception
    raised by a signal handler between one's acquire and its `with` block left it held,
    and the manager thread, then the pool's shutdown, waited on it for ever (an ingest
    stopped by SIGTERM never ended). Only the main thread runs signal handlers, so only
    it defers them."""

    def __enter__(self) -> None:
        self._saved: dict = {}
        self._caught: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):  # a Python handler (KeyboardInterrupt, cli.py's): held
                self._saved[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self._caught.append(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        if self._caught:
            signal.raise_signal(self._caught[0])  # now, outside those locks: its own handler runs


class _sighup_blocked:
    """SIGHUP blocked in this thread meanwhile: processes started then inherit the mask
    (the module docstring)."""

    def __enter__(self) -> None:
        self._before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def __exit__(self, *exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self._before)
