#!/usr/bin/env python
"""python tools/estimate.py --config=configs/X.py[:variant] [--hardware h100|tpu-v4|tpu-v5p|...] [--chips N]
[--mfu 0.4] [--decode_efficiency 0.5] [--assume NAME=VALUE ...] [--json]: the cost model of hb_jax/estimate/.
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import estimate_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(estimate_main())
