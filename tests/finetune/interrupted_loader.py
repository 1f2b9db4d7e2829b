"""Run by test_finetune_signals.py in its own session: the fine-tune's collator in a
DataLoader with 2 workers, Ctrl-C'd again and again while batches arrive.

Prints `ready N` on stdout while round N's batches flow; the test then sends SIGINT to
the whole process group, as a terminal does. Each round's KeyboardInterrupt is caught
and the next round starts with new workers, so one process meets many interrupts.
"""

import json
import sys
from pathlib import Path

import torch.utils.data
from sentence_transformers import SentenceTransformer

from clipsearch.finetune.training import IMAGE_COLUMN, TEXT_COLUMN, ImagePathCollator


def main(model: str, images: str, rounds: int) -> None:
    st = SentenceTransformer(model, device="cpu")
    rows = [{IMAGE_COLUMN: str(p), TEXT_COLUMN: "a shape"} for p in sorted(Path(images).glob("*.png"))]
    image_size = json.loads((Path(model) / "config.json").read_text())["vision_config"]["image_size"]
    collator = ImagePathCollator(preprocess_fn=st.preprocess, image_size=image_size)
    for round_ in range(rounds):
        loader = torch.utils.data.DataLoader(rows * 1000, batch_size=8, num_workers=2, collate_fn=collator)
        try:
            for number, _batch in enumerate(loader):
                if number == 3:
                    print(f"ready {round_}", flush=True)
        except KeyboardInterrupt:
            print(f"interrupted {round_}", file=sys.stderr, flush=True)
        else:
            sys.exit("the loader ran out before the interrupt")
        del loader


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
