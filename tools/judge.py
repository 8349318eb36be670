#!/usr/bin/env python
"""python tools/judge.py --help  (README "Evaluation").
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import judge_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(judge_main())
