"""Text encoding in a long session: one query at a time through one fast-path encoder.

    python bench/session_queries.py [--queries 40]

What a notebook or a small service holding one `Searcher` sees: each query is encoded
on its own, with the query-vector cache off so that every one runs the ONNX text tower
(random-init ViT-B/32). The first FEW_TEXTS queries use the tower loaded for few texts
(one thread, no weight pre-packing: the quickest to load); from then on the encoder
has switched to the tower loaded for many (all cores, pre-packed). Both are timed in
the same process, query by query, so the ratio is the session's gain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()

    from bench.photos import vit_b_32_model

    model = vit_b_32_model()
    cache = OUT / "session-cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ.update(CLIPSEARCH_CACHE_DIR=str(cache), CLIPSEARCH_QUERY_CACHE="0")

    from clipsearch.config import Settings
    from clipsearch.encoders import Encoder, location
    from clipsearch.encoders.query import FEW_TEXTS, FastTextEncoder, QueryEncoders
    from clipsearch.encoders.text_export import export_text_tower

    folder, _ = location.model_folder(str(model))
    export_text_tower(Encoder(str(model), "cpu"), location.folder_key(folder), folder, str(model))
    fast = QueryEncoders(Settings.resolve(model=str(model), index=":memory:")).get()
    assert isinstance(fast, FastTextEncoder)
    words = ["a dog running on the beach at sunset", "red sports car parked at night",
             "two children playing in the snow", "a bowl of ramen on a wooden table"]
    few, many = [], []
    for i in range(args.queries):
        text = f"{words[i % len(words)]} {i}"
        started = time.perf_counter()
        fast.encode_texts([text])
        seconds = time.perf_counter() - started
        # The first call loads the few-text tower, the (FEW_TEXTS+1)th the many-text one.
        if i in (0, FEW_TEXTS):
            continue
        (few if not fast._tower.many else many).append(seconds * 1000)
    print(json.dumps({
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "cores": os.cpu_count(),
        "few-text tower ms p50": round(float(np.median(few)), 1), "few n": len(few),
        "many-text tower ms p50": round(float(np.median(many)), 1), "many n": len(many),
        "speed_up": round(float(np.median(few)) / float(np.median(many)), 2)}))


if __name__ == "__main__":
    main()
