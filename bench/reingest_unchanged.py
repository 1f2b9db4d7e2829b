"""Unchanged re-ingest: `clipsearch ingest` over N files that are all in the index already.

    python bench/reingest_unchanged.py --files 100000

Makes N small image files, records them in an embedded index as ingest would (same
ids, same size/mtime payloads; the vectors are random since they are never compared),
then times the full CLI command, cold process included, which must find every file
unchanged and decode nothing. The model is a random-init ViT-B/32 (the real one's
size: what loading it would cost). Two modes, interleaved in the same run:

- identity cached: as after any earlier ingest or search with this model, the model
  cache (CLIPSEARCH_CACHE_DIR, here bench/out/reingest-cache) holds the model's
  identity, so the command never imports torch nor loads the model;
- no cached identity: the cache is emptied before each run, so the command loads the
  model to learn its identity (what every run did before the lazy encoder).

With `--bad K`, K corrupt files lie among the N, and the two modes are instead:

- bad files remembered: as after any earlier run over the folder, the cache holds the
  record of files found bad (ingest/known_bad.py), so they are reported, not read;
- bad files not remembered (CLIPSEARCH_KNOWN_BAD=0): every run decodes them again,
  and loads the model to do so (what every run did before that record).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bad", type=int, default=0, help="corrupt files among them (see above)")
    args = parser.parse_args()

    from PIL import Image

    from bench.photos import vit_b_32_model
    from clipsearch.config import Settings
    from clipsearch.encoders.lazy import LazyEncoder
    from clipsearch.fingerprint import fingerprint
    from clipsearch.index import open_index, point_id
    from clipsearch.ingest.relink import place_payload
    from clipsearch.ingest.walk import walk_images
    from clipsearch.photo_facts import FACTS_VERSION

    model = vit_b_32_model()
    cache = OUT / "reingest-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["CLIPSEARCH_CACHE_DIR"] = str(cache)  # here and in the commands below
    os.environ.pop("CLIPSEARCH_FAST_PATH", None)
    os.environ.pop("CLIPSEARCH_KNOWN_BAD", None)
    photos = OUT / f"unchanged-{args.files}"
    if not photos.is_dir() or sum(len(f) for _, _, f in os.walk(photos)) != args.files:
        shutil.rmtree(photos, ignore_errors=True)
        template = OUT / "template.png"
        Image.new("RGB", (8, 8), (200, 30, 30)).save(template)
        data = template.read_bytes()
        for i in range(args.files):  # 1000 files a folder, like a camera's DCIM
            folder = photos / f"{i // 1000:04d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            (folder / f"IMG_{i:06d}.png").write_bytes(data)
    bad = photos.with_name(photos.name + "-bad")  # its own folder: the count above stays N
    shutil.rmtree(bad, ignore_errors=True)
    bad.mkdir(parents=True)
    for i in range(args.bad):  # truncated downloads: a JPEG header and nothing after it
        (bad / f"IMG_BAD_{i:04d}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(64))
    index_dir = OUT / f"unchanged-index-{args.files}"
    shutil.rmtree(index_dir, ignore_errors=True)
    settings = Settings.resolve(index=str(index_dir), model=str(model))
    identity = LazyEncoder(str(model), device="cpu").identity  # loads the model; caches its identity
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    with open_index(settings, create=True) as index:
        index.ensure_collection(identity)
        batch = []

        def flush():
            vectors = rng.normal(size=(len(batch), identity.dim)).astype(np.float32)
            # As ingest writes them today, fingerprint included: points without one would
            # be upgraded (every file read again) by the first timed run.
            index.upsert([point_id(e.path) for e in batch], vectors, [
                {**place_payload(e), "width": 8, "height": 8, "fingerprint": fingerprint(e.path, e.size),
                 "facts_version": FACTS_VERSION}
                for e in batch])
            batch.clear()

        for entry in walk_images([str(photos)]):
            batch.append(entry)
            if len(batch) == 2000:
                flush()
        if batch:
            flush()
        assert index.count() == args.files
        index.optimize()  # the graph the ingest of these files would have left
    print(f"prepared {args.files} points in {time.perf_counter() - t:.1f} s", flush=True)

    command = [str(Path(sys.executable).parent / "clipsearch"), "ingest", str(photos), str(bad),
               "--index", str(index_dir), "--model", str(model), "--json", "-q"]
    if args.bad:  # a first run finds the bad files and records them
        subprocess.run(command, capture_output=True, text=True, check=True)
    kept = {sub: {p.name: p.read_bytes() for p in (cache / sub).glob("*.json")} for sub in ("identities", "bad-files")}
    assert kept["identities"], f"no identity record under {cache / 'identities'}"
    if args.bad:
        first, second = "bad files remembered", "bad files not remembered"
        restore = {first: ("identities", "bad-files"), second: ("identities",)}
    else:
        first, second = "identity cached", "no cached identity"
        restore = {first: ("identities",), second: ()}
    modes = {first: {"walls": [], "inner": []}, second: {"walls": [], "inner": []}}
    for _ in range(args.runs):  # interleaved, so that a noisy neighbour hits both alike
        for mode, result in modes.items():
            shutil.rmtree(cache, ignore_errors=True)
            for sub in restore[mode]:
                (cache / sub).mkdir(parents=True)
                for name, data in kept[sub].items():
                    (cache / sub / name).write_bytes(data)
            env = dict(os.environ, CLIPSEARCH_KNOWN_BAD="0" if mode == "bad files not remembered" else "1")
            t = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            result["walls"].append(time.perf_counter() - t)
            summary = json.loads(out.stdout)
            assert summary["unchanged"] == args.files and summary["embedded"] == 0, summary
            assert summary["skipped"] == args.bad, summary
            result["inner"].append(summary["seconds"])
    cached, loaded = (float(np.median(modes[m]["walls"])) for m in modes)
    print(json.dumps({"files": args.files, "bad_files": args.bad, "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                      **{mode: {"wall_s": [round(w, 2) for w in r["walls"]],
                                "wall_s_median": round(float(np.median(r["walls"])), 2),
                                "ingest_run_s_median": round(float(np.median(r["inner"])), 2)}
                         for mode, r in modes.items()},
                      "speed_up": round(loaded / cached, 2)}))


if __name__ == "__main__":
    main()
