"""Captions from labels: `--template "a photo of a {label}."`, as CLIP's zero-shot prompts.

A labelled folder's rows hold a label; a template turns it into the caption the text
tower reads. With several templates, training picks one per image per step (the
collator, training.py) and evaluation averages over all of them (evaluation.py).
`{label}` is replaced as text, so other braces in a template are kept as written.
"""

from __future__ import annotations

from typing import Sequence

from clipsearch.errors import ClipsearchError
from clipsearch.names import shown

PLACEHOLDER = "{label}"
DEFAULT_TEMPLATES = ("a photo of a {label}.",)  # CLIP's own prompt for ImageNet


def check_templates(templates: Sequence[str] | None) -> list[str]:
    """The templates to use (the default when none are given); each must hold {label}."""
    chosen = list(templates) if templates else list(DEFAULT_TEMPLATES)
    for template in chosen:
        if PLACEHOLDER not in template:
            raise ClipsearchError(f"--template {template!r} has no {PLACEHOLDER}: write where the label goes, "
                                  f"e.g. \"a photo of a {PLACEHOLDER}.\"")
    return list(dict.fromkeys(chosen))  # a template given twice would weigh twice


def caption(template: str, label: str) -> str:
    return template.replace(PLACEHOLDER, label)


def templates_for(given: Sequence[str], labelled: bool, source: str, fmt: str) -> list[str] | None:
    """The templates where the data is a labelled folder, else None; --template given for
    data with captions of its own is a mistake worth a message, not a silent no-op."""
    if labelled:
        return check_templates(given)
    if given:
        raise ClipsearchError("--template makes captions of a labelled folder's labels (class subfolders of images), "
                              f"but {shown(source)} is {fmt} data with captions of its own")
    return None
