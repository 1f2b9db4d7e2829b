"""The fine-tune stage: adapt CLIP to a domain from image/caption pairs.

Not built yet (issue #5): `clipsearch finetune` does not exist. The model folder it
will write is a sentence-transformers folder that `--model` already loads.
"""
