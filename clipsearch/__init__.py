"""clipsearch: text-to-image search over large image folders.

The kernel shared by the three stages (`ingest`, `search`, `finetune`): settings,
the CLIP encoder, the index backends and the command line. Nothing here imports
torch or sentence-transformers at import time; the encoder loads them on first use
so that `clipsearch --help` and `clipsearch status` stay fast.
"""

__version__ = "0.1.0"
