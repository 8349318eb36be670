"""Shared tiny fixtures for the training tests: a 2-layer model and random integer-token examples."""
from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from hb_jax.config import ModelConfig, TrainConfig
from hb_jax.data import loader
from hb_jax.model.llama import Llama
from hb_jax.train import step as step_lib

TINY = ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=64, max_position_embeddings=64)


def random_examples(n: int, seed: int = 0, max_prompt: int = 10, max_response: int = 12) -> list[loader.Example]:
  rng = np.random.default_rng(seed)
  return [loader.example(rng.integers(3, 128, rng.integers(1, max_prompt + 1)),
                         rng.integers(3, 128, rng.integers(1, max_response + 1))) for _ in range(n)]


def tiny_train_config(**kw) -> TrainConfig:
  base = dict(batch_size=8, seq_len=32, learning_rate=3e-3, end_learning_rate=3e-3, dropout_rate=0.0,
              progress_bar=False, log_every=1, checkpoint_every=0)
  base.update(kw)
  return TrainConfig(**base)


@functools.lru_cache(maxsize=None)
def tiny_model(seed: int = 0):
  """(graphdef, params) of TINY; jitted init (eager NNX construction is slow) and cached per process."""
  graphdef = step_lib.model_graphdef(TINY)
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Llama(TINY, rngs=nnx.Rngs(seed)), nnx.Param)))()
  return graphdef, params
