"""Text -> image retrieval quality: recall@1/5/10 and MRR over a set of pairs; for a
labelled folder, zero-shot classification accuracy too.

Each distinct caption is a query; the corpus is every distinct image of the set;
an image is relevant to a query when some pair joins them (several images may
share a caption, and one image may have several captions). A query's rank is the
position of its best-ranked relevant image. Exact score ties, which only a
degenerate model produces, count as broken at random (the expected rank), so a
model that gives every image the same vector scores chance, not a lucky 1.0.

A labelled folder's pairs hold labels: each label with each template is a caption,
a query of its own for recall@k, relevant to every image of its class. Zero-shot
classification (accuracy@1, accuracy@5) then sorts each image among all the labels
of the label set, scoring a label as CLIP does: the mean of its templates' caption
vectors, normalized again, against the image's vector. Ties count as for recall.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from clipsearch.encoders.vectors import require_finite

from .images import load_rgb
from .templates import caption
from .validation import Pair

KS = (1, 5, 10)
METRICS = tuple(f"recall@{k}" for k in KS) + ("mrr",)
ACCURACY_KS = (1, 5)
ACCURACY_METRICS = tuple(f"accuracy@{k}" for k in ACCURACY_KS)  # zero-shot classification, labelled folders only


def ranks_of_first_relevant(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """scores, relevant: (queries, images). Returns each query's (expected) rank, from 1.
    A NaN score ranks below every number: compared as it is, it is above nothing and tied
    with nothing, which would put every relevant image first."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    masked_relevant = np.where(relevant, scores, -np.inf)
    best = masked_relevant.max(axis=1, keepdims=True)
    irrelevant = ~relevant
    above = ((scores > best) & irrelevant).sum(axis=1)
    tied = ((scores == best) & irrelevant).sum(axis=1)
    tied_relevant = ((scores == best) & relevant).sum(axis=1)
    return 1.0 + above + tied / (tied_relevant + 1.0)


def retrieval_metrics(text_vectors: np.ndarray, image_vectors: np.ndarray, relevant: np.ndarray) -> dict:
    ranks = np.concatenate([
        ranks_of_first_relevant(text_vectors[i:i + 1024] @ image_vectors.T, relevant[i:i + 1024])
        for i in range(0, len(text_vectors), 1024)
    ])
    metrics = {f"recall@{k}": float(np.mean(ranks <= k)) for k in KS}
    metrics["mrr"] = float(np.mean(1.0 / ranks))
    metrics["queries"] = int(relevant.shape[0])
    metrics["images"] = int(relevant.shape[1])
    # What a random ranking scores at recall@1: the share of relevant images, per query.
    metrics["chance_recall@1"] = float(np.mean(relevant.sum(axis=1) / relevant.shape[1]))
    return metrics


def classification_metrics(caption_vectors: np.ndarray, image_vectors: np.ndarray, truth: np.ndarray) -> dict:
    """caption_vectors: (labels, templates, dim), normalized; truth: each image's label
    index. Top-1 and top-5 accuracy over the labels, and what chance scores."""
    classes = caption_vectors.mean(axis=1)
    classes /= np.maximum(np.linalg.norm(classes, axis=1, keepdims=True), 1e-12)
    scores = image_vectors @ classes.T
    relevant = np.zeros(scores.shape, dtype=bool)
    relevant[np.arange(len(truth)), truth] = True
    ranks = ranks_of_first_relevant(scores, relevant)
    metrics = {f"accuracy@{k}": float(np.mean(ranks <= k)) for k in ACCURACY_KS}
    metrics["classes"] = int(len(classes))
    metrics["chance_accuracy@1"] = 1.0 / len(classes)
    return metrics


def _encode_images(st, paths: Sequence[str], image_size: int, batch_size: int,
                   on_batch: Callable[[int], None] | None, max_megapixels: float | None = None) -> np.ndarray:
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [load_rgb(p, image_size, max_megapixels) for p in paths[start:start + batch_size]]
        chunks.append(st.encode(images, batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False))
        if on_batch:
            on_batch(min(start + batch_size, len(paths)))
    return np.concatenate(chunks).astype(np.float32)


def evaluate(st, pairs: list[Pair], image_size: int = 224, batch_size: int = 64,
             on_batch: Callable[[int], None] | None = None, max_megapixels: float | None = None,
             labels: Sequence[str] | None = None, templates: Sequence[str] | None = None,
             model: str = "in use") -> dict:
    """Metrics of the SentenceTransformer `st` on `pairs` (text -> image). With `templates`,
    the pairs' texts are labels: captions are made of them, and zero-shot classification
    among `labels` (the whole label set; default: the pairs' own) is measured too. `model`
    names it in the error for vectors that are not finite numbers (broken weights)."""
    import torch

    images = sorted({p.image for p in pairs})
    image_at = {path: i for i, path in enumerate(images)}
    label_set = sorted(set(labels or ()) | {p.text for p in pairs}) if templates else []
    texts = ([caption(t, label) for label in label_set for t in templates] if templates
             else sorted({p.text for p in pairs}))
    text_at = {text: i for i, text in enumerate(texts)}
    relevant = np.zeros((len(texts), len(images)), dtype=bool)
    for p in pairs:
        for text in ([caption(t, p.text) for t in templates] if templates else [p.text]):
            relevant[text_at[text], image_at[p.image]] = True
    was_training = st.training
    st.eval()
    try:
        with torch.inference_mode():
            image_vectors = _encode_images(st, images, image_size, batch_size, on_batch, max_megapixels)
            text_vectors = st.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False).astype(np.float32)
    finally:
        st.train(was_training)
    require_finite(image_vectors, model, "images")
    require_finite(text_vectors, model, "captions")
    if not templates:
        return retrieval_metrics(text_vectors, image_vectors, relevant)
    # Queries are the captions of the labels the pairs have; the other labels' only compete in classification.
    queried = relevant.any(axis=1)
    metrics = retrieval_metrics(text_vectors[queried], image_vectors, relevant[queried])
    label_at = {label: i for i, label in enumerate(label_set)}
    truth = np.array([label_at[label] for label in _label_of_images(pairs, images)])
    by_label = text_vectors.reshape(len(label_set), len(templates), -1)
    metrics.update(classification_metrics(by_label, image_vectors, truth))
    metrics["templates"] = len(templates)
    return metrics


def _label_of_images(pairs: list[Pair], images: list[str]) -> list[str]:
    """Each image's label, in `images`' order (a labelled folder gives an image one class)."""
    label = {p.image: p.text for p in pairs}
    return [label[image] for image in images]


def format_table(columns: dict[str, dict]) -> str:
    """A small fixed-width table: one row per metric, one column per model state."""
    names = list(columns)
    width = max(8, *(len(n) for n in names))
    lines = [" " * 10 + "".join(f"{n:>{width + 2}}" for n in names)]
    for metric in METRICS:
        lines.append(f"{metric:<10}" + "".join(f"{columns[n][metric]:>{width + 2}.3f}" for n in names))
    first = columns[names[0]]
    classified = all("accuracy@1" in columns[n] for n in names)
    for metric in ACCURACY_METRICS if classified else ():
        lines.append(f"{metric:<10}" + "".join(f"{columns[n][metric]:>{width + 2}.3f}" for n in names))
    lines.append(f"{first['queries']} queries over {first['images']} images; "
                 f"chance recall@1 {first['chance_recall@1']:.3f}")
    blind = [f"recall@{k}" for k in KS if k >= first["images"]]
    if blind:  # every image is in the top k: the row says nothing about the model
        lines.append(f"{' and '.join(blind)} cannot miss among {first['images']} images (1.000 for any model): "
                     f"evaluate on more pairs for {'them' if len(blind) > 1 else 'it'} to mean something "
                     "(finetune: --eval-split, --eval-data; eval: a larger DATA)")
    blind_accuracy = [f"accuracy@{k}" for k in ACCURACY_KS if classified and k >= first["classes"]]
    if blind_accuracy:  # every label is in the top k
        lines.append(f"{' and '.join(blind_accuracy)} cannot miss among {first['classes']} labels (1.000 for any "
                     "model)")
    if classified:
        lines.append(f"zero-shot classification among {first['classes']} labels ({first['templates']} template"
                     f"{'s' if first['templates'] != 1 else ''} each); chance accuracy@1 "
                     f"{first['chance_accuracy@1']:.3f}")
    return "\n".join(lines)
