#!/usr/bin/env python
"""python tools/convert_llama.py --input DIR --output MODEL  (HF or Meta LLaMA -> hb_jax model folder)."""
import sys

from hb_jax.cli import convert_llama_main

if __name__ == "__main__":
  sys.exit(convert_llama_main())
