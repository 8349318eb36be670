#!/usr/bin/env python
"""python tools/prepare_corpus.py --input PAGES... --output segments.jsonl [--runner=beam [-- BEAM_OPTIONS]]
(hb_jax/data/corpus.py does the work; corpus_beam.py on Apache Beam).
Flags and errors follow hb_jax/cli.py's convention: absl flags; a user's mistake is one line on stderr."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.cli import prepare_corpus_main  # noqa: E402

if __name__ == "__main__":
  sys.exit(prepare_corpus_main())
