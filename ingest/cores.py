"""How ingest shares the cores between its decoding processes and the encoder.

Decoding (a JPEG at reduced scale, a resize, a fingerprint) runs in worker processes;
encoding runs in this one, with onnxruntime's intra-op threads (the ONNX image tower)
or torch's. Both want every core; they are chosen together here so that neither
starves the other:

- onnxruntime gets one thread per core: encoding is most of the work (on the
  4000x3000 set, 2-3 times the decode cost per image, BENCHMARKS.md), and with fewer
  threads it leaves cores idle whenever the decoders are ahead, which is most of the
  time since they run a window of batches in advance.
- its threads do not spin between batches: idle onnxruntime threads busy-wait by
  default, and on these 2-core machines spinning runtimes took 62% of a concurrent
  ingest's rate (BENCHMARKS.md, queries during a watched ingest). Sleeping instead
  costs microseconds per batch of 32 images, which take seconds.
- decoding workers: one per core, as before (`--workers` overrides, 0 decodes in this
  process). They sleep once their window of work is full, so the encoder has the
  cores whenever it is the bottleneck.

- the decoders also do the model's resize and centre crop (clipsearch/images.py
  prepare_job), so the encoding process runs only the model and a vectorized
  normalize (about 0.4 ms an image): its serial work between two onnxruntime runs,
  which left a core idle (the image processor, about 13 ms an image on 640x480
  photos, issue 19), is gone. bench/ingest_speed.py --tree-runs measures the cores
  the process tree keeps busy, against a baseline tree.

bench/onnx_ingest.py --plans measures the alternatives (threads and workers of 1..cores)
on the steady ingest rate; the rule above is what it supports (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CorePlan:
    workers: int  # decoding processes (0: decode in the ingest process)
    threads: int  # onnxruntime intra-op threads
    spin: bool  # whether onnxruntime's idle threads busy-wait


def plan_cores(workers: int | None = None, cores: int | None = None) -> CorePlan:
    """The plan for `cores` (default: this machine's); `workers` as given wins."""
    cores = cores or os.cpu_count() or 1
    return CorePlan(workers=cores if workers is None else workers, threads=cores, spin=False)
