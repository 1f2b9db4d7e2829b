"""The `clipsearch` command line: the group, its error handling, and the registration
of each stage's commands.

Commands live with their stage (ingest/commands.py, search/commands.py,
finetune/commands.py; status and migrate in index/commands.py), share their options
through clipsearch/options.py, and are registered here from a fixed list. Those
modules import only click and light kernel modules at top level: torch,
sentence-transformers and qdrant-client load inside the commands that need them,
so `clipsearch --help` and `clipsearch status` start fast.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading

import click

from . import config
from .errors import ClipsearchError, Terminated, UsageError
from .names import printable

# The modules whose COMMANDS make up the CLI, in help order.
COMMAND_MODULES = (
    "clipsearch.ingest.commands",
    "clipsearch.search.commands",
    "clipsearch.search.duplicates_command",
    "clipsearch.index.commands",
    "clipsearch.finetune.commands",
    "clipsearch.serve.commands",
)


# The commands that write: stopped, they say that what they committed is kept (a search
# saying so would suggest it had written something).
WRITERS = frozenset({"ingest", "reindex", "migrate", "finetune", "serve"})


# How a stopped command says what stopped it: Ctrl-C, a service stop or `kill`, the
# terminal or SSH session closing (whose SIGHUP ended a 10-hour ingest where it stood).
STOPPED_BY: dict[int, str] = {signal.SIGINT: "Interrupted", signal.SIGTERM: "Terminated", signal.SIGHUP: "Hung up"}


class CliGroup(click.Group):
    """Turns a ClipsearchError anywhere below into `Error: <one line>` and exit 1, and
    Ctrl-C, SIGTERM or SIGHUP into one line and exit 130, 143 or 129 (128 + the
    signal, as a shell reports a process the signal ended)."""

    def make_context(self, info_name, args, parent=None, **extra):
        """The group's own flags, parsed before any command: what click refuses there
        is one line too (`clipsearch --bogus`); no arguments still shows the help."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _OneLineUsage) or type(exc).__name__ == "NoArgsIsHelpError":
                raise
            raise _OneLineUsage(printable(exc.format_message()), exc.ctx) from None

    def invoke(self, ctx):
        previous = _terminate_like_ctrl_c()
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            # A message naming a file may carry its bytes: no control character or
            # undecodable byte reaches the terminal raw (clipsearch/names.py).
            raise _Failed(printable(str(exc)), exc.exit_code) from None
        except click.UsageError as exc:  # a command's flag or argument click refused
            if isinstance(exc, _OneLineUsage):
                raise
            raise _OneLineUsage(printable(exc.format_message()), exc.ctx) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE and _output_failed(exc, stdout_only=True):
                # The reader closed the pipe before the output was all written (| head):
                # 141, as a Unix tool SIGPIPE ends, and no line (click said 1, which
                # reads as a failure with no message). Not 0: the command did not finish,
                # and its own status (status --check's 1) was still to come.
                _output_goes_nowhere()
                ctx.exit(128 + signal.SIGPIPE)
            if _output_failed(exc):  # > /dev/full, a full disk
                raise click.ClickException(f"cannot write the output: {exc.strerror or exc}") from None
            raise
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
            # A writer stopped before it committed anything (a fine-tune before its first
            # checkpoint) says so itself, by `nothing_committed`.
            wrote = ctx.invoked_subcommand in WRITERS and not getattr(exc, "nothing_committed", False)
            kept = "; everything committed so far is kept." if wrote else "."
            try:
                click.echo(f"{STOPPED_BY[signum]}{kept}", err=True)
            except OSError:
                pass  # a terminal that hung up takes no more output; the exit status still says it
            ctx.exit(128 + signum)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class _Failed(click.ClickException):
    """`Error: <line>`, exiting with the ClipsearchError's own status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click types it a ClassVar; click reads it per instance


class _OneLineUsage(click.UsageError):
    """click's usage error (exit 2) as one line, the help to read on it: click printed
    the command's usage and a hint above it, four lines for one bad value."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{hint}", err=True, file=file)


def _stdout_stream(written):
    """`written` if it writes to standard output (click may wrap sys.stdout's buffer in
    a text stream of its own), else None."""
    try:
        return written if written.fileno() == 1 else None
    except (AttributeError, OSError, ValueError):
        return None


def _output_goes_nowhere() -> None:
    """Standard output to /dev/null: what is left of the command's output, and the
    interpreter's flush at exit, write nowhere rather than fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _output_failed(exc: OSError, stdout_only: bool = False) -> bool:
    """Whether `exc` came from writing the command's output (click.echo): stdout on a
    full disk or /dev/full, not an index's or a named file's write; `stdout_only`: not
    a line for stderr."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    echoed = tb is not None and tb.tb_frame.f_code.co_name == "echo" and \
        tb.tb_frame.f_globals.get("__name__") == "click.utils"
    if not echoed or not stdout_only:
        return echoed
    assert tb is not None
    written = tb.tb_frame.f_locals.get("file")
    return not tb.tb_frame.f_locals.get("err") and (written is None or written is _stdout_stream(written))


def _terminate_like_ctrl_c() -> dict:
    """SIGTERM and SIGHUP raise Terminated in the main thread (where Python runs signal
    handlers), so that a stopped command unwinds through its finally blocks as Ctrl-C
    does. Each is left alone where someone else already handles or ignores it (an
    embedding program, a test harness, `nohup`), and both off the main thread.
    Returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    terminals = [fd for fd in (1, 2) if os.isatty(fd)]
    for signum in (signal.SIGTERM, signal.SIGHUP):
        current = signal.getsignal(signum)
        if current not in (signal.SIG_DFL, None):
            continue

        def terminate(signum, frame):
            signal.signal(signum, signal.SIG_DFL)  # the same signal again ends the process at once
            if signum == signal.SIGHUP:
                _quiet_hung_up(terminals)
            raise Terminated(signum)

        signal.signal(signum, terminate)
        previous[signum] = current
    return previous


def _quiet_hung_up(terminals: list[int]) -> None:
    """Output to a terminal that hung up fails (EIO): the progress and summary lines
    written while the command stops would raise in its finally blocks, before what it
    holds is committed. Those of stdout and stderr that were a terminal and are not
    one now (hung up) write to /dev/null from here on; a file or pipe keeps them."""
    hung_up = [fd for fd in terminals if not os.isatty(fd)]
    if hung_up:
        nowhere = os.open(os.devnull, os.O_WRONLY)
        for fd in hung_up:
            os.dup2(nowhere, fd)
        os.close(nowhere)


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
@click.pass_context
def cli(ctx):
    """Search your images with words. CLIP embeddings in a Qdrant index.

    \b
      clipsearch ingest ~/Pictures
      clipsearch search "a dog running on the beach" -k 5
      clipsearch status
    """
    if 1 in (ctx.obj or {}).get("closed_streams", ()) and ctx.invoked_subcommand not in WRITERS:
        # Its answer would go nowhere, and exit 0 would say it went somewhere; 2, as it
        # was called wrongly (1 from `status --check` means damage). A writer's work is
        # the index: it runs, its summary discarded.
        raise _Failed("standard output is closed: nowhere to write the answer "
                      "(redirect it: > FILE, or > /dev/null to discard it)", UsageError.exit_code)
    for line in config.unknown_variables():
        click.echo(printable(line), err=True)  # a variable's name is the environment's bytes


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            cli.add_command(command)


_register_commands()


def _fill_closed_standard_streams() -> frozenset[int]:
    """Standard descriptors the caller closed (`>&-`, a daemon's launcher), each given
    /dev/null: the next file opened would otherwise become descriptor 1 or 2, and output
    meant for the terminal would be written into it (an index file, a model file). Python
    left sys.stdout or sys.stderr None for them; they write to /dev/null now (an error
    line to nowhere rather than, as click fell back to, onto stdout). Returns the closed
    descriptors: a command whose answer is its output refuses to run without stdout."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        nowhere = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if nowhere != fd:
            os.dup2(nowhere, fd)
            os.close(nowhere)
    if 1 in closed:
        sys.stdout = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
    if 2 in closed:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    return frozenset(closed)


def main() -> None:
    """The console script. `console_script` lets a command skip the interpreter's
    teardown once its answer is out (search does); a caller that invokes `cli`
    itself (tests, scripts) keeps its process."""
    status = 1
    closed = _fill_closed_standard_streams()
    try:
        cli.main(prog_name="clipsearch", obj={"console_script": True, "closed_streams": closed})
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        raise
    finally:
        # The command is done (its answer out, or its stop said): a terminal closing, or a
        # service manager's SIGTERM, while the interpreter tears down (a pool's join, exit
        # handlers) must not turn a finished run's exit status into a death by signal.
        # A SIGTERM ends the teardown at once, with the command's own status.
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(status))


if __name__ == "__main__":  # python -m clipsearch.cli
    main()
