"""Load a CLIP for training or evaluation, through clipsearch's Encoder.

One adjustment: captions longer than the text tower's position table (77 tokens
for CLIP) are truncated instead of failing the whole run. Hub CLIPs ship a
tokenizer that knows its limit; a tokenizer without one (model_max_length left at
its huge default) would pass 115 tokens to a 77-position model and crash.
"""

from __future__ import annotations

from clipsearch.encoders import Encoder


def load_clip(model: str, device: str = "auto") -> Encoder:
    encoder = Encoder(model, device)
    positions = getattr(encoder.clip.config.text_config, "max_position_embeddings", None)
    current = encoder.st.max_seq_length
    if positions and (current is None or current > positions):
        encoder.st.max_seq_length = positions
    return encoder
