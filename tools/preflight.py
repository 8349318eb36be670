#!/usr/bin/env python
"""python tools/preflight.py --config=configs/X.py[:variant] [--config.a.b=value ...] [--topology=v5p-16|v4-32|cpu-8]
[--stages=a,b] [--json]: every stage's programs compiled for the pod without weights (hb_jax/preflight/): HBM per
device, FLOPs and bytes beside the estimate; exit 1 when a program does not fit. TPU topologies need the `tpu`
extra (libtpu); cpu-N does not. Flags and errors follow hb_jax/cli.py's convention."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.preflight.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
