"""The fine-tune stage: adapt CLIP to a domain from image/caption pairs.

`clipsearch finetune DATA --base MODEL --output DIR` (commands.py, pipeline.py):
  datasets.py    reads pairs: CSV, pipe table, TSV, JSON lines (optional negative column), folder of images + .txt
  labelled.py    reads a labelled folder: class subfolders of images, labels.txt or folder names
  rows.py        the row every reader returns, before validation
  templates.py   --template: a label -> its captions
  validation.py  checks every row (columns, captions, images, duplicates), or skips and reports
  split.py       holds out images, with all their captions, for evaluation
  loading.py     loads the base CLIP through clipsearch's Encoder
  evaluation.py  text -> image recall@1/5/10 and MRR, before and after; zero-shot accuracy for labels
  training.py    sentence-transformers' trainer, CLIP's symmetric loss, checkpoints
  model_card.py  the README.md beside the saved model
  images.py      lazy, ingest-identical image decoding; every image checked up front by ingest's decoder
  interrupts.py  Ctrl-C and SIGTERM wait until a checkpoint or the model is written whole
  synthetic.py   drawn shapes with held-out caption combinations (tests, notebook)
The output is a sentence-transformers model folder that `--model DIR` loads in
ingest and search. `clipsearch eval DATA --model M` scores any model on any pairs.

Nothing heavy is imported here: the CLI imports clipsearch.finetune.commands on every start.
"""
