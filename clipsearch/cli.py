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

import click

from .errors import ClipsearchError

# The modules whose COMMANDS make up the CLI, in help order.
COMMAND_MODULES = (
    "clipsearch.ingest.commands",
    "clipsearch.search.commands",
    "clipsearch.index.commands",
    "clipsearch.finetune.commands",
    "clipsearch.serve.commands",
)


class CliGroup(click.Group):
    """Turns a ClipsearchError anywhere below into `Error: <one line>` and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClipsearchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; everything committed so far is kept.", err=True)
            ctx.exit(130)


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
