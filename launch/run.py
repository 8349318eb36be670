"""Runs the Humpback pipeline: `python launch/run.py [--config=configs/X.py] [--workdir=DIR] [--stage=NAME]
[--restart_from=NAME] [--config.a.b=value ...] [--verbose]`. The flags are in hb_jax/pipeline/launch.py;
hb_jax/cli.py parses them (a mistake in them, e.g. a config key that does not exist, is one line)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import run_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(run_main())
