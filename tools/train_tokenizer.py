"""Trains a small sentencepiece tokenizer with LLaMA's settings (demo and tests).

python tools/train_tokenizer.py --input TEXT_FILES... --output DIR --vocab_size N
Writes DIR/tokenizer.model. Settings are in hb_jax.tokenizer.train_sentencepiece: BPE, byte_fallback,
split_digits, unk=0 bos=1 eos=2 pad=-1, every digit a piece of its own.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hb_jax.tokenizer import load_tokenizer, train_sentencepiece  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", nargs="+", required=True, help="plain-text files, one sentence or paragraph a line")
  parser.add_argument("--output", required=True, help="folder to write tokenizer.model into")
  parser.add_argument("--vocab_size", type=int, default=1024)
  args = parser.parse_args(argv)
  path = train_sentencepiece(args.input, args.output, args.vocab_size)
  tok = load_tokenizer(path)
  digits = [tok.encode(d) for d in "12345"]
  print(f"wrote {path}: vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id}, digits {digits}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
