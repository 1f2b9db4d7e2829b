"""`clipsearch serve`. Imports only click and the kernel's light modules at top level."""

from __future__ import annotations

import click

from clipsearch import config
from clipsearch.options import exclude_option, index_options, quiet_option, setting_option


@click.command()
@index_options
@setting_option("host", metavar="ADDRESS")
@setting_option("port", metavar="PORT")
@setting_option("token", metavar="TOKEN")
@click.option("--watch", multiple=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Ingest DIR (incrementally), then keep the index in step with its changes while serving "
                   "(repeatable).")
@exclude_option
@setting_option("cors_origins", "--cors-origin", metavar="ORIGIN[,ORIGIN...]")
@setting_option("upload_megabytes", metavar="MB")
@setting_option("thumbnail_megabytes", metavar="MB")
@setting_option("workers", "--workers", "-w", metavar="N",
                help="Decoding processes for the watched ingest; 0 decodes in the serving process.")
@setting_option("batch_size", "--batch-size", "-b", metavar="N")
@click.option("--allow-missing", is_flag=True,
              help="Let --watch's first scan forget the files deleted while serve was down even where more than "
                   "half of a folder's images (and more than 10) are gone, or their file system is not the one "
                   "they were indexed on (without it, such a folder, a drive or share that is not mounted, is left "
                   "as it is and the log says so). Later walks never do.")
@setting_option("rescan_minutes", "--rescan", metavar="MINUTES")
@quiet_option
def serve(settings, host, port, token, watch, exclude, cors_origins, upload_megabytes, thumbnail_megabytes, workers,
          batch_size, allow_missing, rescan_minutes, quiet):
    """Serve the index to many clients: an HTTP API, a web page, thin clients
    (`clipsearch search --server URL`), and with --watch a live index."""
    from .server import ServeOptions, run

    options = ServeOptions(
        host=config.value("host", host), port=config.value("port", port), token=config.value("token", token),
        watch=list(watch), exclude=tuple(exclude), cors_origins=tuple(config.value("cors_origins", cors_origins)),
        upload_megabytes=config.value("upload_megabytes", upload_megabytes),
        thumbnail_megabytes=config.value("thumbnail_megabytes", thumbnail_megabytes),
        workers=config.value("workers", workers), batch_size=config.value("batch_size", batch_size),
        allow_missing=allow_missing, rescan_minutes=config.value("rescan_minutes", rescan_minutes), quiet=quiet)
    run(settings, options)


COMMANDS = [serve]
