"""Runs the Humpback pipeline: `python launch/run.py [--config=configs/X.py] [--workdir=DIR] [--stage=NAME]
[--restart_from=NAME] [--config.a.b=value ...]`. The work is in hb_jax.pipeline (see launch.py there)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from hb_jax.pipeline.launch import main  # noqa: E402

if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
