"""Build randomly initialised CLIP model folders without any download.

No pretrained CLIP weights can be fetched on the machines this project is built on,
so tests build a tiny CLIP (a few hidden units, 32x32 images) and speed benchmarks a
full-size ViT-B/32 with random weights. Both are real transformers CLIP models that
run through sentence-transformers exactly like the hub's; only the weights are noise.

The tokenizer is CLIP's byte-level BPE with no merges: every byte, alone and in its
word-final `</w>` form, plus the start and end tokens. Texts therefore tokenize to
characters, wrapped in start/end tokens; the text tower pools at the end token, so
without them every text would get the same vector.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY = dict(
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8),
    projection_dim=16,
)
# The shapes of openai/clip-vit-base-patch32: same parameter count and compute.
VIT_B_32 = dict(
    text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=32),
    projection_dim=512,
)
SIZES = {"tiny": TINY, "vit-b-32": VIT_B_32}


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_text("#version: 0.2\n")
    return vocab_file, merges_file


def build_random_clip(folder: str | Path, size: str = "tiny", seed: int = 0,
                      layout: str = "transformers") -> Path:
    """Write a random CLIP to `folder`.

    layout="transformers": a plain transformers CLIP folder (config.json, weights,
    processor files). layout="sentence-transformers": the hub's clip-ViT-B-32 layout,
    modules.json with the model in 0_CLIPModel/.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec = SIZES[size]
    root = Path(folder)
    if layout == "sentence-transformers":
        model_dir = root / "0_CLIPModel"
    elif layout == "transformers":
        model_dir = root
    else:
        raise ValueError(f"unknown layout {layout!r}")
    model_dir.mkdir(parents=True, exist_ok=True)

    vocab_file, merges_file = _write_tokenizer_files(model_dir)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **spec["text"],
        ),
        vision_config=dict(spec["vision"]),
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_size = spec["vision"]["image_size"]
    try:  # the PIL-backed processor: torchvision is not a dependency
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor
    image_processor = ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    if layout == "sentence-transformers":
        (root / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}],
            indent=2,
        ))
    return root


def main(argv: list[str] | None = None) -> None:
    """`python -m clipsearch.testing.random_clip FOLDER [tiny|vit-b-32] [transformers|sentence-transformers]`"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m clipsearch.testing.random_clip",
        description="Write a randomly initialised CLIP: for trying the plumbing and measuring speed, never "
                    "for search quality (it has learnt nothing).")
    parser.add_argument("folder", type=Path)
    parser.add_argument("size", nargs="?", default="tiny", choices=sorted(SIZES))
    parser.add_argument("layout", nargs="?", default="transformers", choices=["transformers", "sentence-transformers"])
    parser.add_argument("--replace", action="store_true", help="delete FOLDER first when it holds anything")
    args = parser.parse_args(argv)
    folder = args.folder
    if folder.is_symlink() or folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not args.replace:  # a typo must not cost a folder of someone's files
            parser.error(f"{folder} exists and is not empty: name a new folder, or give --replace to delete it first")
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    build_random_clip(folder, size=args.size, layout=args.layout)
    print(folder)


if __name__ == "__main__":
    main()
