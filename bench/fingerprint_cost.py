"""What a content fingerprint costs per file (issue #14): rclip's partial hash (size +
first MiB + last KiB, clipsearch/fingerprint.py) against full-file hashes, on small photos
(640x480) and 12 MP photos (4000x3000), from the page cache and, as root, cold (the page
cache dropped before each pass: what a NAS or a fresh boot sees).

    python bench/fingerprint_cost.py [--files 300] [--runs 3]

Prints one JSON line per photo set: milliseconds per file for each scheme, warm and
cold, and the bytes each reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.photos import make_photos  # noqa: E402
from clipsearch.fingerprint import fingerprint  # noqa: E402


def full_hash(algorithm: str):
    def run(path: str) -> str:
        digest = hashlib.new(algorithm)
        with open(path, "rb", buffering=0) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    return run


SCHEMES = {"partial (size + 1 MiB + 1 KiB), blake2b": fingerprint,
           "full file, blake2b": full_hash("blake2b"),
           "full file, sha1": full_hash("sha1")}


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def per_file_ms(scheme, files: list[str], cold: bool) -> float:
    if cold and not drop_caches():
        return float("nan")
    started = time.perf_counter()
    for path in files:
        scheme(path)
    return (time.perf_counter() - started) / len(files) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for kind, label in (("small", "640x480"), ("large", "4000x3000")):
        folder = make_photos(kind, args.files)
        files = sorted(str(p) for p in folder.iterdir() if p.suffix == ".jpg")[:args.files]
        mean_bytes = sum(os.path.getsize(f) for f in files) / len(files)
        for path in files:  # warm the page cache once
            fingerprint(path)
        result: dict = {"photos": label, "files": len(files), "mean_file_bytes": round(mean_bytes),
                        "load_average": os.getloadavg()[0]}
        for name, scheme in SCHEMES.items():
            warm = min(per_file_ms(scheme, files, cold=False) for _ in range(args.runs))
            cold = min(per_file_ms(scheme, files, cold=True) for _ in range(args.runs))
            result[name] = {"warm_ms_per_file": round(warm, 3), "cold_ms_per_file": round(cold, 3)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
