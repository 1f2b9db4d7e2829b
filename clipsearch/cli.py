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

import importlib
import signal
import threading

import click

from .errors import ClipsearchError, Terminated
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


class CliGroup(click.Group):
    """Turns a ClipsearchError anywhere below into `Error: <one line>` and exit 1, and
    Ctrl-C or SIGTERM into one line and exit 130 or 143 (128 + the signal, as a shell
    reports a process the signal ended)."""

    def invoke(self, ctx):
        previous = _terminate_like_ctrl_c()
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            # A message naming a file may carry its bytes: no control character or
            # undecodable byte reaches the terminal raw (clipsearch/names.py).
            raise click.ClickException(printable(str(exc))) from None
        except KeyboardInterrupt as exc:
            signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            kept = "; everything committed so far is kept." if ctx.invoked_subcommand in WRITERS else "."
            click.echo(f"{'Terminated' if signum == signal.SIGTERM else 'Interrupted'}{kept}", err=True)
            ctx.exit(128 + signum)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _terminate_like_ctrl_c():
    """SIGTERM raises Terminated in the main thread (where Python runs signal handlers),
    so that a stopped command unwinds through its finally blocks as Ctrl-C does. Left
    alone where someone else already handles SIGTERM (an embedding program, a test
    harness) or off the main thread. Returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signal.SIGTERM)
    if current not in (signal.SIG_DFL, None):
        return None

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    return current


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clipsearch")
def cli():
    """Search your images with words. CLIP embeddings in a Qdrant index.

    \b
      clipsearch ingest ~/Pictures
      clipsearch search "a dog running on the beach" -k 5
      clipsearch status
    """


def _register_commands() -> None:
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            cli.add_command(command)


_register_commands()


def main() -> None:
    """The console script. `console_script` lets a command skip the interpreter's
    teardown once its answer is out (search does); a caller that invokes `cli`
    itself (tests, scripts) keeps its process."""
    cli.main(prog_name="clipsearch", obj={"console_script": True})


if __name__ == "__main__":  # python -m clipsearch.cli
    main()
