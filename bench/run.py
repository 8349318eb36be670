"""Side-by-side benchmarks: `python bench/run.py {train,sample,score,corpus,smollm2,curate} [flags]`.

Each benchmark lives in its own module (bench/<name>.py) exposing `main(argv) -> dict`; it prints a
human-readable table and returns the summary dict, which is printed last as one JSON line with at least
`ours`, `reference`, `ratio`, `unit` and the settings used.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

BENCHES = ("train", "sample", "score", "corpus", "smollm2", "curate")


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in BENCHES:
    print(f"usage: python bench/run.py {{{','.join(BENCHES)}}} [flags]", file=sys.stderr)
    return 2
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  module = importlib.import_module(f"bench.{argv[0]}")
  summary = module.main(argv[1:])
  for key in ("ours", "reference", "ratio", "unit"):
    if key not in summary:
      raise KeyError(f"bench {argv[0]} summary lacks {key!r}: {summary}")
  print(json.dumps(summary, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
