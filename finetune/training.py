"""Train a CLIP on image/caption pairs with sentence-transformers' trainer.

The loss is CLIP's: a symmetric InfoNCE over the batch, text->image and
image->text, each a softmax over the other side's in-batch items, averaged.
sentence-transformers' MultipleNegativesRankingLoss computes exactly that with
`directions=("query_to_doc", "doc_to_query")` and `partition_mode="per_direction"`
(by default it is one-directional). Its `scale` multiplies the cosine similarities
(scale = 1 / temperature); its default of 20 is not CLIP's, so the default here
is the base model's own learned logit scale: 100 for OpenAI's CLIPs, 1/0.07 for a
freshly initialised one.

The columns are (image, text[, negative]): the image is the loss's anchor and
the caption its positive, so that a hard negative caption joins the image->text
softmax as one more candidate caption for its own image (the loss puts the
columns after the anchor on the candidate side of query_to_doc; doc_to_query,
text->image, compares each positive caption with the batch's images only). With
the two directions averaged per direction, which column is the anchor does not
change the loss of plain pairs: it is the same two softmaxes over the same matrix.

Rows hold image paths; the collator decodes a batch's images when it is built,
so memory holds one batch of pixels, not the dataset. The no-duplicates batch
sampler keeps an image or a caption from appearing twice in one batch, where the
second copy would be a false negative. It does not look at negatives: a hard
negative is often another row's caption, and meeting it in the same batch is no
false negative (it only weighs twice in its image's softmax).

A labelled folder's rows hold their label as text. The sampler then keeps two
images of one class out of one batch (each would be the other's false negative):
a batch holds at most one image per class, so the batch size is capped at the
number of classes. The collator turns each label into a caption with one of the
templates, drawn per image per step, rather than a row per template: rows of the
same image with two templates could share a batch as each other's negatives.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MultipleNegativesRankingLoss,
)
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clipsearch.encoders.cache import is_out_of_space, reason_of
from clipsearch.encoders.torch_clip import IMAGE_PREFIXES, TEXT_PREFIXES
from clipsearch.errors import ClipsearchError
from clipsearch.names import is_text, name_bytes
from clipsearch.progress import Progress, format_duration, stderr_line

from . import interrupts
from .images import load_rgb
from .templates import caption
from .validation import Pair

# Anchor first, then candidates: see the module's docstring for why the image is the anchor.
IMAGE_COLUMN, TEXT_COLUMN, NEGATIVE_COLUMN = "image", "text", "negative"
FREEZE_CHOICES = ("none", "vision", "text")


@dataclass
class TrainSettings:
    epochs: float = 5
    batch_size: int = 32
    lr: float = 1e-5
    seed: int = 0
    scale: float | None = None  # None: the base model's logit scale
    freeze: str = "none"
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.1
    save_steps: int | None = None  # None: a checkpoint at the end of every epoch
    device: str = "auto"
    workers: int = 0
    # Gradient caching (GradCache): the batch's embeddings are computed mini_batch_size
    # at a time without activations, the loss over the whole batch, then each mini
    # batch again with gradients. Memory of mini_batch_size, negatives of batch_size.
    mini_batch_size: int | None = None
    max_megapixels: float | None = None  # None: the setting's value (CLIPSEARCH_MAX_MEGAPIXELS)
    # Set when training on a labelled folder: the pairs' texts are labels, captioned by these.
    templates: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more TrainingArguments, for experiments


def model_scale(clip) -> float:
    """The base model's learned temperature as a similarity scale (CLIP clamps it at 100)."""
    scale = getattr(clip, "logit_scale", None)
    return float(min(100.0, math.exp(float(scale.detach())))) if scale is not None else 100.0


def clip_loss(st, scale: float, mini_batch_size: int | None = None) -> MultipleNegativesRankingLoss:
    """CLIP's symmetric InfoNCE; with `mini_batch_size`, the same loss with cached
    gradients (sentence-transformers' CachedMultipleNegativesRankingLoss): equal loss
    and gradients, in the memory of a mini batch."""
    symmetric = dict(scale=scale, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    if mini_batch_size:
        return CachedMultipleNegativesRankingLoss(st, mini_batch_size=mini_batch_size, **symmetric)
    return MultipleNegativesRankingLoss(st, **symmetric)


def freeze_tower(clip, which: str) -> int:
    """Stop gradients into one tower; returns how many parameters stay trainable."""
    if which not in FREEZE_CHOICES:
        raise ClipsearchError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {which!r}")
    prefixes = {"vision": IMAGE_PREFIXES, "text": TEXT_PREFIXES}.get(which, ())
    trainable = 0
    for name, param in clip.named_parameters():
        if name == "logit_scale":  # fixed: the loss uses its own scale
            param.requires_grad_(False)
        elif prefixes and name.startswith(prefixes):
            param.requires_grad_(False)
        if param.requires_grad:
            trainable += param.numel()
    return trainable


@dataclass
class ImagePathCollator(SentenceTransformerDataCollator):
    """Decodes the image column's paths, one batch at a time, then tokenizes and
    preprocesses as sentence-transformers does."""

    image_size: int = 224
    max_megapixels: float | None = None
    templates: list[str] | None = None  # a labelled folder's: the text column holds labels
    seed: int = 0
    _rng: random.Random | None = field(default=None, init=False, repr=False)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        _hand_batches_over_as_files()
        features = [{key: self._value(key, value) for key, value in row.items()} for row in features]
        return super().__call__(features)

    def _value(self, key: str, value: Any) -> Any:
        if key == IMAGE_COLUMN:
            return load_rgb(image_path(value), self.image_size, self.max_megapixels)
        if key == TEXT_COLUMN and self.templates:
            return caption(self._pick(), value)
        return value

    def _pick(self) -> str:
        assert self.templates
        if len(self.templates) == 1:
            return self.templates[0]
        if self._rng is None:
            # A DataLoader worker has its own seed, drawn anew each epoch: its draws differ
            # from the other workers' and from the last epoch's.
            import torch.utils.data

            worker = torch.utils.data.get_worker_info()
            self._rng = random.Random(worker.seed if worker else self.seed)
        return self._rng.choice(self.templates)


def _hand_batches_over_as_files() -> None:
    """In a DataLoader worker, hand the batch's tensors to the training process as named
    shared-memory files (torch's "file_system" strategy) rather than as file descriptors.
    A descriptor is fetched from the worker over a socket; Ctrl-C landing in that
    exchange left the worker printing multiprocessing's traceback (BrokenPipeError,
    ConnectionResetError) under the stop message. Each worker's torch_shm_manager (in a
    session of its own, so Ctrl-C leaves it be) removes the files once both processes
    have let go of them; a batch dropped by an interrupt goes when the training process
    ends. The training process keeps its own strategy: a received tensor carries how to
    open it."""
    import torch.multiprocessing
    import torch.utils.data

    if torch.utils.data.get_worker_info() is not None and torch.multiprocessing.get_sharing_strategy() != "file_system":
        torch.multiprocessing.set_sharing_strategy("file_system")


# The dataset's image column is Arrow text, which must be UTF-8: a file name that is not
# (its bytes held as lone surrogates) goes in as NUL, which no path holds, and its bytes
# in hex. The key still identifies the image, for the no-duplicates sampler.
_BYTES_KEY = "\x00"


def image_key(path: str) -> str:
    return path if is_text(path) else _BYTES_KEY + name_bytes(path).hex()


def image_path(key: str) -> str:
    return os.fsdecode(bytes.fromhex(key[1:])) if key.startswith(_BYTES_KEY) else key


class _ProgressCallback(TrainerCallback):
    def __init__(self, progress: Progress):
        self.progress = progress
        self.loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        done, total = state.global_step, state.max_steps
        elapsed = self.progress.elapsed()
        eta = format_duration(elapsed / max(1, done - self._first) * (total - done)) if done > self._first else "?"
        loss = f"  loss {self.loss:.4f}" if self.loss is not None else ""
        saved = f"  checkpoint {self.saved}" if self.saved else ""
        self.progress.update(f"training: epoch {state.epoch or 0:.2f}/{args.num_train_epochs:g}  "
                             f"step {done}/{total}{loss}{saved}  ETA {eta}", force=done == total)

    def on_train_begin(self, args, state, control, **kwargs):
        self._first = state.global_step  # a resumed run starts part-way
        self.saved = None

    def on_save(self, args, state, control, **kwargs):
        self.saved = state.global_step


class _NoLoneRowSampler(NoDuplicatesBatchSampler):
    """Without batches of one row. A lone pair is its own only candidate: the contrastive
    loss is 0 and teaches nothing, yet AdamW still steps (its momentum and the weight
    decay move the weights). An epoch's last batch is one when the pairs number one more
    than a multiple of the batch size: that pair joins another batch it shares no image
    or caption with (one pair over --batch-size), so that nothing is left out. Leftover
    rows of a caption (a class, an image) that every batch already holds stay alone, and
    are left out."""

    _counting = False
    _drawn: tuple[int, list[list[int]]] | None = None  # (epoch, its batches), lone rows included

    def __iter__(self):
        return iter([batch for batch in self._batches() if len(batch) > 1])

    def _batches(self) -> list[list[int]]:
        """This epoch's batches, drawn whole once: counted by len() and then trained
        from, the same list (the parent seeds each epoch's shuffle from seed + epoch)."""
        epoch = getattr(self, "epoch", 0)
        if self._drawn is None or self._drawn[0] != epoch:
            self._counting = True  # the parent's pass asks len(self): its own, meanwhile
            try:
                self._drawn = (epoch, self._fold_lone_rows([list(batch) for batch in super().__iter__()]))
            finally:
                self._counting = False
        return self._drawn[1]

    def _fold_lone_rows(self, batches: list[list[int]]) -> list[list[int]]:
        """Each batch of one row joins the smallest other batch that holds none of its
        values (the parent's test: no value of any column twice in a batch)."""
        if not any(len(batch) == 1 for batch in batches):
            return batches
        columns = [list(self.dataset[name]) for name in self.dataset.column_names]  # one read each, not a row

        def values(row: int) -> set[str]:
            return {str(column[row]) for column in columns}

        holding: dict[str, set[int]] = {}  # a value: the batches (by position) that hold it
        for at, batch in enumerate(batches):
            if len(batch) > 1:
                for row in batch:
                    for value in values(row):
                        holding.setdefault(value, set()).add(at)
        full = sum(1 for batch in batches if len(batch) > 1)
        for batch in batches:
            if len(batch) != 1:
                continue
            mine = values(batch[0])
            taken = [holding.get(value, set()) for value in mine]
            if any(len(held) == full for held in taken):
                continue  # a caption (class, image) every batch holds: the common case, told fast
            clash = set().union(*taken)
            fits = [other for other in range(len(batches)) if len(batches[other]) > 1 and other not in clash]
            if fits:
                into = min(fits, key=lambda other: len(batches[other]))
                batches[into].append(batch.pop())
                for value in mine:
                    holding.setdefault(value, set()).add(into)
        return [batch for batch in batches if batch]

    def __len__(self) -> int:
        """The steps this epoch takes: its batches of two rows or more. The trainer asks
        once, for the first epoch, and spans its schedule over that many a epoch; later
        epochs' shuffles may make a batch more or fewer."""
        if self.drop_last or self._counting:
            return super().__len__()
        return sum(1 for batch in self._batches() if len(batch) > 1)

    def lone_rows(self) -> list[int]:
        """The rows this epoch leaves out: each was alone in its batch."""
        return [] if self.drop_last else [batch[0] for batch in self._batches() if len(batch) == 1]


class Diverged(ClipsearchError):
    """The loss or the weights stopped being finite numbers: the run diverged, and every
    step from here on would train NaN. Nothing is saved past this point."""

    def __init__(self, step: int, what: str, cause: str):
        super().__init__(f"training diverged at step {step}: {what}; {cause}")
        self.step = step


NON_FINITE_WEIGHTS = "some weights are no longer finite numbers (NaN or infinity)"


def likely_cause(settings: TrainSettings, scale: float) -> str:
    """The flags that make a run diverge, with the values this one was given."""
    return (f"the learning rate is likely too high (--lr {settings.lr:g}; also --scale {scale:g}, "
            f"--weight-decay {settings.weight_decay:g}): run again with a lower --lr")


def weights_are_finite(model) -> bool:
    import torch

    return all(bool(torch.isfinite(param).all()) for param in model.parameters())


class _Trainer(SentenceTransformerTrainer):
    # Why a diverged run stopped, in its message (train() sets it).
    divergence_cause: str = "the learning rate is likely too high: run again with a lower --lr"

    def add_model_card_callback(self, default_args_dict):
        """No automatic model card: it encodes sample rows as widgets, which a
        mixed text/image dataset cannot do. model_card.py writes ours."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Stop at the first loss that is not a finite number: the weights it came from
        are NaN (or soon will be), and the trainer would go on and save them."""
        import torch

        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise Diverged(self.state.global_step + 1, f"the loss is {float(loss.float().mean())}, not a finite number",
                           self.divergence_cause)
        self._last_batch = inputs
        return loss

    def check_still_finite(self, model) -> None:
        """Diverged when the weights the last step made are broken: NaN or infinite, or huge
        finite numbers whose vectors overflow (the last batch's loss again, which the next
        step would have seen). Before a checkpoint or the model is saved, not after."""
        import torch

        step = int(self.state.global_step)
        if not weights_are_finite(model):
            raise Diverged(step, NON_FINITE_WEIGHTS, self.divergence_cause)
        batch = getattr(self, "_last_batch", None)
        if batch is None:
            return
        with torch.no_grad():
            loss = self.compute_loss(model, dict(batch))
        if not bool(torch.isfinite(loss).all()):
            raise Diverged(step, f"the loss after its update is {float(loss.float().mean())}, not a finite number",
                           self.divergence_cause)

    def _save_checkpoint(self, model, trial):
        """Whole or not at all: Ctrl-C waits until the checkpoint is written (interrupts.py),
        and one that fails half-way (a full disk) is removed, so that --resume never takes
        it and its space goes back to the disk."""
        self.check_still_finite(model)  # the last checkpoint kept is one of finite weights
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        def remove_half_written() -> None:
            if not is_whole_checkpoint(folder):
                shutil.rmtree(folder, ignore_errors=True)

        with interrupts.deferred(), writing(folder, undo=remove_half_written):
            super()._save_checkpoint(model, trial)

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        """No duplicates among images and captions; negatives are left out of the check
        (the module's docstring says why). The sampler yields row numbers, which are the
        same with or without the column."""
        if NEGATIVE_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns([NEGATIVE_COLUMN])
        return _NoLoneRowSampler(dataset, batch_size=batch_size, drop_last=drop_last,
                                 valid_label_columns=valid_label_columns, generator=generator, seed=seed)

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        self.model.save_pretrained(output_dir, create_model_card=False)
        follow_umask(output_dir)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def oom_error(batch_size: int) -> ClipsearchError:
    return ClipsearchError(
        f"out of memory at --batch-size {batch_size}; lower --batch-size (try {max(1, batch_size // 2)})"
    )


def _one_line(exc: ClipsearchError) -> ClipsearchError:
    """A ClipsearchError raised in a DataLoader worker (an image that changed after the
    rows were checked) comes back with the worker's traceback in its message: keep the
    original message, its last line."""
    lines = str(exc).strip().splitlines()
    if len(lines) <= 1:
        return exc
    return ClipsearchError(lines[-1].split("ClipsearchError: ", 1)[-1])


class WriteFailed(ClipsearchError):
    """A checkpoint or the model could not be written (a full disk, most often); what was
    half written of a checkpoint is removed. `folder` is what was being written."""

    def __init__(self, folder: str, reason: str):
        super().__init__(f"{folder} could not be written: {reason}")
        self.folder, self.reason = folder, reason


def write_failure(exc: BaseException, folder: str) -> WriteFailed | None:
    """`exc` raised while writing `folder`, as a WriteFailed naming why, or None when it is
    not a write's failure. A full disk wears many names: OSError ENOSPC, safetensors'
    "No space left on device (os error 28)", torch.save's "[enforce fail at
    inline_container.cc] ... unexpected pos" (no errno at all), hence also the space left."""
    from safetensors import SafetensorError

    near = folder if os.path.isdir(folder) else os.path.dirname(folder)
    if is_out_of_space(exc, where=near if os.path.isdir(near) else None):
        return WriteFailed(folder, os.strerror(errno.ENOSPC).lower())
    if isinstance(exc, (OSError, SafetensorError)) or "inline_container" in str(exc):
        return WriteFailed(folder, reason_of(exc))
    return None


@contextmanager
def writing(folder: str, undo: Callable[[], None] | None = None) -> Iterator[None]:
    """A failed write of `folder` (a file, or a folder being written) inside, a full disk
    most often, raised as a WriteFailed naming why; other errors as they are. `undo` runs
    before it is raised, once the failure is judged: the space left tells a full disk."""
    try:
        yield
    except Exception as exc:
        failure = write_failure(exc, folder)
        if failure is None:
            raise
        if undo is not None:
            undo()
        raise failure from exc


def follow_umask(folder: str) -> None:
    """safetensors (0.8) writes its files mode 0600, through a temporary file: a serve or
    Docker process running as another user could not read the model. Give them the
    mode every other file of the folder gets, the umask's."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".safetensors"):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)


def is_whole_checkpoint(folder: str) -> bool:
    """The trainer writes trainer_state.json last: a checkpoint is whole once that file is
    (a disk that filled while writing it leaves it cut short, which is no JSON)."""
    try:
        with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(checkpoint_dir: str) -> str | None:
    if not os.path.isdir(checkpoint_dir):
        return None
    steps = [int(n.split("-")[1]) for n in os.listdir(checkpoint_dir)
             if n.startswith("checkpoint-") and n.split("-")[1].isdigit()
             and is_whole_checkpoint(os.path.join(checkpoint_dir, n))]
    return os.path.join(checkpoint_dir, f"checkpoint-{max(steps)}") if steps else None


def _steps_per_epoch(pairs: list[Pair], batch_size: int, settings: TrainSettings) -> tuple[int, int]:
    """(the batches an epoch makes, as the trainer's sampler will (same rows, same seed),
    the pairs it leaves out), and a warning when it leaves some out, --quiet or not (a
    nightly run's pairs are lost too): a batch holds each caption (each class) once, so
    the rows of a caption more common than the batches can hold end up alone."""
    import torch

    rows = training_rows(pairs)
    if NEGATIVE_COLUMN in rows.column_names:
        rows = rows.remove_columns([NEGATIVE_COLUMN])
    probe = _NoLoneRowSampler(rows, batch_size=batch_size, drop_last=False, valid_label_columns=None,
                              generator=torch.Generator(), seed=settings.seed)
    steps, lone = len(probe), probe.lone_rows()
    if not lone:
        return steps, 0
    # What crowds them out: a caption (a class) or an image on more pairs than there are
    # batches, which every batch already holds (a lone remainder pair joins another batch).
    texts, images = Counter(p.text for p in pairs), Counter(p.image for p in pairs)
    text = max((pairs[i].text for i in lone), key=texts.__getitem__)
    image = max((pairs[i].image for i in lone), key=images.__getitem__)
    by_image = sum(1 for i in lone if pairs[i].image == image)
    if images[image] > texts[text]:
        what = f"{by_image} of them show the image {image_key(image)!r}"
    elif settings.templates:
        what = f"the class {text!r} has more images than the batches of an epoch"
    else:
        what = f"the caption {text!r} is on more pairs than the batches of an epoch"
    if steps == 0:
        raise ClipsearchError(f"no batch of two pairs with different images and captions can be made from the "
                              f"{len(pairs)} training pairs: {what}")
    stderr_line(f"{len(lone)} of {len(pairs)} training pairs are left out of the first epoch (later ones "
                f"alike): a batch holds each image and each {'class' if settings.templates else 'caption'} "
                f"once, and {what} (give images captions of their own, balance the classes, or lower "
                "--batch-size)")
    return steps, len(lone)


def training_rows(pairs: list[Pair]):
    """The trainer's dataset: (image, text) columns, and negative where the pairs have one.
    Validation let through only data whose rows all have one or none."""
    from datasets import Dataset

    columns = {IMAGE_COLUMN: [image_key(p.image) for p in pairs], TEXT_COLUMN: [p.text for p in pairs]}
    if any(p.negative is not None for p in pairs):
        columns[NEGATIVE_COLUMN] = [p.negative or "" for p in pairs]
    return Dataset.from_dict(columns)


def check_trainable(pairs: list[Pair], settings: TrainSettings, split: bool = True) -> None:
    """A one-line error, before anything is written, for training pairs that cannot teach
    anything: each pair is contrasted with the others in its batch, and equal captions
    never share one (the no-duplicates sampler), so one pair, or one caption for all,
    trains with a loss of 0 (a labelled folder's classes: _batch_size). `split`: some of
    DATA was held out, which a lower --eval-split gives back to training."""
    if settings.templates:
        return
    captions = len({p.text for p in pairs})
    if captions < 2:
        raise ClipsearchError(f"the training pairs ({len(pairs)}) hold {captions} distinct caption"
                              f"{'s' if captions != 1 else ''}: training contrasts each pair with others of "
                              "another caption and needs two or more; add pairs"
                              + (", or lower --eval-split" if split else ""))


def _batch_size(pairs: list[Pair], settings: TrainSettings, progress: Progress) -> int:
    """--batch-size, or for a labelled folder the number of classes where that is smaller:
    the no-duplicates sampler puts at most one image of a class in a batch."""
    if not settings.templates:
        check_trainable(pairs, settings)
        captions = len({p.text for p in pairs})
        if captions < settings.batch_size:
            progress.message(f"batches of {captions} pairs at most: the training pairs hold {captions} distinct "
                             "captions, and a batch holds each caption once (equal captions would be each other's "
                             "false negatives)")
        return settings.batch_size
    classes = len({p.text for p in pairs})
    if classes < 2:
        raise ClipsearchError(f"the training images hold {classes} class: training compares classes and needs two "
                              "or more; add images to the other classes or lower --eval-split")
    if classes < settings.batch_size:
        progress.message(f"batch size {classes}: the training images hold {classes} classes, and a batch holds one "
                         "image of each at most (two of one class would be each other's false negatives)")
    return min(settings.batch_size, classes)


def train(st, clip, pairs: list[Pair], settings: TrainSettings, checkpoint_dir: str, resume: bool,
          progress: Progress) -> dict:
    """Train `st` in place. Returns facts about the run (seconds, steps, final loss)."""
    scale = settings.scale if settings.scale is not None else model_scale(clip)
    freeze_tower(clip, settings.freeze)
    batch_size = _batch_size(pairs, settings, progress)
    steps_per_epoch, left_out = _steps_per_epoch(pairs, batch_size, settings)
    # --warmup is a fraction of the run; transformers reads a warmup_steps of 1 or more as
    # a count of steps (--warmup 1 would warm up for one step). Rounded down: a run of
    # one step is not spent at a learning rate of 0.
    warmup_steps = int(settings.warmup * steps_per_epoch * settings.epochs)
    args = SentenceTransformerTrainingArguments(
        output_dir=checkpoint_dir,
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=settings.lr,
        warmup_steps=warmup_steps,
        weight_decay=settings.weight_decay,
        lr_scheduler_type="cosine",
        seed=settings.seed,
        data_seed=settings.seed,
        batch_sampler="no_duplicates",  # with negatives left out: _Trainer.get_batch_sampler
        save_strategy="steps",
        save_steps=settings.save_steps or steps_per_epoch,
        save_total_limit=2,
        logging_steps=max(1, min(10, steps_per_epoch)),
        report_to="none",
        # A non-finite loss stops the run (_Trainer.training_step), rather than being
        # logged as the average of earlier ones.
        logging_nan_inf_filter=False,
        disable_tqdm=True,
        log_level="error",
        use_cpu=settings.device == "cpu",
        dataloader_num_workers=settings.workers,
        # Pinned memory helps only a copy to a GPU; on CPU torch warns about it every epoch.
        dataloader_pin_memory=settings.device != "cpu" and _has_accelerator(),
        **settings.extra,
    )
    image_size = int(clip.config.vision_config.image_size)
    collator = ImagePathCollator(preprocess_fn=st.preprocess, image_size=image_size,
                                 max_megapixels=settings.max_megapixels, templates=settings.templates,
                                 seed=settings.seed)
    trainer = _Trainer(model=st, args=args, train_dataset=training_rows(pairs),
                       loss=clip_loss(st, scale, settings.mini_batch_size),
                       data_collator=collator)
    trainer.divergence_cause = likely_cause(settings, scale)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    callback = _ProgressCallback(progress)
    trainer.add_callback(callback)
    checkpoint = last_checkpoint(checkpoint_dir) if resume else None
    if resume and checkpoint:
        progress.message(f"resuming from {checkpoint}")
    started = time.monotonic()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except (RuntimeError, MemoryError) as exc:
        if _out_of_memory(exc):
            raise oom_error(batch_size) from None
        raise
    except ClipsearchError as exc:
        raise _one_line(exc) from None
    trainer.check_still_finite(st)  # the last step's update, after its finite loss
    progress.finish()
    return {
        "seconds": round(time.monotonic() - started, 2),
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "final_loss": callback.loss,
        "scale": scale,
        # What a batch holds at most: no caption (class) and no image twice in one.
        "batch_size": min(batch_size, len({p.text for p in pairs}), len({p.image for p in pairs})),
        "batch_size_asked": settings.batch_size,
        # Pairs no batch of an epoch holds (_steps_per_epoch): said on stderr, and here.
        "pairs_left_out": left_out,
        "negatives": any(p.negative is not None for p in pairs),
        "resumed_from": os.path.basename(checkpoint) if checkpoint else None,
    }


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
