#!/usr/bin/env python
"""python tools/eval_mc.py --help  (see hb_jax/cli.py:eval_mc_main and README "Evaluation")."""
import sys

from hb_jax.cli import eval_mc_main

if __name__ == "__main__":
  sys.exit(eval_mc_main())
