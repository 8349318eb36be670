#!/usr/bin/env python
"""python tools/export_hf.py --input MODEL --output DIR  (hb_jax model folder -> Hugging Face folder)."""
import sys

from hb_jax.cli import export_hf_main

if __name__ == "__main__":
  sys.exit(export_hf_main())
