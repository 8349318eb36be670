#!/usr/bin/env python
"""python tools/export_hf.py --input MODEL --output DIR  (hb_jax model folder -> Hugging Face folder).
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import export_hf_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(export_hf_main())
