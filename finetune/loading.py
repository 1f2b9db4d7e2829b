"""Load a CLIP for training or evaluation, through clipsearch's Encoder.

One adjustment: captions longer than the text tower's position table (77 tokens
for CLIP) are truncated instead of failing the whole run. Hub CLIPs ship a
tokenizer that knows its limit; a tokenizer without one (model_max_length left at
its huge default) would pass 115 tokens to a 77-position model and crash. And
transformers' "Token indices sequence length is longer than ..." warning is silenced:
it foretells indexing errors the truncation prevents; captions.py says what the cut costs.
"""

from __future__ import annotations

from clipsearch.encoders import Encoder

from .captions import quiet_length_warning, tokenizer_of


def load_clip(model: str, device: str = "auto") -> Encoder:
    encoder = Encoder(model, device)
    positions = getattr(encoder.clip.config.text_config, "max_position_embeddings", None)
    current = encoder.st.max_seq_length
    if positions and (current is None or current > positions):
        encoder.st.max_seq_length = positions
    quiet_length_warning(tokenizer_of(encoder.st))
    return encoder
