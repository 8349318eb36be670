#!/usr/bin/env python
"""python tools/judge.py --help  (see hb_jax/cli.py:judge_main and README "Evaluation")."""
import sys

from hb_jax.cli import judge_main

if __name__ == "__main__":
  sys.exit(judge_main())
