#!/usr/bin/env python
"""python tools/train_tokenizer.py --input TEXT_FILES... --output DIR --vocab_size N: a small sentencepiece
tokenizer with LLaMA's settings (hb_jax.tokenizer.train_sentencepiece), written to DIR/tokenizer.model.
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import train_tokenizer_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(train_tokenizer_main())
