#!/usr/bin/env python3
"""Train a SentencePiece vocabulary with T5's conventions (pad 0, eos 1, unk 2, no bos).

Same as `python -m t5pod train-vocab`; e.g.
  scripts/train_vocab.py --input='/data/books/*.txt' --output=/data/vocab/spiece.model --vocab_size=32000
"""

import sys

from t5pod.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-vocab", *sys.argv[1:]]))
