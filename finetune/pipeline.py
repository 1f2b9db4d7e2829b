"""`clipsearch finetune` from start to end: check, evaluate, train, save, evaluate.

Order matters for the promise that a bad run leaves nothing behind: the output
folder, the dataset (every row) and the base model are all checked before the
first byte is written to --output. Then the held-out split is scored with the base
model, the model is trained with checkpoints in OUTPUT/checkpoints/, saved as a
sentence-transformers folder in OUTPUT, reloaded from there the way ingest and
search will load it, and scored again. OUTPUT/finetune_run.json records what the
run was, so that --resume can check it continues the same run, and how far it got:
"training", then "saved" once the model is whole (it loads as a model from then on),
then "done" once eval.json and the model card are written. A run stopped while
"saved" says so, and --resume only evaluates the saved model and writes the records.

A loss or weights that stop being finite numbers (a learning rate far too high) stop
the run at once: no NaN checkpoint or model is saved over anything (training.py).

Interrupted (Ctrl-C, or SIGTERM which the CLI turns into the same thing) once
--output is written, the run keeps its last whole checkpoint and says which, so
that --resume continues from it; before its first checkpoint there is nothing to
resume, and a folder this run created is removed. Checkpoints and the final model
are written with the interrupt held back until they are whole (interrupts.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from clipsearch.encoders.location import FINETUNE_RUN_FILE, LOCAL_MODEL_HINT
from clipsearch.errors import ClipsearchError
from clipsearch.names import is_text, shown
from clipsearch.progress import Progress

from . import interrupts, model_card
from .captions import CutCaptions, check_model_captions, texts_of
from .evaluation import evaluate
from .loading import load_clip
from .split import check_disjoint, fingerprint, split_by_image
from .templates import templates_for
from .training import (
    Diverged,
    TrainSettings,
    WriteFailed,
    check_trainable,
    follow_umask,
    last_checkpoint,
    train,
    writing,
)
from .validation import PairSet, load_pairs

LOCAL_BASE_HINT = LOCAL_MODEL_HINT.replace("set CLIPSEARCH_MODEL (or --model)", "pass --base (or set CLIPSEARCH_MODEL)")
RUN_FILE = FINETUNE_RUN_FILE  # its name is known to the model loader, which says what to do with such a folder
EVAL_FILE = "eval.json"
REPORT_FILE = "skipped_rows.jsonl"
CHECKPOINTS = "checkpoints"
# The run file's status: training until the model is saved, then SAVED (a whole model)
# until the evaluation after training and the records are written, then DONE.
SAVED, DONE = "saved", "done"
# Settings that may differ between an interrupted run and its --resume.
NOT_COMPARED_ON_RESUME = ("device", "workers", "save_steps")


@dataclass
class FinetuneOptions:
    data: str
    output: str
    base: str
    settings: TrainSettings = field(default_factory=TrainSettings)
    eval_split: float = 0.1
    eval_data: str | None = None
    skip_bad: bool = False
    report: str | None = None
    overwrite: bool = False
    resume: bool = False
    keep_checkpoints: bool = False
    eval_batch_size: int = 64
    quiet: bool = False
    templates: tuple[str, ...] = ()  # --template: captions for a labelled folder's labels


def check_output(output: Path, overwrite: bool, resume: bool, data: str | None = None) -> None:
    if overwrite and resume:
        raise ClipsearchError("--overwrite and --resume contradict each other: pick one")
    if output.exists() and not output.is_dir():
        raise ClipsearchError(f"--output {output} is a file, not a folder")
    if not is_text(str(output)):
        # tokenizers saves only under UTF-8 names: such an --output failed at the first
        # checkpoint, after the evaluation and an epoch of training
        raise ClipsearchError(f"--output {shown(str(output))}: the path is not UTF-8 text, and the model's "
                              "tokenizer cannot be saved under it: choose a UTF-8 name")
    if data is not None and Path(data).expanduser().is_dir():
        folder = Path(data).expanduser().resolve()
        if output == folder or folder in output.parents:
            # its images (the card, the checkpoints' samples) would be read as data next time
            raise ClipsearchError(f"--output {output} is inside DATA {folder}: choose a folder outside it")
    used = output.is_dir() and any(output.iterdir())
    ours = (output / RUN_FILE).is_file()
    finished = ours and _run_status(output) == DONE
    if resume:
        if not ours:
            raise ClipsearchError(f"--resume: {output} holds no interrupted fine-tune ({RUN_FILE} is missing)")
        if finished:
            raise ClipsearchError(f"--resume: the fine-tune in {output} already finished; nothing to resume")
    elif used and not overwrite:
        hint = " or --resume to continue it" if ours and not finished else ""
        raise ClipsearchError(f"--output {output} already exists; pass --overwrite to replace it{hint}")
    elif used and not (ours or (output / "modules.json").is_file() or _clip_config(output)):
        raise ClipsearchError(
            f"--output {output} is not empty and is not a model folder; refusing to delete it: choose another --output"
        )
    elif used and (others := not_model_files(output)):
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ClipsearchError(
            f"--output {output} holds more than a model ({listed}), which --overwrite would delete; refusing: "
            "move them out of it, or choose another --output")
    writable_folder(output, "--output")
    if overwrite and used:  # the old model is renamed aside in its parent
        writable_folder(output.parent, "--output")


# What a model folder holds (sentence-transformers' or transformers' layout, a fine-tune's
# own files, its checkpoints, an ONNX export): --overwrite replaces such a folder whole,
# and anything else in it (scans kept beside the model, a project's folder that merely
# has a config.json) would go with it.
MODEL_SUFFIXES = {".json", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".msgpack", ".h5",
                  ".model", ".jsonl", ".ot"}
MODEL_NAMES = {"README.md", "LICENSE", "LICENSE.txt", "LICENSE.md", "merges.txt", "vocab.txt", "added_tokens.txt",
               ".gitattributes", ".DS_Store", ".cache", CHECKPOINTS, "onnx", "openvino", "coreml", "runs",
               # what this command writes, then renames: left by a run killed between the two
               RUN_FILE.replace(".json", ".tmp"), EVAL_FILE.replace(".json", ".tmp")}


def not_model_files(folder: Path) -> list[str]:
    """The names in `folder` that no model folder holds (folders end with /), sorted."""
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name in MODEL_NAMES or entry.suffix in MODEL_SUFFIXES and entry.is_file():
            continue
        if entry.is_dir() and name[:1].isdigit() and "_" in name:  # 0_CLIPModel, 1_Pooling: modules' folders
            continue
        found.append(shown(name) + ("/" if entry.is_dir() else ""))
    return sorted(found)


def _clip_config(folder: Path) -> bool:
    """Whether `folder` holds a transformers config of a CLIP model (not any config.json)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    kind = str(config.get("model_type", "")) if isinstance(config, dict) else ""
    return "clip" in kind.lower()


def _run_status(output: Path) -> str | None:
    try:
        return json.loads((output / RUN_FILE).read_text()).get("status")
    except (OSError, ValueError):
        return None


def writable_folder(path: Path, flag: str) -> None:
    """A one-line error now, not after the evaluation and the training, when `path` (a
    folder to write, or the folder a file goes in) could not be made: the nearest folder
    that exists must be one this user may write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ClipsearchError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ClipsearchError(f"{flag} {path} cannot be written: {existing} is not writable by this user")


def _load_data(opts: FinetuneOptions, progress: Progress) -> tuple[PairSet, PairSet | None, list, list]:
    def load(data: str, label: str) -> PairSet:
        def checked(done: int, total: int) -> None:
            progress.update(f"checking the images of {label}: {done}/{total}", force=done == total)

        try:
            return load_pairs(data, skip_bad=opts.skip_bad, workers=opts.settings.workers, on_checked=checked,
                              report=opts.report,
                              max_megapixels=opts.settings.max_megapixels)
        finally:
            progress.finish()

    data = load(opts.data, "DATA")
    if opts.eval_data:
        held_set = load(opts.eval_data, "--eval-data")
        check_disjoint(data.pairs, held_set.pairs)
        return data, held_set, data.pairs, held_set.pairs
    train_pairs, held = split_by_image(data.pairs, opts.eval_split, opts.settings.seed)
    return data, None, train_pairs, held


def _check_same_run(previous: dict, current: dict) -> None:
    differences = []
    for key, value in current["settings"].items():
        if key not in NOT_COMPARED_ON_RESUME and previous["settings"].get(key) != value:
            differences.append(f"--{key.replace('_', '-')} {previous['settings'].get(key)} (now {value})")
    def unnamed(identity):  # the weights, not where they are (a base set aside by --overwrite)
        return {k: v for k, v in (identity or {}).items() if k != "name"}

    if unnamed(previous.get("base_identity")) != unnamed(current["base_identity"]):
        differences.append("the base model changed")
    if previous.get("fingerprints") != current["fingerprints"]:
        differences.append("the data or its split changed")
    if differences:
        raise ClipsearchError("--resume continues the same run, but it differs from the interrupted one: "
                              + "; ".join(differences))


def _scorer(st, image_size: int, batch_size: int, progress: Progress, label: str,
            max_megapixels: float | None = None, scored: PairSet | None = None, templates: list[str] | None = None,
            model: str = "in use"):
    """`scored`: the set the held-out pairs come from; a labelled one is classified among
    all its labels, with `templates`."""
    labelled = scored is not None and scored.labelled

    def score(pairs):
        total = len({p.image for p in pairs})
        metrics = evaluate(st, pairs, image_size=image_size, batch_size=batch_size, max_megapixels=max_megapixels,
                           on_batch=lambda n: progress.update(f"evaluating ({label}): {n}/{total} images"),
                           labels=scored.labels if labelled and scored else None,
                           templates=templates if labelled else None, model=model)
        progress.finish()
        return metrics
    return score


def _templates(opts: FinetuneOptions, data: PairSet, held_set: PairSet | None) -> list[str] | None:
    """Templates where DATA or --eval-data is a labelled folder."""
    labelled = data.labelled or bool(held_set and held_set.labelled)
    return templates_for(opts.templates, labelled, data.source, data.format)


def run_finetune(opts: FinetuneOptions) -> dict:
    """Returns the evaluation record (also written to OUTPUT/eval.json)."""
    output = Path(opts.output).expanduser().resolve()
    check_output(output, opts.overwrite, opts.resume, opts.data)
    if opts.report:
        writable_folder(Path(opts.report).expanduser().resolve().parent, "--report")
    progress = Progress(quiet=opts.quiet)
    data, held_set, train_pairs, held = _load_data(opts, progress)
    templates = _templates(opts, data, held_set)
    opts.settings = replace(opts.settings, templates=templates if data.labelled else None)
    check_trainable(train_pairs, opts.settings, split=bool(held) and not opts.eval_data)  # before the model loads
    aside = _aside(output)
    base = opts.base
    if opts.resume and aside.is_dir() and _same_path(opts.base, output):
        base = str(aside)  # training a model further in place: the base waits aside until the run ends
    try:
        encoder = load_clip(base, opts.settings.device)
    except ClipsearchError as exc:  # the loader's advice names --model, which finetune calls --base
        raise ClipsearchError(str(exc).replace(LOCAL_MODEL_HINT, LOCAL_BASE_HINT)) from None
    base_identity = encoder.identity.to_dict()  # hashed now, before training changes the weights
    scored = held_set or data
    train_cut = _check_captions(encoder, train_pairs, templates if data.labelled else None, "training pairs")
    held_cut = _check_captions(encoder, held, templates if scored.labelled else None, "held-out pairs")
    settings = {k: v for k, v in asdict(opts.settings).items() if k != "extra"}
    settings.update(eval_split=opts.eval_split if not opts.eval_data else None, templates=templates)
    run = {
        "status": "training",  # then SAVED, then DONE
        "base": encoder.location if base == opts.base else str(output),
        "base_identity": base_identity,
        "settings": settings,
        "fingerprints": {"train": fingerprint(train_pairs), "eval": fingerprint(held)},
        "data": {
            "source": data.source, "format": data.format,
            "eval_source": held_set.source if held_set else None,
            "train_pairs": len(train_pairs), "train_images": len({p.image for p in train_pairs}),
            "eval_pairs": len(held), "eval_images": len({p.image for p in held}),
            "skipped": len(data.problems) + (len(held_set.problems) if held_set else 0),
            "classes": len(data.labels) or None,
            "negatives": any(p.negative is not None for p in data.pairs),
        },
    }
    score = _scorer(encoder.st, encoder.image_size, opts.eval_batch_size, progress, "before",
                    opts.settings.max_megapixels, scored, templates, encoder.location)
    saved_before = False  # resumed after its model was saved: only the evaluation after and the records are left
    if opts.resume:
        previous = json.loads((output / RUN_FILE).read_text())
        _check_same_run(previous, run)
        before = previous.get("before")
        if previous.get("status") == SAVED and previous.get("train"):
            saved_before = True
            run.update(status=SAVED, train=previous["train"])
    else:
        before = score(held) if held else None
    run["before"] = before

    # Everything is checked: from here on --output is written. The model --overwrite
    # replaces is set aside, not deleted, until the new one is whole: a run that fails
    # or is stopped before its first checkpoint puts it back (it may be --base itself).
    created = False
    saved = saved_before
    checkpoints = str(output / CHECKPOINTS)
    try:
        with interrupts.deferred():  # a Ctrl-C here is taken once `created` says what to undo
            if opts.overwrite and output.exists():
                try:
                    if aside.is_dir() and not _finished_model(output):
                        # An earlier --overwrite that never finished: the aside is still the
                        # last whole model, and what is at OUTPUT is that run's leftovers.
                        shutil.rmtree(output)
                    else:
                        shutil.rmtree(aside, ignore_errors=True)  # superseded by the model at OUTPUT
                        os.rename(output, aside)
                except OSError as exc:
                    raise ClipsearchError(f"--output {output} cannot be set aside to be replaced: "
                                          f"{exc.strerror or exc}") from None
            created = not output.exists()
        try:
            output.mkdir(parents=True, exist_ok=True)
            _write_json(output / RUN_FILE, run)
        except OSError as exc:
            raise ClipsearchError(f"--output {output} cannot be written: {exc.strerror or exc}") from None
        report = Path(opts.report) if opts.report else output / REPORT_FILE
        _write_reports(data, held_set, report)
        _tell_left_out(data, held_set, report)
        if not saved:
            run["train"] = train(encoder.st, encoder.clip, train_pairs, opts.settings, checkpoints,
                                 opts.resume, progress)
            with interrupts.deferred():  # never a half-written model where ingest and search would load one
                _save_model(encoder.st, output)
                _record_saved(output, run)
                saved = True
        trained = load_clip(str(output), opts.settings.device)  # exactly what ingest and search will load
        after = _scorer(trained.st, trained.image_size, opts.eval_batch_size, progress, "after",
                        opts.settings.max_megapixels, scored, templates, trained.location)(held) if held else None
        identity = trained.identity
        evaluation = {
            "task": "text-to-image retrieval on the held-out split"
                    + (", and zero-shot classification of its images among the labels" if scored.labelled else ""),
            "held_out": {"pairs": len(held), "images": len({p.image for p in held}),
                         "source": held_set.source if held_set else f"{opts.eval_split:g} of {data.source}",
                         **(held_cut.counts() if held_cut else {})},
            "training_captions": ({"captions": train_cut.captions, **train_cut.counts()} if train_cut else None),
            "before": before,
            "after": after,
            "base": run["base"],
            "model": str(output),
            "image_tower_unchanged": identity.image_fingerprint == base_identity["image_fingerprint"],
            "identity": identity.to_dict(),
            "train": run["train"],
        }
        _write_records(output, run, evaluation)
    except BaseException as exc:
        progress.finish()
        kept = last_checkpoint(checkpoints)
        restored = False
        if created and kept is None and not saved:
            with interrupts.deferred():  # a second Ctrl-C must not leave the model aside
                shutil.rmtree(output, ignore_errors=True)  # nothing worth resuming from
                if aside.is_dir() and not output.exists():
                    os.rename(aside, output)
                    restored = _finished_model(output)
        if isinstance(exc, KeyboardInterrupt) and saved:
            _tell(_unevaluated(output, opts.overwrite))
        elif isinstance(exc, KeyboardInterrupt):
            _tell_interrupted(output, kept, removed=created and kept is None, restored=restored,
                              overwrite=opts.overwrite)
            if kept is None:  # the CLI's last line must not say that something was kept
                exc.nothing_committed = True  # type: ignore[attr-defined]
        elif isinstance(exc, WriteFailed) and saved:
            raise ClipsearchError(f"fine-tune stopped: {exc.reason} while writing {exc.folder}; "
                                  + _unevaluated(output, opts.overwrite)) from None
        elif isinstance(exc, WriteFailed):
            raise ClipsearchError(_write_failed(output, exc, kept, removed=created and kept is None,
                                                restored=restored, overwrite=opts.overwrite)) from None
        elif isinstance(exc, Diverged):
            raise ClipsearchError(_diverged(output, exc, kept, removed=created and kept is None,
                                            restored=restored)) from None
        elif kept is not None and aside.is_dir():
            _tell(f"the model this run replaces is kept in {aside} until it finishes")
        raise
    if not opts.keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)  # the replaced model, now that this one is whole
    return evaluation


def _save_model(st, output: Path) -> None:
    """The trained model into OUTPUT, its files readable as the umask says. A failed
    write (a full disk) is a WriteFailed: the last checkpoint stays for --resume."""
    with writing(str(output)):
        st.save(str(output), create_model_card=False)
        follow_umask(str(output))


def _record_saved(output: Path, run: dict) -> None:
    """The run file says the model is whole, before the evaluation after training: the
    folder loads as a model from here on (ingest, search, eval), and a run stopped now
    tells the truth about it; --resume then only evaluates and writes the records."""
    run["status"] = SAVED
    with writing(str(output / RUN_FILE)):
        _write_json(output / RUN_FILE, run)


def _unevaluated(output: Path, overwrite: bool) -> str:
    """What a run stopped after saving its model has left: a whole model without its records."""
    return (f"fine-tune stopped after its model was saved: {output} holds the whole trained model, which ingest, "
            f"search and eval load; its evaluation after training ({EVAL_FILE}, README.md) is missing: "
            f"{_resume_hint(overwrite)} to write it")


def _resume_hint(overwrite: bool) -> str:
    """--resume continues a run, --overwrite starts one: the two cannot be given together,
    so a run made with --overwrite resumes with --resume in its place."""
    return ("run it again with --resume instead of --overwrite" if overwrite
            else "run the same command with --resume")


def _write_records(output: Path, run: dict, evaluation: dict) -> None:
    """eval.json, the model card, then the run file saying the model is done: before the
    checkpoints go, so that until the model is recorded whole the last checkpoint is
    there for --resume."""
    with writing(str(output / EVAL_FILE)):
        _write_json(output / EVAL_FILE, evaluation)
    card = model_card.render(run, evaluation)
    with writing(str(output / "README.md")):
        (output / "README.md").write_text(card, encoding="utf-8")
    run["status"] = DONE
    with writing(str(output / RUN_FILE)):
        _write_json(output / RUN_FILE, run)


def _write_failed(output: Path, failed: WriteFailed, kept: str | None, removed: bool, restored: bool,
                  overwrite: bool = False) -> str:
    """One line: what could not be written and why, and what is kept: the last whole
    checkpoint, which --resume continues from once there is room, or nothing."""
    what = f"fine-tune stopped: {failed.reason} while writing {failed.folder}"
    room = "free space, then " if failed.reason == os.strerror(errno.ENOSPC).lower() else ""
    if kept:
        aside = _aside(output)
        also = f"; the model it replaces waits in {aside} until it finishes" if aside.is_dir() else ""
        return (f"{what}; its last whole checkpoint, {kept}, is kept: {room}{_resume_hint(overwrite)} "
                f"to continue from it{also}")
    if restored:
        return f"{what}, its first checkpoint: nothing to resume from; {output} holds the model it had before"
    if removed:
        return (f"{what}, its first checkpoint: nothing to resume from, so {output}, which this run made, "
                f"is removed; {room}run the command again")
    return f"{what}, its first checkpoint: {room}--resume starts the training in {output} again"


def _diverged(output: Path, diverged: Diverged, kept: str | None, removed: bool, restored: bool) -> str:
    """One line: where the run diverged and why, that no model was saved, and what is
    kept: the last checkpoint written before it (a model folder), or the old model."""
    what = f"fine-tune stopped: {diverged}; no model was saved"
    if kept:
        aside = _aside(output)
        also = f"; the model it replaces waits in {aside}" if aside.is_dir() else ""
        # Not "--overwrite": it removes OUTPUT, this checkpoint with it.
        return (f"{what}; its last good checkpoint, {kept}, is kept (a model folder): copy it out of {output} "
                f"and give the copy to --base, since --overwrite of {output} removes it{also}")
    if restored:
        return f"{what}; {output} holds the model it had before"
    if removed:
        return f"{what}; {output}, which this run made, is removed"
    return what


def _finished_model(folder: Path) -> bool:
    """A model folder ingest and search can load (either layout): not a fine-tune still
    under way."""
    if not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
        return False
    # No run file: made elsewhere. SAVED: whole, only its records missing.
    return not (folder / RUN_FILE).is_file() or _run_status(folder) in (DONE, SAVED)


def _same_path(a: str, b: Path) -> bool:
    return Path(a).expanduser().resolve() == b


def _aside(output: Path) -> Path:
    """Where the model --overwrite replaces waits until the new one is whole: beside it,
    hidden, on the same file system (a rename, not a copy)."""
    return output.with_name(f".{output.name}.replaced")


def _write_reports(data: PairSet, held_set: PairSet | None, path: Path) -> None:
    problems = data.problems + (held_set.problems if held_set else [])
    if problems:
        try:
            PairSet(data.source, data.format, [], problems).write_report(path)
        except OSError as exc:
            raise ClipsearchError(f"--report {path} cannot be written: {exc.strerror or exc}") from None


def _tell(text: str) -> None:
    """A line on stderr that --quiet does not silence: it says what happened to the data
    or the output, not how far the run has got."""
    print(text, file=sys.stderr, flush=True)


def _check_captions(encoder, pairs: list, templates: list[str] | None, label: str) -> CutCaptions | None:
    """Count the captions of `pairs` the model cuts, and say so in a line where some are."""
    if not pairs:
        return None
    cut = check_model_captions(encoder.st, texts_of(pairs, templates), encoder.clip)
    if cut and cut.line():
        _tell(f"{label}: {cut.line()}")
    return cut


def _tell_left_out(data: PairSet, held_set: PairSet | None, report: Path) -> None:
    sets = [data, held_set] if held_set else [data]
    left_out = sum(len(s.problems) for s in sets)
    if left_out:
        rows = sum(len(s.problems) + len(s.pairs) for s in sets)
        _tell(f"left out {left_out} of {rows} rows with bad images or fields; see {report}")


def _tell_interrupted(output: Path, kept: str | None, removed: bool, restored: bool = False,
                      overwrite: bool = False) -> None:
    if kept:
        aside = _aside(output)
        also = f" (the model it replaces waits in {aside} until it finishes)" if aside.is_dir() else ""
        _tell(f"fine-tune stopped; its last checkpoint, {kept}, is kept: {_resume_hint(overwrite)} "
              f"to continue from it{also}")
    elif restored:
        _tell(f"fine-tune stopped before its first checkpoint: nothing to resume from; {output} holds "
              "the model it had before")
    elif removed:
        _tell(f"fine-tune stopped before its first checkpoint: nothing was committed, so there is nothing to "
              f"resume from, and {output}, which this run made, is removed")
    else:
        _tell(f"fine-tune stopped before its first checkpoint: --resume starts the training in {output} again")


def _write_json(path: Path, value: dict) -> None:
    """Whole or not at all (a temporary file renamed over it); \\u escapes only where a
    path is not UTF-8 text."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=2)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
