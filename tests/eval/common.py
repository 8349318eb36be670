"""Shared pieces of the eval tests: the corpus words, random weights, and a plain forward-pass reference."""
from __future__ import annotations

import jax
import numpy as np

from hb_jax.config import ModelConfig
from hb_jax.parallel import abstract_params

# The words of the evaluators' templates and the test items, so prompts are a few dozen pieces, not bytes.
WORDS = ("inst below is an instruction from user and two candidate answers decide which answer the better "
         "response ai assistant more helpful correct complete clearly written neither order of nor their "
         "length should instruction answer better or in style with knowledge web search following are "
         "multiple choice questions with answers about geography arithmetic what capital city paris rome "
         "berlin madrid plus four five six seven name river long short one of these").split()
# Weights this large make the random model's next-token odds depend on the whole context, not mostly on
# position, so the judge sees wins and losses as well as position-bias ties.
WEIGHT_STD = 0.35
# Every reference forward pass has this one shape, so the eval tests compile `lm.logits` once.
REF_ROWS, REF_WIDTH = 4, 256


def random_params(cfg: ModelConfig, seed: int = 0, std: float = WEIGHT_STD) -> dict:
  """Weights drawn with numpy into the model's abstract tree (eager Flax init compiles op by op: slow)."""
  rng = np.random.default_rng(seed)
  shapes = abstract_params(cfg)

  def draw(path, s):
    if "norm" in jax.tree_util.keystr(path):  # near 1, not exactly, so a misplaced norm would still show
      return (1.0 + 0.2 * rng.standard_normal(s.shape)).astype(s.dtype)
    return (std * rng.standard_normal(s.shape)).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def reference_logprobs(lm, seqs: list[list[int]]) -> list[np.ndarray]:
  """float64 [len(seq), V] next-token log-probabilities of each sequence, by `lm.logits` and log-softmax.

  Rows are right-padded (padding after a causal row cannot change its logits) into fixed-shape batches.
  """
  out = []
  for start in range(0, len(seqs), REF_ROWS):
    chunk = seqs[start:start + REF_ROWS]
    tokens = np.zeros((REF_ROWS, REF_WIDTH), np.int32)
    for i, s in enumerate(chunk):
      assert len(s) <= REF_WIDTH, f"reference_logprobs: a sequence of {len(s)} tokens exceeds {REF_WIDTH}"
      tokens[i, :len(s)] = s
    logits = lm.logits(tokens).astype(np.float64)
    for i, s in enumerate(chunk):
      x = logits[i, :len(s)]
      m = x.max(-1, keepdims=True)
      out.append(x - m - np.log(np.exp(x - m).sum(-1, keepdims=True)))
  return out
