"""The README.md written beside a fine-tuned model: where it came from, how it was
trained, how well it retrieves (and, trained on a labelled folder, classifies) before
and after, and how to use it."""

from __future__ import annotations

from clipsearch.names import stored

from .evaluation import ACCURACY_METRICS, METRICS


def _metric_rows(before: dict | None, after: dict | None) -> list[str]:
    if not (before and after):
        return ["No held-out evaluation was run (--eval-split 0 and no --eval-data)."]
    rows = ["| metric | before | after |", "|---|---:|---:|"]
    classified = "accuracy@1" in before and "accuracy@1" in after
    rows += [f"| {m} | {before[m]:.3f} | {after[m]:.3f} |" for m in METRICS + (ACCURACY_METRICS if classified else ())]
    rows.append("")
    rows.append(f"Text -> image retrieval over the held-out split: {after['queries']} distinct captions as queries, "
                f"{after['images']} images as the corpus (chance recall@1: {after['chance_recall@1']:.3f}).")
    blind = [m for m in METRICS if m.startswith("recall@") and int(m.split("@")[1]) >= after["images"]]
    if blind:
        rows.append(f"With {after['images']} images, {' and '.join(blind)} cannot miss (1.000 for any model).")
    if classified:
        rows.append(f"Zero-shot classification (accuracy@1, accuracy@5) of the held-out images among "
                    f"{after['classes']} labels, each label's {after['templates']} template caption(s) averaged "
                    f"(chance accuracy@1: {after['chance_accuracy@1']:.3f}).")
    return rows


def _data_lines(run: dict) -> list[str]:
    """What the training data held beyond pairs: classes and templates, hard negatives."""
    data, templates = run["data"], run["settings"].get("templates")
    lines = []
    if data.get("classes") and templates:
        shown = ", ".join(f"`{t}`" for t in templates)
        lines.append(f"- Labelled folder of {data['classes']} classes; captions from the template(s) {shown}, "
                     "one drawn per image per step; at most one image per class in a batch.")
    if data.get("negatives"):
        lines.append("- Hard negatives: each row's negative caption is one more candidate in its image's "
                     "image->text softmax.")
    return lines


def render(run: dict, evaluation: dict) -> str:
    s = run["settings"]
    data = run["data"]
    freeze = s["freeze"]
    compatibility = (
        "The image tower was frozen and is bit-identical to the base model's, so an index built with the base "
        "model stays valid: `clipsearch reindex --model` this folder records it in such a collection without "
        "embedding anything again."
        if freeze == "vision" else
        "The image tower changed, so image vectors differ from the base model's: `clipsearch reindex --model` "
        "this folder embeds a collection's images again with it; clipsearch refuses to mix the two."
    )
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: feature-extraction",
        "tags: [clip, sentence-transformers, text-to-image, clipsearch]",
        f"base_model: {stored(run['base'])}",
        "---",
        "",
        "# Fine-tuned CLIP",
        "",
        f"Fine-tuned by `clipsearch finetune` from `{stored(run['base'])}` on {data['train_pairs']} "
        "image/caption pairs "
        f"({data['train_images']} images) from `{stored(data['source'])}` ({data['format']})"
        + (f"; {run['train']['pairs_left_out']} of them in no batch of an epoch (a caption, class or image on more "
           "pairs than an epoch has batches)." if run["train"].get("pairs_left_out") else "."),
        "",
        "## Retrieval quality",
        "",
        *_metric_rows(evaluation.get("before"), evaluation.get("after")),
        "",
        "## Training",
        "",
        "- Trainer: sentence-transformers `SentenceTransformerTrainer`.",
        "- Loss: CLIP's symmetric contrastive loss (text->image and image->text, in-batch negatives, averaged): "
        f"`{'Cached' if s.get('mini_batch_size') else ''}MultipleNegativesRankingLoss(directions=('query_to_doc', "
        "'doc_to_query'), partition_mode='per_direction')`, "
        f"scale {run['train']['scale']:g} (temperature {1 / run['train']['scale']:.4f}).",
        f"- Epochs {s['epochs']:g}, batch size {_batch_size(run['train'], s)}"
        + (f" (mini-batches of {s['mini_batch_size']})" if s.get("mini_batch_size") else "")
        + f", learning rate {s['lr']:g} (cosine schedule, "
        f"{s['warmup']:g} warm-up), weight decay {s['weight_decay']:g}, seed {s['seed']}.",
        f"- Frozen tower: {freeze}.",
        *_data_lines(run),
        f"- Held out for evaluation: {data['eval_pairs']} pairs ({data['eval_images']} images), "
        + (f"from `{stored(data['eval_source'])}`." if data.get("eval_source") else
           f"{s['eval_split']:g} of the images, split by image (seed {s['seed']})."),
        f"- Skipped bad rows: {data['skipped']}.",
        f"- Training time: {run['train']['seconds']:.1f} s, {run['train']['steps']} steps"
        + (f" (resumed from {run['train']['resumed_from']}; the time is the last run's)."
           if run["train"].get("resumed_from") else "."),
        "",
        "## Use",
        "",
        "```",
        "clipsearch ingest ~/Pictures --model THIS_FOLDER  # a new index",
        "clipsearch reindex --model THIS_FOLDER            # or an index built with another model",
        'clipsearch search "your words"                    # either way, the collection\'s model from then on',
        "clipsearch eval PAIRS.csv --model THIS_FOLDER",
        "```",
        "",
        compatibility,
        "",
        "With sentence-transformers directly: `SentenceTransformer(THIS_FOLDER).encode([PIL images or captions])`.",
        "",
    ]
    return "\n".join(lines)


def _batch_size(train: dict, settings: dict) -> str:
    """The batch size the run used, and --batch-size where it asked for more (a batch
    holds each caption, class and image once)."""
    used, asked = train.get("batch_size", settings["batch_size"]), settings["batch_size"]
    return f"{used}" if used == asked else f"{used} (--batch-size {asked} asked)"
