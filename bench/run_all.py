"""Run every benchmark in turn (`make bench`); each prints JSON lines. Results are
copied by hand into BENCHMARKS.md with the command that produced them, because
these machines are noisy and a person should look at the numbers first.
bench/ingest_startup.py is not here: it compares against a baseline tree you name."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    ["ingest_speed.py"],
    ["reingest_unchanged.py", "--files", "100000"],
    ["reingest_unchanged.py", "--files", "100000", "--bad", "10"],
    ["index_scale.py", "--sizes", "100000", "1000000"],  # also the warm query latency
    ["hnsw_ef.py", "--points", "100000"],
    ["cold_query.py"],
    ["session_queries.py"],
    ["finetune_tuxpaint.py"],
    ["serve_speed.py"],  # warm HTTP queries, throughput, queries during a watched ingest
    ["serve_cold_query.py"],  # the thin client's cold query beside the standalone one
    ["optimize_stall.py"],  # queries during the HNSW build: in-process against off-process
    ["fingerprint_cost.py"],  # the content fingerprint per file, warm and cold
    ["reingest_moved.py", "--files", "100000"],  # a renamed top folder: vectors reused
    ["duplicates_speed.py", "--points", "100000"],  # duplicates --similar 0.95
    ["finetune_batch_memory.py", "--batch", "256", "--mini", "32"],  # cached gradients: memory and time
    ["reindex_speed.py", "--photos", "1000", "--runs", "3"],  # reindex against ingest of the same images
    ["embedded_quantization.py", "--points", "1000000"],  # int8 on the embedded index: recall, latency, memory
]

if __name__ == "__main__":
    failed = []
    for script, *args in SCRIPTS:
        if not (HERE / script).is_file():  # a renamed script must not drop out unnoticed
            failed.append(f"{script} (missing)")
            continue
        print(f"== {script} {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *args]).returncode != 0:
            failed.append(script)
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
