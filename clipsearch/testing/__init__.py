"""Tools for tests and benchmarks, never used at run time: a randomly initialised
CLIP in either folder layout (random_clip.py)."""
