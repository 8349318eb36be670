"""Shared pieces of the sampling tests: a tiny random model, prompts, and a greedy reference that
recomputes the whole sequence without a cache (and reports top-2 margins for DESIGN's near-tie rule)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hb_jax.config import ModelConfig, SampleConfig
from hb_jax.model.llama import Llama

TINY = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=128, max_position_embeddings=512)
# Small buckets and batches so tests exercise bucketing, prefix reuse and refilling with few programs.
TEST_SAMPLE = SampleConfig(max_batch=4, chunk_steps=4, length_buckets=(8, 16, 32, 64), prefix_min_tokens=8,
                           score_batch=4, score_block=8, bulk_chunk_records=6)
MARGIN = 1e-4  # DESIGN: greedy tokens may differ only where top-2 margin < 1e-4 x max |logit|


def tiny_model(seed: int = 0, cfg: ModelConfig = TINY) -> Llama:
  return Llama(cfg, rngs=nnx.Rngs(seed))


def random_prompts(lengths, seed: int = 0, vocab: int = TINY.vocab_size) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(graphdef, state, tokens_1t, length):
  """Logits after the first `length` tokens of a right-padded row: a full forward, no cache."""
  model = nnx.merge(graphdef, state)
  segments = (jnp.arange(tokens_1t.shape[1]) < length).astype(jnp.int32)[None]
  logits, _ = model(tokens_1t, None, segments)
  return logits[0, length - 1]


def full_forward_last_logits(model: Llama, seq, pad_to: int = 64) -> np.ndarray:
  graphdef, state = nnx.split(model)
  tokens = np.zeros((1, pad_to), np.int32)
  tokens[0, :len(seq)] = seq
  return np.asarray(_last_logits(graphdef, state, tokens, len(seq)), np.float64)


def greedy_reference(model: Llama, prompt, max_new: int, eos_id: int | None = None):
  """(tokens, relative top-2 margins): greedy by recomputing the full sequence each step, no cache."""
  seq, tokens, margins = list(prompt), [], []
  for _ in range(max_new):
    last = full_forward_last_logits(model, seq)
    top2 = np.sort(last)[-2:]
    margins.append((top2[1] - top2[0]) / np.max(np.abs(last)))
    tok = int(np.argmax(last))
    if tok == eos_id:
      break
    tokens.append(tok)
    seq.append(tok)
  return tokens, margins


def assert_greedy_equal(ours, ref, margins, where: str = "") -> None:
  """Token-for-token equality, except that a divergence is allowed where the reference's top-2 margin
  was under MARGIN (a near tie); comparison stops there since the sequences then differ by design."""
  ours, ref = list(ours), list(ref)
  for i, (a, b) in enumerate(zip(ours, ref)):
    if a != b:
      assert margins[i] < MARGIN, f"{where}: token {i} differs ({a} vs {b}) with margin {margins[i]:.2e}"
      return
  assert len(ours) == len(ref), f"{where}: lengths differ {len(ours)} vs {len(ref)}: {ours} vs {ref}"
