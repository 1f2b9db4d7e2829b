"""Ingest speed: the full `clipsearch ingest` against the ideal rate and a naive pipeline.

    python bench/ingest_speed.py [--large N] [--small N]

For each photo set (full-size 4000x3000 JPEGs, small 640x480 JPEGs), all in one run:
- model-only rate: the model's forward pass on ready pixel tensors;
- per-image CPU cost (core-seconds) of decode+preprocess as ingest does it, and of
  encoding through sentence-transformers, each measured single-process;
- ideal rate = cores / (decode cost + encode cost): every core busy, no overhead;
- naive rate: one process, full PIL decode, then encode, in batches;
- full rate: the `clipsearch ingest` command (fresh index), images over its own clock;
  the steady rate takes the run's start-up off (loading the model, starting the decode
  workers, the first batch), as the command's JSON summary reports it
  (`first_batch_seconds`): (N - B) / (seconds - first_batch_seconds), B = one batch.
Reports efficiency (full/ideal), speed-up (full/naive) and full/model-only, on the
steady rate (what a folder of thousands of photos sees), and the whole-run figures.

Issue 19 (`--tree-runs N`, with `--baseline-tree DIR`, a checkout of the revision to
compare against, as bench/ingest_startup.py keeps one): the whole command from this
tree and from the baseline tree, interleaved, N times each, on the ONNX path and on
the torch path (CLIPSEARCH_FAST_PATH=0), with for each run:
- cores used: the process tree's CPU time over wall time, for the whole run and for
  its steady part (from its first encoded batch to its end), sampled from /proc
  every 0.5 s (the ingest process and its decoding workers; a worker that has exited
  counts with its last reading; `cores_steady_live_only` sums only the processes alive
  at each sample, as this script did before, for comparison; `cores_whole_run_sampled`
  is the sampler's whole-run figure, to hold against the kernel's `cores_whole_run`);
- peak memory: the largest sum over the process tree of each process's proportional
  set size (PSS, /proc/PID/smaps_rollup; RSS where that cannot be read), sampled every
  0.5 s;
- the steady rate, and this tree's over the baseline's;
- whether the decoding workers mapped torch or onnxruntime (their /proc/PID/maps).
And, in this process, the encode step's CPU cost per image against the model alone:
the whole images path (image processor + model, what the encoding process did before)
and the crops path (normalize + model) against the model on ready tensors.
`--smoke` runs everything on a handful of photos, once, to check the script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.photos import make_photos, vit_b_32_model  # noqa: E402

BATCH = 32
ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_only_rate(encoder, n: int = 96) -> float:
    import torch

    size = encoder.image_size
    pixels = torch.randn(BATCH, 3, size, size)
    with torch.inference_mode():
        encoder.clip.get_image_features(pixel_values=pixels[:4])  # warm-up
        start = time.perf_counter()
        done = 0
        while done < n:
            encoder.clip.get_image_features(pixel_values=pixels)
            done += BATCH
    return done / (time.perf_counter() - start)


def decode_cost(files: list[Path], target: int) -> float:
    from clipsearch.images import load_image

    start = cpu_seconds()
    for f in files:
        load_image(str(f), target)
    return (cpu_seconds() - start) / len(files)


def encode_cost(encoder, files: list[Path]) -> float:
    from clipsearch.images import load_image

    images = [load_image(str(f), encoder.image_size).image for f in files]
    encoder.encode_images(images[:4])
    start = cpu_seconds()
    for i in range(0, len(images), BATCH):
        encoder.encode_images(images[i:i + BATCH], batch_size=BATCH)
    return (cpu_seconds() - start) / len(images)


def naive_rate(encoder, files: list[Path]) -> float:
    start = time.perf_counter()
    for i in range(0, len(files), BATCH):
        batch = [Image.open(f).convert("RGB") for f in files[i:i + BATCH]]
        encoder.encode_images(batch, batch_size=BATCH)
    return len(files) / (time.perf_counter() - start)


def full_rate(model: Path, folder: Path, extra_env: dict | None = None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as index:
        env = dict(os.environ, **(extra_env or {}))
        out = subprocess.run(
            [str(Path(sys.executable).parent / "clipsearch"), "ingest", str(folder), "--index", index,
             "--model", str(model), "--batch-size", str(BATCH), "--json", "-q"],
            capture_output=True, text=True, env=env, check=True)
    summary = json.loads(out.stdout)
    return summary["embedded"] / summary["seconds"], summary


# -- the process tree (issue 19) -------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def process_tree(root: int) -> list[int]:
    kids, tree, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, []))
    return tree


def cpu_seconds_of(pids: list[int]) -> dict[tuple[int, int], float]:
    """{(pid, start time): CPU seconds (user + system)} of each process that can be read."""
    seen = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            seen[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime; starttime
        except (OSError, IndexError, ValueError):
            pass
    return seen


def memory_kb(pid: int) -> tuple[int, str]:
    """(kB, "pss") from smaps_rollup, or (kB, "rss") where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]), "pss"
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]), "rss"
    except OSError:
        pass
    return 0, "rss"


def heavy_libraries(pid: int) -> list[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return sorted({lib for lib in ("libtorch", "onnxruntime") if lib in maps})


class TreeSampler(threading.Thread):
    """Every `interval` s: the tree's CPU seconds and memory; the workers' libraries."""

    def __init__(self, pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (monotonic, tree CPU seconds)
        self.live_samples: list[tuple[float, float]] = []  # the same, summing only the processes alive
        # Each process's last reading: a decoder that has exited (the pool ends before the
        # command does) keeps the CPU it used in the tree's total instead of taking it away.
        self.last_cpu: dict[tuple[int, int], float] = {}
        self.peak_kb, self.kinds, self.worker_libraries = 0, set(), set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = process_tree(self.pid)
            now = time.monotonic()
            alive = cpu_seconds_of(pids)
            self.last_cpu.update(alive)
            self.samples.append((now, sum(self.last_cpu.values())))
            self.live_samples.append((now, sum(alive.values())))
            total = 0
            for pid in pids:
                kb, kind = memory_kb(pid)
                total += kb
                self.kinds.add(kind)
                if pid != self.pid:
                    self.worker_libraries.update(heavy_libraries(pid))
            self.peak_kb = max(self.peak_kb, total)
            self.done.wait(self.interval)


def tree_run(tree: Path, model: Path, folder: Path, env: dict) -> dict:
    """The whole `clipsearch ingest` command from `tree`, with its process tree watched."""
    with tempfile.TemporaryDirectory() as index:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "ingest", str(folder), "--index", index,
                                 "--model", str(model), "--batch-size", str(BATCH), "--json", "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tree,
                                env=dict(env, PYTHONPATH=str(tree)))
        sampler = TreeSampler(proc.pid)
        sampler.start()
        out, err = proc.communicate()
        ended = time.monotonic()
        sampler.done.set()
        sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest from {tree} failed: {err[-2000:]}")
    summary = json.loads(out.splitlines()[-1])
    wall = ended - started
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)  # every process, waited for
    # The steady part: from the first encoded batch to the end of the run (the summary's clock).
    steady_from = ended - (summary["seconds"] - summary["first_batch_seconds"])

    def cores_from(samples) -> float | None:
        window = [s for s in samples if s[0] >= steady_from]
        if len(window) >= 2 and window[-1][0] > window[0][0]:
            return round((window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), 3)
        return None

    steady_cores = cores_from(sampler.samples)
    # What the sampler read before exited workers kept their CPU: shown beside it.
    steady_cores_live_only = cores_from(sampler.live_samples)
    steady_rate = (summary["embedded"] - BATCH) / max(1e-9, summary["seconds"] - summary["first_batch_seconds"])
    sampled_whole = (sampler.samples[-1][1] / wall) if sampler.samples else None  # against the kernel's figure
    return {"wall_s": round(wall, 2), "cores_whole_run": round(cpu / wall, 3),
            "cores_whole_run_sampled": round(sampled_whole, 3) if sampled_whole is not None else None,
            "cores_steady": steady_cores, "cores_steady_live_only": steady_cores_live_only,
            "steady_img_s": round(steady_rate, 2), "peak_tree_mb": round(sampler.peak_kb / 1024, 1),
            "memory_measure": "+".join(sorted(sampler.kinds)),
            "worker_libraries": sorted(sampler.worker_libraries), "embedded": summary["embedded"]}


def encode_step_costs(model: Path, folder: Path, fast_path: bool, n: int, rounds: int = 5) -> dict:
    """CPU seconds an image of the encode step, in this process: whole images (the
    image processor + the model, as before issue 19), crops (normalize + the model),
    the model alone on ready tensors, and normalize alone. The four take turns for `rounds` rounds and
    each gives its median. The model runs on one thread here: with one per core, the CPU
    time of the same batch moved by up to 25% from round to round (threads waking and
    sleeping between operators), far more than the step's own work besides the model,
    which is serial and the same whatever the model's thread count. `normalize`: that
    work alone (rescale and normalize the crops, in one vectorized step)."""
    from clipsearch.encoders.lazy import LazyEncoder
    from clipsearch.images import load_image

    os.environ["CLIPSEARCH_FAST_PATH"] = "1" if fast_path else "0"
    encoder = LazyEncoder(str(model), "cpu", threads=1, spin=False)
    files = sorted(folder.iterdir())[:n]
    images = [load_image(str(f), encoder.image_size).image for f in files]
    encoder.encode_images(images[:2])  # decides the path, loads (and warms) the model
    torch_threads = None
    if not fast_path:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    preprocess = encoder.preprocess
    crops = np.stack([preprocess.crop_pixels(image) for image in images])
    pixels = preprocess.normalize(crops)
    towers = encoder.towers

    def model_alone(batch):
        if towers._tower is not None:
            return towers._tower.run(batch)
        return encoder.full().encode_pixels(batch, BATCH)

    def cost(step, items) -> float:
        start = cpu_seconds()
        for i in range(0, len(items), BATCH):
            step(items[i:i + BATCH])
        return (cpu_seconds() - start) / len(items)

    steps = {"images": (lambda b: encoder.encode_images(b, BATCH), images),
             "crops": (lambda b: encoder.encode_crops(b, preprocess.geometry, BATCH), crops),
             "model_alone": (model_alone, pixels),
             "normalize": (preprocess.normalize, crops)}
    taken: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, items) in steps.items():
            taken[name].append(cost(step, items))
    costs = {name: float(np.median(values)) for name, values in taken.items()}
    os.environ.pop("CLIPSEARCH_FAST_PATH", None)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    return {"path": towers.path, **{f"{k}_core_ms_per_image": round(v * 1000, 2) for k, v in costs.items()},
            "images_over_model": round(costs["images"] / costs["model_alone"], 3),
            "crops_over_model": round(costs["crops"] / costs["model_alone"], 3),
            "model_and_normalize_over_model": round(1 + costs["normalize"] / costs["model_alone"], 4), "rounds": rounds,
            "crops_over_model_by_round": [round(c / m, 3) for c, m in zip(taken["crops"], taken["model_alone"])]}


def compare_trees(model: Path, folder: Path, baseline: Path | None, runs: int) -> dict:
    trees = {"this tree": ROOT, **({"baseline": baseline.resolve()} if baseline else {})}
    cache = OUT / "ingest-speed-cache"
    shutil.rmtree(cache, ignore_errors=True)
    results: dict = {}
    for path, fast in (("onnx", "1"), ("torch", "0")):
        env = dict(os.environ, CLIPSEARCH_CACHE_DIR=str(cache), CLIPSEARCH_FAST_PATH=fast)
        for tree in trees.values():  # exports the tower and records the identity: not timed
            tree_run(tree, model, make_photos("small", 4), env)
        runs_of: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(runs):
            for name, tree in trees.items():
                runs_of[name].append(tree_run(tree, model, folder, env))
        summary: dict = {}
        for name, made in runs_of.items():
            summary[name] = {key: float(np.median([r[key] for r in made])) for key in
                             ("cores_whole_run", "cores_whole_run_sampled", "cores_steady",
                              "cores_steady_live_only", "steady_img_s", "peak_tree_mb", "wall_s")
                             if all(r[key] is not None for r in made)}
            summary[name]["runs"] = made
        if baseline:
            summary["steady_rate_this_over_baseline"] = round(
                summary["this tree"]["steady_img_s"] / summary["baseline"]["steady_img_s"], 3)
            summary["peak_memory_this_over_baseline"] = round(
                summary["this tree"]["peak_tree_mb"] / summary["baseline"]["peak_tree_mb"], 3)
        results[path] = summary
    return results


def measure(encoder, model: Path, folder: Path, cores: int) -> dict:
    files = sorted(folder.iterdir())
    sample = files[: min(len(files), 48)]
    d_cost = decode_cost(sample, encoder.image_size)
    e_cost = encode_cost(encoder, sample)
    ideal = cores / (d_cost + e_cost)
    naive = naive_rate(encoder, files)
    model_only = model_only_rate(encoder)
    whole, summary = full_rate(model, folder)
    # The command's own clock: after its first batch (model load, decoder start, and
    # that batch, which nothing overlaps), the rate a large folder sees.
    full = (summary["embedded"] - BATCH) / (summary["seconds"] - summary["first_batch_seconds"])
    return {
        "images": len(files),
        "decode_core_s_per_image": round(d_cost, 4),
        "encode_core_s_per_image": round(e_cost, 4),
        "model_only_img_s": round(model_only, 2),
        "ideal_img_s": round(ideal, 2),
        "naive_img_s": round(naive, 2),
        "full_img_s": round(full, 2),
        "efficiency_full_over_ideal": round(full / ideal, 3),
        "speedup_full_over_naive": round(full / naive, 2),
        "full_over_model_only": round(full / model_only, 3),
        "whole_run_img_s": round(whole, 2),
        "whole_run_seconds": round(summary["seconds"], 2),
        "first_batch_seconds": round(summary["first_batch_seconds"], 2),
        "whole_run_over_ideal": round(whole / ideal, 3),
        "whole_run_over_naive": round(whole / naive, 2),
        "whole_run_over_model_only": round(whole / model_only, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=96)
    parser.add_argument("--small", type=int, default=256)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a checkout of the revision to compare against (git worktree add DIR REV)")
    parser.add_argument("--tree-runs", type=int, default=0,
                        help="issue 19: runs of the whole command per tree and path (0: not measured)")
    parser.add_argument("--encode-sample", type=int, default=64)
    parser.add_argument("--encode-rounds", type=int, default=5,
                        help="rounds of the encode-step measure, its steps taking turns (median)")
    parser.add_argument("--skip-classic", action="store_true",
                        help="only the issue-19 figures (no ideal, naive, decode cost)")
    parser.add_argument("--smoke", action="store_true", help="a few photos, once: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.large, args.small, args.tree_runs, args.encode_sample = 4, 40, max(args.tree_runs, 1), 8
        args.encode_rounds = 2
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    from clipsearch.encoders import Encoder

    cores = os.cpu_count() or 1
    model = vit_b_32_model()
    encoder = Encoder(str(model), device="cpu")
    results: dict = {"cores": cores, "model": "random-init CLIP ViT-B/32", "batch_size": BATCH}
    for kind, count in (("large", args.large), ("small", args.small)):
        if not count:
            continue
        folder = make_photos(kind, count)
        if not args.skip_classic:
            results[kind] = measure(encoder, model, folder, cores)
            print(kind, json.dumps(results[kind]), flush=True)
        if args.tree_runs:
            cache = OUT / "ingest-speed-cache"
            os.environ["CLIPSEARCH_CACHE_DIR"] = str(cache)
            results[f"{kind}_trees"] = compare_trees(model, folder, args.baseline_tree, args.tree_runs)
            print(kind, "trees", json.dumps(results[f"{kind}_trees"]), flush=True)
            results[f"{kind}_encode_step"] = [encode_step_costs(model, folder, fast, args.encode_sample,
                                                                args.encode_rounds)
                                              for fast in (True, False)]
            print(kind, "encode step", json.dumps(results[f"{kind}_encode_step"]), flush=True)
    results["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
