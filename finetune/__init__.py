"""The fine-tune stage: adapt CLIP to a domain from image/caption pairs.

`clipsearch finetune DATA --base MODEL --output DIR` (commands.py) reads and checks
the pairs (datasets.py, validation.py), holds out images (split.py), scores the
base model (evaluation.py), trains with sentence-transformers' trainer
(training.py), saves a sentence-transformers model folder that `--model DIR`
loads in ingest and search, and scores it again (pipeline.py, model_card.py).
`clipsearch eval DATA --model M` scores any model on any pairs file.

Nothing heavy is imported here: the CLI imports finetune.commands on every start.
"""
