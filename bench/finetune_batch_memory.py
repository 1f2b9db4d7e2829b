"""Peak memory and step time of one fine-tuning step at a large batch, with and without
cached gradients (`finetune --mini-batch-size`, issue #17).

    python bench/finetune_batch_memory.py [--batch 256] [--mini 32] [--steps 2]

A random CLIP ViT-B/32 (the real model's size and cost) trained as `clipsearch finetune`
trains (AdamW, the symmetric loss) on --batch x --steps drawn 224x224 image and caption
pairs. Each variant runs in its own process, so that its peak resident memory
(ru_maxrss) is its own. Seconds per step include decoding the batch's images and the
first step's warm-up. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(batch: int, mini: int | None, steps: int, workdir: Path) -> dict:
    from bench.photos import vit_b_32_model
    from clipsearch.finetune.loading import load_clip
    from clipsearch.finetune.synthetic import write_dataset
    from clipsearch.finetune.training import TrainSettings, train
    from clipsearch.finetune.validation import load_pairs
    from clipsearch.progress import Progress

    per_train = -(-batch * steps // 36) + 1  # 36 training pairs per copy of the synthetic set
    train_csv, _ = write_dataset(workdir / "shapes", per_train=per_train, per_heldout=1, size=224)
    # Every caption its own: the no-duplicates sampler would otherwise fill a batch with
    # at most one pair per distinct caption (the synthetic set has 54).
    pairs = [replace(p, text=f"{p.text}, photo {i}") for i, p in enumerate(load_pairs(train_csv).pairs[:batch * steps])]
    assert len(pairs) == batch * steps
    encoder = load_clip(str(vit_b_32_model()), "cpu")
    settings = TrainSettings(epochs=1, batch_size=batch, mini_batch_size=mini, device="cpu", save_steps=10**9)
    started = time.perf_counter()
    facts = train(encoder.st, encoder.clip, pairs, settings, str(workdir / "checkpoints"), False,
                  Progress(quiet=True))
    wall = time.perf_counter() - started
    return {"mini_batch_size": mini, "steps": facts["steps"], "seconds_per_step": round(wall / facts["steps"], 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "loss": round(facts["train_loss"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--mini", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        mini = int(args.child) or None
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(child(args.batch, mini, args.steps, Path(workdir))))
        return
    results = []
    for mini in (0, args.mini):  # 0: the plain loss
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                              "--child", str(mini)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain, cached = results
    print(json.dumps({"batch": args.batch, "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                      "plain": plain, "cached": cached,
                      "memory_ratio": round(cached["peak_rss_gb"] / plain["peak_rss_gb"], 2),
                      "time_ratio": round(cached["seconds_per_step"] / plain["seconds_per_step"], 2)}))


if __name__ == "__main__":
    main()
