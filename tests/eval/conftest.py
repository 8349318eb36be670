"""One tiny model folder (random weights + a small sentencepiece tokenizer) shared by the eval tests.

Session-scoped and built only when an eval test asks for it: the folder is saved and opened with
`hb_jax.api.load`, the path every evaluator's command line takes. One model, so jitted programs are shared.
"""
from __future__ import annotations

import random

import pytest

from hb_jax import api, model_folder
from hb_jax.config import ModelConfig
from hb_jax.tokenizer import load_tokenizer, train_sentencepiece

from .common import WORDS, random_params


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_model")
  rng = random.Random(0)
  corpus = root / "corpus.txt"
  lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(2000)]
  corpus.write_text("\n".join(lines + ["[INST] Answer: A. B. C. D. ? [/INST]"] * 50) + "\n")
  tok_file = train_sentencepiece([str(corpus)], root / "tok", vocab_size=400)
  tok = load_tokenizer(tok_file)
  cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
  return model_folder.save_model_folder(root / "model", cfg, random_params(cfg), tokenizer_file=tok_file)


@pytest.fixture(scope="session")
def lm(model_dir):
  return api.load(model_dir)
