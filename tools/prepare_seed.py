#!/usr/bin/env python
"""python tools/prepare_seed.py --input oasst1.jsonl --output seed.jsonl [--max 3200] [--lenient]
(hb_jax/data/seed.py does the work).
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import prepare_seed_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(prepare_seed_main())
