#!/usr/bin/env python
"""python tools/eval_generate.py --help  (see hb_jax/cli.py:eval_generate_main and README "Evaluation")."""
import sys

from hb_jax.cli import eval_generate_main

if __name__ == "__main__":
  sys.exit(eval_generate_main())
