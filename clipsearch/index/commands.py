"""`clipsearch status` and `clipsearch migrate`: commands about the index itself,
which belong to no stage."""

from __future__ import annotations

import json

import click

from ..errors import ClipsearchError
from ..options import index_options, quiet_option, server_options


@click.command()
@index_options
@click.option("--json", "as_json", is_flag=True,
              help="Print the facts as JSON (with --server, also the server's own: \"server\": {version, pid, "
                   "watching}).")
@server_options(
    "Ask a running `clipsearch serve` (http://host:8765) for the facts of the index it holds, opening "
    "nothing here. With --server, --model, --index, --collection, --device and --grpc/--rest are ignored.")
def status(settings, as_json, server, token):
    """Show the backend, collection, number of images and model of the index."""
    if server:
        from ..remote import ServeClient

        facts = ServeClient(server, token).status()
        if as_json:
            click.echo(json.dumps(facts))
            return
        click.echo(format_status(facts))
        serving = facts.get("server") or {}
        click.echo(f"serve:        {server} (pid {serving.get('pid', '?')}, version {serving.get('version') or '?'}"
                   + (", watching folders)" if serving.get("watching") else ")"))
        return
    from .open import open_index

    with open_index(settings) as index:
        facts = index.describe()
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(format_status(facts))


@click.command()
@index_options
@click.option("--to", "to", required=True, metavar="URL|DIR",
              help="Target index: a Qdrant server URL (the usual case), another folder, or :memory:.")
@click.option("--to-collection", default=None, help="Target collection name. Default: the source's name.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=256, show_default=True,
              help="Points per request.")
@quiet_option
def migrate(settings, to, to_collection, batch_size, quiet):
    """Copy a collection (vectors, payloads, model identity) to another index, e.g. a
    Qdrant server. Resumable: run it again after an interruption."""
    from ..progress import Progress
    from .migrate import migrate as run_migrate
    from .open import open_index

    target_settings = settings.with_overrides(index=to, collection=to_collection or settings.collection)
    if (target_settings.index, target_settings.collection) == (settings.index, settings.collection):
        raise ClipsearchError("--to names the source collection itself")
    with open_index(settings) as source:
        source.require_collection()
        with open_index(target_settings, create=True) as target:
            summary = run_migrate(source, target, batch_size, Progress(quiet=quiet))
    click.echo(summary.line())


def format_status(facts: dict) -> str:
    model = facts.get("model")
    backend = facts["backend"] + (f" ({facts['protocol']})" if "protocol" in facts else "")
    lines = [f"backend:      {backend}", f"index:        {facts['location']}"]
    if "server_version" in facts:
        lines.append(f"server:       Qdrant {facts['server_version']}")
    lines += [
        f"collection:   {facts['collection']}" + ("" if facts["exists"] else " (does not exist yet)"),
        f"points:       {facts['points']}",
        "model:        " + (f"{model['name']} (image {model['image_fingerprint'][:12]}, dim {model['dim']})"
                            if model else "-"),
    ]
    if facts["exists"] and "indexed_vectors" in facts:
        indexed = facts["indexed_vectors"]
        state = (f"HNSW over {indexed} of {facts['points']} vectors" if indexed
                 else "exact scan (no HNSW graph yet; ingest builds one once the collection is large)")
        if facts.get("status"):
            state += f", collection status {facts['status']}"
        if facts.get("indexing_paused"):
            state += ("; indexing paused by an ingest (running now, or stopped before it finished: "
                      "the next ingest restores it)")
        lines.append(f"search index: {state}")
    return "\n".join(lines)


COMMANDS = [status, migrate]
