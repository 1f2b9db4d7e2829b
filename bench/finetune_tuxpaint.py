"""Fine-tune on real pictures: Tux Paint's stamps (about 538 image/caption pairs).

    apt-get install -y --no-install-recommends tuxpaint-stamps-default
    .venv/bin/python bench/finetune_tuxpaint.py [--size small|tiny|vit-b-32] [--epochs N] ...

Every PNG under /usr/share/tuxpaint/stamps (outside symbols/) with a sibling .txt is a
pair; the caption is the .txt's first line. 10% of the images are held out (seeded,
by image). A CLIP with *random* weights is trained from scratch by the real
`clipsearch finetune` command (no pretrained weights can be downloaded here), then
both models are scored with `clipsearch eval` on the held-out pairs (generalisation)
and on the training pairs (what was learned at all). Prints a Markdown report with
the exact commands, to paste into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipsearch.testing import random_clip  # noqa: E402

STAMPS = Path("/usr/share/tuxpaint/stamps")
# A CLIP small enough to train from scratch on two CPU cores in minutes.
SMALL = dict(
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
    vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                image_size=64, patch_size=8),
    projection_dim=64,
)
CLIPSEARCH = [sys.executable, "-m", "clipsearch.cli"]


def collect_pairs(stamps: Path) -> list[tuple[str, str]]:
    pairs = []
    for png in sorted(stamps.rglob("*.png")):
        caption_file = png.with_suffix(".txt")
        if "symbols" in png.relative_to(stamps).parts or not caption_file.is_file():
            continue
        lines = [line.strip() for line in caption_file.read_text(encoding="utf-8", errors="replace").splitlines()]
        caption = next((line for line in lines if line), "")
        if caption:
            pairs.append((str(png), caption))
    return pairs


def write_csv(path: Path, pairs) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "text_description"])
        writer.writerows(pairs)
    return path


def run(args: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds, CPU seconds of the command): on a shared machine the
    CPU time is the steadier figure."""
    started, cpu_before = time.monotonic(), _children_cpu()
    done = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")
    return done.stdout, time.monotonic() - started, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def evaluate(data: Path, model: Path, device: str) -> dict:
    out, _, _ = run([*CLIPSEARCH, "eval", str(data), "--model", str(model), "--device", device, "--json"])
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stamps", type=Path, default=STAMPS)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "finetune-tuxpaint")
    parser.add_argument("--size", choices=["tiny", "small", "vit-b-32"], default="small")
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes while training")
    args = parser.parse_args()

    args.stamps, args.work = args.stamps.resolve(), args.work.resolve()
    if not args.stamps.is_dir():
        raise SystemExit(f"{args.stamps} not found: apt-get install -y --no-install-recommends tuxpaint-stamps-default")
    from clipsearch.finetune.split import split_by_image
    from clipsearch.finetune.validation import load_pairs

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    everything = write_csv(args.work / "tuxpaint.csv", collect_pairs(args.stamps))
    pairs = load_pairs(everything).pairs
    train_pairs, held = split_by_image(pairs, args.eval_split, args.seed)
    train_csv = write_csv(args.work / "train.csv", [(p.image, p.text) for p in train_pairs])
    held_csv = write_csv(args.work / "heldout.csv", [(p.image, p.text) for p in held])

    random_clip.SIZES["small"] = SMALL
    base = random_clip.build_random_clip(args.work / "base", size=args.size, seed=args.seed)
    model = args.work / "model"
    command = [*CLIPSEARCH, "finetune", str(train_csv), "--eval-data", str(held_csv), "--base", str(base),
               "--output", str(model), "--epochs", f"{args.epochs:g}", "--batch-size", str(args.batch_size),
               "--lr", f"{args.lr:g}", "--seed", str(args.seed), "--device", args.device, "--quiet", "--json",
               "--save-steps", "100000", "--workers", str(args.workers)]
    out, wall, cpu = run(command)
    record = json.loads(out)
    train_before, train_after = evaluate(train_csv, base, args.device), evaluate(train_csv, model, args.device)

    rows = [("held-out, before", record["before"]), ("held-out, after", record["after"]),
            ("training pairs, before", train_before), ("training pairs, after", train_after)]
    shown = " ".join(c if c.startswith("-") or "/" not in c else Path(c).name for c in command[3:])
    print(f"""## Fine-tuning on Tux Paint stamps (random-init CLIP, {args.device})

{len(pairs)} image/caption pairs from `tuxpaint-stamps-default` (outside symbols/); {len(train_pairs)} training pairs,
{len(held)} held out ({len({p.image for p in held})} images, split by image, seed {args.seed}).
Base: a **randomly initialised** CLIP, size `{args.size}`: no pretrained weights can be downloaded on this
machine, so these numbers show the pipeline learning from scratch, not what fine-tuning a pretrained CLIP gives.

| split | queries | images | recall@1 | recall@5 | recall@10 | MRR | chance recall@1 |
|---|---:|---:|---:|---:|---:|---:|---:|""")
    for name, m in rows:
        print(f"| {name} | {m['queries']} | {m['images']} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | "
              f"{m['recall@10']:.3f} | {m['mrr']:.3f} | {m['chance_recall@1']:.3f} |")
    print(f"""
Training: {record['train']['steps']} steps, {record['train']['seconds']:.1f} s in the trainer
({wall:.1f} s wall and {cpu:.0f} s of CPU time for the whole command: imports, checks, both evaluations,
saving; load average {os.getloadavg()[0]:.1f} at the end);
{_machine(args.device)}.

Command: `python bench/finetune_tuxpaint.py --size {args.size} --epochs {args.epochs:g} --batch-size {args.batch_size} --lr {args.lr:g} --device {args.device}`,
which runs `clipsearch {shown}`.""")


def _machine(device: str) -> str:
    import torch

    cpu = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}"
    return f"{torch.cuda.get_device_name(0)}, {cpu}" if device == "cuda" else cpu


if __name__ == "__main__":
    main()
