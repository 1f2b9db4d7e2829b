"""`clipsearch finetune` and `clipsearch eval`.

The CLI registers `COMMANDS`. This module imports only click and the standard
library at top level: torch and sentence-transformers load inside the commands,
so `clipsearch --help` stays fast.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from clipsearch import config
from clipsearch.errors import ClipsearchError
from clipsearch.options import device_option, model_option, setting_option

template_option = click.option(
    "--template", "templates", multiple=True, metavar="TEXT",
    help='For a labelled folder: how a label becomes a caption, {label} marking its place; repeat it for '
         'several (training picks one per image per step, evaluation averages them).  '
         '[default: "a photo of a {label}."]')


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets nan through (it fails no comparison) and inf where there
    is no maximum: either one crashed deep in torch or trained a model of NaN weights."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _check_given_templates(templates) -> None:
    """A template without {label} is a mistake in the command line: say so before
    every row and image of the data is checked (minutes for a large folder)."""
    if templates:
        from .templates import check_templates

        check_templates(templates)


@click.command()
@click.argument("data", type=click.Path(exists=False))
@click.option("--output", "-o", required=True, type=click.Path(), metavar="DIR",
              help="Where the fine-tuned model folder goes (refused if it exists, unless --overwrite or --resume).")
@model_option("--base", "-b", help="The CLIP to start from: hub id or local folder (the model the other "
                                  "commands use, unless given).")
@click.option("--epochs", type=FiniteFloatRange(min=0, min_open=True), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Pairs per step; each pair's in-batch negatives are the other pairs of its batch.")
@click.option("--mini-batch-size", type=click.IntRange(min=1), default=None, metavar="M",
              help="Embed the batch M pairs at a time with cached gradients (GradCache): the loss and "
                   "negatives of --batch-size in the memory of M.  [default: the whole batch at once]")
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=1e-5, show_default=True,
              help="Peak learning rate (cosine schedule after warm-up).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, the order and the init.")
@click.option("--eval-split", type=FiniteFloatRange(min=0, max=1, max_open=True), default=0.1, show_default=True,
              help="Fraction of the images (with all their captions) held out for evaluation; 0 for none.")
@click.option("--eval-data", type=click.Path(exists=True), default=None,
              help="Evaluate on the pairs in this file instead of a split of DATA.")
@click.option("--scale", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Similarity scale of the contrastive loss (1/temperature).  "
                   "[default: the base model's learned one: 100 for OpenAI's CLIPs]")
@click.option("--freeze", type=click.Choice(["none", "vision", "text"]), default="none", show_default=True,
              help="Keep one tower unchanged. vision: an index built with the base model stays valid.")
@click.option("--warmup", type=FiniteFloatRange(min=0, max=1), default=0.1, show_default=True,
              help="Fraction of the steps spent warming the learning rate up.")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=0.1, show_default=True)
@click.option("--save-steps", type=click.IntRange(min=1), default=None,
              help="Checkpoint every N steps.  [default: every epoch]")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --output from its last checkpoint.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --output (a model folder, --base itself too): the old model waits "
                   "beside it, hidden, until the new one is whole, and comes back if the run stops before "
                   "its first checkpoint. A folder that holds more than a model (photos, notes) is refused.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUTPUT/checkpoints/ after training.")
@click.option("--skip-bad", is_flag=True, help="Leave out bad rows (listed in a report) instead of stopping.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Where the bad rows are listed: those --skip-bad left out, or all those that stopped the run. "
                   "[default with --skip-bad: OUTPUT/skipped_rows.jsonl]")
@device_option
@setting_option("max_megapixels", metavar="MP",
                help="Rows whose image is larger than this are bad rows, as ingest skips such images.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes decoding training images; 0 decodes in this one.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@template_option
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation record as JSON.")
def finetune(data, output, model, epochs, batch_size, mini_batch_size, lr, seed, eval_split, eval_data, scale, freeze,
             warmup, weight_decay, save_steps, resume, overwrite, keep_checkpoints, skip_bad, report, device,
             max_megapixels, workers, quiet, templates, as_json):
    """Fine-tune CLIP on image/caption pairs in DATA and save it to --output.

    \b
    DATA is one of:
      a CSV with the header image_path,text_description
      a pipe table:  image_path | text_description
      a TSV with that header, or JSON lines with those keys
      a folder of images, each with a same-name .txt caption
      a labelled folder: class subfolders of images (birds/heron/*.jpg),
        labelled by DATA/labels.txt (FOLDER<TAB>LABEL lines) or by the
        folder's own name (heron), captioned by --template
    Relative image paths resolve against DATA's folder. The four files may add
    a negative column: a caption that does not describe the image, which the
    loss then ranks below the image's own (all rows or none).

    Every row is checked first (columns, captions, images, duplicates). Recall@1/5/10
    and MRR on held-out images are measured before and after training and saved in
    OUTPUT/eval.json and OUTPUT/README.md; for a labelled folder, zero-shot
    classification accuracy (top-1, top-5) among its labels too.
    """
    if eval_data and _given("eval_split"):
        raise click.UsageError("--eval-split and --eval-data contradict each other: --eval-data holds the "
                               "evaluation pairs and all of DATA trains; pick one")
    _require_training_extras()
    _check_given_templates(templates)
    from .evaluation import format_table
    from .pipeline import FinetuneOptions, run_finetune
    from .training import TrainSettings

    settings = TrainSettings(epochs=epochs, batch_size=batch_size, mini_batch_size=mini_batch_size, lr=lr, seed=seed,
                             scale=scale, freeze=freeze,
                             warmup=warmup, weight_decay=weight_decay, save_steps=save_steps,
                             device=config.value("device", device), workers=workers,
                             max_megapixels=config.value("max_megapixels", max_megapixels))
    record = run_finetune(FinetuneOptions(
        data=data, output=output, base=config.value("model", model), settings=settings, eval_split=eval_split,
        eval_data=eval_data, skip_bad=skip_bad, report=report, overwrite=overwrite, resume=resume,
        keep_checkpoints=keep_checkpoints, quiet=quiet or as_json, templates=templates,
    ))
    if as_json:
        click.echo(json.dumps(record))
        return
    if record["before"] and record["after"]:
        click.echo(format_table({"before": record["before"], "after": record["after"]}))
    train = record["train"]
    steps = f"{train['steps']} step{'s' if train['steps'] != 1 else ''}"
    click.echo(f"trained {steps} in {train['seconds']:.1f} s; model saved to {record['model']}")
    if record["image_tower_unchanged"]:
        click.echo("image tower unchanged: `clipsearch reindex --model " + record["model"] + "` adopts it in a "
                   "collection built with the base model, embedding nothing again")
    else:
        click.echo("image tower changed: `clipsearch reindex --model " + record["model"] + "` embeds a "
                   "collection's images with it")
    click.echo("then ingest, search and serve use the collection's model without --model")


@click.command(name="eval")
@click.argument("data", type=click.Path(exists=False))
@model_option(help="The CLIP to evaluate: hub id or local folder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Leave out bad rows instead of stopping.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="List the bad rows in this JSON-lines file: those --skip-bad left out, or all those that "
                   "stopped the run.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="Also write the metrics to this JSON file.")
@device_option
@setting_option("max_megapixels", metavar="MP",
                help="Rows whose image is larger than this are bad rows, as ingest skips such images.")
@template_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_command(data, model, batch_size, skip_bad, report, output, device, max_megapixels, templates, as_json):
    """Measure text -> image retrieval (recall@1/5/10, MRR) of a model on the pairs in DATA.

    Each distinct caption is a query over all of DATA's images; DATA takes any
    layout `finetune` reads. For a labelled folder each label's captions are the
    queries, and each image is also classified among all the labels (zero-shot
    accuracy@1 and accuracy@5, each label's templates averaged as CLIP does).
    """
    _check_given_templates(templates)
    from .captions import check_model_captions, texts_of
    from .evaluation import evaluate, format_table
    from .loading import load_clip
    from .pipeline import writable_folder
    from .templates import templates_for
    from .validation import load_pairs

    output, report = (os.path.expanduser(path) if path else None for path in (output, report))
    for flag, path in (("--output", output), ("--report", report)):
        if path:  # before the evaluation, not after it
            writable_folder(Path(path).resolve().parent, flag)
    limit = config.value("max_megapixels", max_megapixels)
    pairs = load_pairs(data, skip_bad=skip_bad, max_megapixels=limit, report=report)
    chosen = templates_for(templates, pairs.labelled, pairs.source, pairs.format)
    if pairs.problems:
        if report:
            try:
                pairs.write_report(report)
            except OSError as exc:
                raise ClipsearchError(f"--report {report} cannot be written: {exc.strerror or exc}") from None
        where = f"see {report}" if report else "pass --report FILE to list them"
        click.echo(f"left out {len(pairs.problems)} of {len(pairs.problems) + len(pairs.pairs)} rows with bad "
                   f"images or fields; {where}", err=True)
    encoder = load_clip(config.value("model", model), config.value("device", device))
    cut = check_model_captions(encoder.st, texts_of(pairs.pairs, chosen), encoder.clip)
    if cut and cut.line():
        click.echo(cut.line(), err=True)
    metrics = evaluate(encoder.st, pairs.pairs, image_size=encoder.image_size, batch_size=batch_size,
                       max_megapixels=limit, labels=pairs.labels, templates=chosen, model=encoder.location)
    metrics.update(model=encoder.location, data=pairs.source, skipped=len(pairs.problems))
    if cut:
        metrics.update(cut.counts())
    if output:
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            with open(output, "w", encoding="utf-8") as handle:
                json.dump(metrics, handle, indent=2)
                handle.write("\n")
        except OSError as exc:
            raise ClipsearchError(f"--output {output} cannot be written: {exc.strerror or exc}") from None
    if as_json:
        click.echo(json.dumps(metrics))
        return
    click.echo(format_table({os.path.basename(encoder.location.rstrip("/")) or "model": metrics}))


def _given(name: str) -> bool:
    """Whether the user gave the option `name` (not its default)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _require_training_extras() -> None:
    import importlib.util

    from clipsearch.errors import ClipsearchError

    missing = [name for name in ("datasets", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ClipsearchError(f"fine-tuning needs {' and '.join(missing)}: pip install 'clipsearch[finetune]'")


COMMANDS = [finetune, eval_command]
