"""`python tools/prepare_seed.py --help`: a thin entry point; the work is in hb_jax/data/seed.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.data.seed import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
