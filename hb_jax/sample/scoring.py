"""Scoring without decoding: teacher-forced log-likelihoods and next-token distributions over candidates.

`loglikelihood(contexts, continuations)`: sum of log p(continuation | context), one forward per batch.
`candidate_logprobs(contexts, candidates)`: log p(c | context) for a fixed set of next tokens (e.g. the
rating digits "1".."5" after "Score:"), which curation turns into an expected rating without sampling.

Sequences are right-padded with segment id 0 (never attended, never scored), grouped by length bucket and
batched in powers of two, so a corpus compiles a handful of programs. The vocabulary projection runs
`score_block` positions at a time, so a [batch, length, vocab] logits tensor never exists at once.
A prefix every context shares (the curation rubric, most of a rating prompt) is run once and every row
attends to its KV (hb_jax.sample.prefix), so only the rows' own tokens are computed, and they fall in a
shorter length bucket, which also cuts the quadratic attention term. The forwards are
hb_jax.sample.programs.loglikelihood and next_token_logprobs; the batching is hb_jax.sample.scheduler's.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hb_jax.sample import plan, programs
from hb_jax.sample.engine import Engine
from hb_jax.sample.scheduler import batches, check_token_ids, pack_rows


class Scorer(Engine):
  """Scoring for one model on one mesh. `compilations` counts traces (= compiled programs) by name."""

  def _check_fits(self, i: int, length: int, what: str) -> None:
    limit = self.cfg.max_position_embeddings
    if length > limit:
      raise plan.PlanError(f"sequence {i}: {what} is {length} tokens, past the model's max_position_embeddings "
                           f"({limit}); positions beyond it were never trained")

  def _batches(self, lengths: Sequence[int]):
    return batches(lengths, self.config.length_buckets, self.config.score_batch)

  def loglikelihood(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                    prefix: int | str | None = "auto") -> np.ndarray:
    """float32 [N]: sum_j log p(cont[j] | context + cont[:j]). Contexts need >= 1 token (e.g. BOS)."""
    if len(contexts) != len(continuations):
      raise ValueError(f"loglikelihood: {len(contexts)} contexts but {len(continuations)} continuations")
    ctx = check_token_ids(contexts, self.cfg.vocab_size, "context")
    cont = check_token_ids(continuations, self.cfg.vocab_size, "continuation")
    for i, (c, k) in enumerate(zip(ctx, cont)):
      if not len(c):
        raise ValueError(f"loglikelihood: context {i} is empty; it needs at least one token (e.g. BOS)")
      self._check_fits(i, len(c) + len(k), "context + continuation")
    out = np.zeros(len(ctx), np.float32)
    if not ctx:
      return out
    with jax.set_mesh(self.mesh):
      prefix_cache, p = self.shared_prefix(ctx, prefix, per_layer=False)
      # Rows hold full[p:] minus the last continuation token, which is a target, never an input.
      lengths = [len(c) + len(k) - p - (1 if len(k) else 0) for c, k in zip(ctx, cont)]
      for t, b, ix in self._batches(lengths):
        fulls = [np.concatenate([ctx[i], cont[i]])[p:] for i in ix]
        tokens, positions, segments = pack_rows([f[:lengths[i]] for f, i in zip(fulls, ix)], b, t, p,
                                                left_pad=False)
        targets = np.zeros((b, t), np.int32)
        weights = np.zeros((b, t), np.float32)
        for j, (i, full) in enumerate(zip(ix, fulls)):
          targets[j, :len(full) - 1] = full[1:]
          if len(cont[i]):
            weights[j, len(ctx[i]) - p - 1:lengths[i]] = 1.0
        self.stats["scored_tokens"] += sum(lengths[i] for i in ix)
        res = self.run(programs.loglikelihood, self.graphdef, self.params, prefix_cache,
                       *map(jnp.asarray, (tokens, positions, segments, targets, weights)),
                       score_block=self.config.score_block)
        out[ix] = np.asarray(jax.device_get(res))[:len(ix)]
    return out

  def candidate_logprobs(self, contexts: Sequence[Sequence[int]], candidates: Sequence[int],
                         prefix: int | str | None = "auto") -> np.ndarray:
    """float32 [N, C]: log p(candidate | context) under the full next-token distribution."""
    ctx = check_token_ids(contexts, self.cfg.vocab_size, "context")
    cand = check_token_ids([candidates], self.cfg.vocab_size, "candidates")[0]
    if not cand.size:
      raise ValueError("candidate_logprobs: candidates is empty")
    if len(set(cand.tolist())) != cand.size:  # a repeated id would count its probability twice
      dup = next(c for c in cand.tolist() if cand.tolist().count(c) > 1)
      raise ValueError(f"candidate_logprobs: expected distinct candidate ids, found {dup} repeated in "
                       f"{cand.tolist()}")
    for i, c in enumerate(ctx):
      if not len(c):
        raise ValueError(f"candidate_logprobs: context {i} is empty")
      self._check_fits(i, len(c), "context")
    out = np.zeros((len(ctx), cand.size), np.float32)
    if not ctx:
      return out
    with jax.set_mesh(self.mesh):
      prefix_cache, p = self.shared_prefix(ctx, prefix, per_layer=False)
      lengths = [len(c) - p for c in ctx]
      for t, b, ix in self._batches(lengths):
        tokens, positions, segments = pack_rows([ctx[i][p:] for i in ix], b, t, p, left_pad=False)
        last = np.zeros((b,), np.int32)
        last[:len(ix)] = [lengths[i] - 1 for i in ix]
        self.stats["scored_tokens"] += sum(lengths[i] for i in ix)
        res = self.run(programs.next_token_logprobs, self.graphdef, self.params, prefix_cache,
                       *map(jnp.asarray, (tokens, positions, segments, last, cand)))
        out[ix] = np.asarray(jax.device_get(res))[:len(ix)]
    return out

  def candidate_distribution(self, contexts, candidates) -> np.ndarray:
    """float32 [N, C]: the next-token distribution restricted to `candidates` and renormalised."""
    logp = self.candidate_logprobs(contexts, candidates).astype(np.float64)
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def expected_value(probs_nc: np.ndarray, values: Sequence[float]) -> np.ndarray:
  """sum_c probs[n, c] * values[c] (e.g. the expected rating over the digits 1..5)."""
  return np.asarray(probs_nc, np.float64) @ np.asarray(values, np.float64)
