"""Captions longer than the model reads.

CLIP's text tower has a fixed number of positions (77 for OpenAI's CLIPs), and a
longer caption is cut to its first tokens without a word. Captions that share a
long prefix (a catalogue's boilerplate) then become the same text: one vector for
all of them, which makes evaluation meaningless and turns them into false negatives
of each other in training. This counts both, tokenizing each distinct caption once,
and says it in one line; and it silences transformers' own warning about it, which
speaks of "indexing errors" that truncation prevents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .templates import caption

# transformers' key for "Token indices sequence length is longer than the specified
# maximum sequence length ...": set, the tokenizer takes that warning as already given.
TOO_LONG_WARNING = "sequence-length-is-longer-than-the-specified-maximum"
CHUNK = 4096  # captions tokenized per call: bounded memory for 100k captions


@dataclass(frozen=True)
class CutCaptions:
    limit: int  # tokens the model reads, special tokens included
    captions: int  # distinct captions
    cut: int  # of them longer than `limit`
    same_once_cut: int  # of the cut ones, those that become the same tokens as another caption

    def counts(self) -> dict:
        return {"captions_cut": self.cut, "captions_same_once_cut": self.same_once_cut}

    def line(self) -> str | None:
        """The one line to say, or None when no caption is cut."""
        if not self.cut:
            return None
        text = (f"{self.cut} of {self.captions} captions {'is' if self.cut == 1 else 'are'} longer than the "
                f"{self.limit} tokens the model reads and {'is' if self.cut == 1 else 'are'} cut to "
                f"{'its' if self.cut == 1 else 'their'} first {self.limit}")
        if self.same_once_cut:
            text += (f"; {self.same_once_cut} of them become the same caption once cut (they differ only after "
                     "the cut: put what tells them apart first)")
        return text


def quiet_length_warning(tokenizer) -> None:
    """Silence transformers' "Token indices sequence length is longer than ..." (that
    warning only): the model's input is truncated, so no indexing error follows, and
    check_captions says what the truncation costs."""
    warnings = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(warnings, dict):
        warnings[TOO_LONG_WARNING] = True


def tokenizer_of(st):
    """The SentenceTransformer's text tokenizer (a processor's, for CLIP), or None."""
    tokenizer = getattr(st, "tokenizer", None)
    return getattr(tokenizer, "tokenizer", tokenizer)  # a processor holds the tokenizer


def texts_of(pairs: Iterable, templates: Sequence[str] | None = None) -> list[str]:
    """The distinct captions the model reads for `pairs`: their texts, or with
    `templates` (a labelled folder) each label in each template."""
    texts = {p.text for p in pairs}
    if templates:
        return sorted({caption(t, label) for label in texts for t in templates})
    return sorted(texts)


def check_captions(tokenizer, texts: Sequence[str], limit: int) -> CutCaptions:
    """How many of the distinct `texts` the model (reading `limit` tokens) cuts, and how
    many of those become the same token ids as another distinct caption once cut."""
    texts = sorted(set(texts))
    quiet_length_warning(tokenizer)
    lengths: list[int] = []
    kept: dict[tuple[int, ...], int] = {}  # the ids the model reads -> how many captions read as them
    cut_keys: list[tuple[int, ...]] = []
    for start in range(0, len(texts), CHUNK):
        chunk = list(texts[start:start + CHUNK])
        ids = tokenizer(chunk, truncation=False, verbose=False)["input_ids"]
        long = [i for i, one in enumerate(ids) if len(one) > limit]
        if long:  # as the model cuts them (special tokens kept), only for those that need it
            cut = tokenizer([chunk[i] for i in long], truncation=True, max_length=limit, verbose=False)["input_ids"]
            for i, one in zip(long, cut):
                ids[i] = one
                cut_keys.append(tuple(one))
        for one in ids:
            key = tuple(one)
            kept[key] = kept.get(key, 0) + 1
        lengths.append(len(long))
    same = sum(1 for key in cut_keys if kept[key] > 1)
    return CutCaptions(limit=limit, captions=len(texts), cut=sum(lengths), same_once_cut=same)


def model_limit(st, clip=None) -> int | None:
    """Tokens the model reads: its text positions, or what the SentenceTransformer is set to."""
    limits = [getattr(st, "max_seq_length", None)]
    if clip is not None:
        text_config = getattr(clip.config, "text_config", None)
        limits.append(getattr(text_config, "max_position_embeddings", None))
    known = [n for n in limits if isinstance(n, int) and n > 0]
    return min(known) if known else None


def check_model_captions(st, texts: Sequence[str], clip=None) -> CutCaptions | None:
    """check_captions with `st`'s tokenizer and limit; None where it has neither."""
    tokenizer, limit = tokenizer_of(st), model_limit(st, clip)
    if tokenizer is None or limit is None or not callable(tokenizer):
        return None
    return check_captions(tokenizer, texts, limit)
