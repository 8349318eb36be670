"""Scoring without decoding: teacher-forced log-likelihoods and next-token distributions over candidates.

`loglikelihood(contexts, continuations)`: sum of log p(continuation | context), one forward per batch.
`candidate_logprobs(contexts, candidates)`: log p(c | context) for a fixed set of next tokens (e.g. the
rating digits "1".."5" after "Score:"), which curation turns into an expected rating without sampling.

Sequences are right-padded with segment id 0 (never attended, never scored), grouped by length bucket and
batched in powers of two, so a corpus compiles a handful of programs. The vocabulary projection runs
`score_block` positions at a time, so a [batch, length, vocab] logits tensor never exists at once.
A prefix every context shares (the curation rubric, most of a rating prompt) is run once and every row
attends to its KV (hb_jax.sample.prefix), so only the rows' own tokens are computed, and they fall in a
shorter length bucket, which also cuts the quadratic attention term.
"""
from __future__ import annotations

import collections
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hb_jax.config import SampleConfig
from hb_jax.model.kv_cache import KVCache
from hb_jax.model.llama import Llama, compute_dtype
from hb_jax.parallel import SERVE_RULES, Rules, constrain, param_shardings, single_device_mesh
from hb_jax.sample import plan
from hb_jax.sample import prefix as prefix_kv


class Scorer:
  """Scoring for one model on one mesh. `compilations` counts traces (= compiled programs) by name."""

  def __init__(self, model: Llama, mesh: Mesh | None = None, config: SampleConfig = SampleConfig(), *,
               rules: Rules = SERVE_RULES, params=None):
    self.cfg = model.cfg
    self.config = config
    self.mesh = mesh or single_device_mesh()
    self.graphdef, state = nnx.split(model)
    if params is None:
      with jax.set_mesh(self.mesh):
        params = jax.device_put(state, param_shardings(state, rules, self.mesh))
    self.params = params
    self.cache_dtype = compute_dtype(self.cfg)
    self.compilations: collections.Counter = collections.Counter()
    self.stats: collections.Counter = collections.Counter()
    self._ll = jax.jit(self._ll_impl)
    self._next = jax.jit(self._next_impl)
    self._prefix = jax.jit(self._prefix_impl)

  # ----------------------------------------------------------------------------------------- jitted parts
  def _prefix_impl(self, params, tokens_1p, positions_1p, segments_1p) -> KVCache:
    self.compilations["prefix"] += 1
    return prefix_kv.prefill(nnx.merge(self.graphdef, params), tokens_1p, positions_1p, segments_1p,
                             self.cache_dtype)

  def _hidden(self, model, prefix: KVCache | None, tokens_bt, positions_bt, segments_bt):
    """Final hidden states of the rows' tokens; with a prefix they attend to its KV as well."""
    tokens_bt = constrain(tokens_bt, ("batch", None), SERVE_RULES)
    h_btd, _ = model(tokens_bt, positions_bt, segments_bt, prefix=prefix, return_hidden=True)
    return h_btd

  def _ll_impl(self, params, prefix, tokens_bt, positions_bt, segments_bt, targets_bt, weights_bt):
    """sum_t weights[b, t] * log p(targets[b, t] | prefix + tokens[b, :t+1]) -> float32 [B]."""
    self.compilations["loglikelihood"] += 1
    model = nnx.merge(self.graphdef, params)
    h_btd = self._hidden(model, prefix, tokens_bt, positions_bt, segments_bt)
    b, t, d = h_btd.shape
    block = min(self.config.score_block, t)
    if t % block:
      block = t
    n = t // block
    to_blocks = lambda x: jnp.moveaxis(x.reshape((b, n, block) + x.shape[2:]), 1, 0)

    def one_block(xs):
      h_bcd, tgt_bc, w_bc = xs
      logits_bcv = model.project(h_bcd)
      logz_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
      picked_bc = jnp.take_along_axis(logits_bcv, tgt_bc[..., None], axis=-1)[..., 0]
      return jnp.sum(w_bc * (picked_bc - logz_bc), axis=-1)

    per_block_nb = jax.lax.map(one_block, (to_blocks(h_btd), to_blocks(targets_bt), to_blocks(weights_bt)))
    return jnp.sum(per_block_nb, axis=0)

  def _next_impl(self, params, prefix, tokens_bt, positions_bt, segments_bt, last_b, candidates_c):
    """log p(candidate | prefix + tokens[b, :last[b]+1]) -> float32 [B, C] (full-vocabulary softmax)."""
    self.compilations["next_token"] += 1
    model = nnx.merge(self.graphdef, params)
    h_btd = self._hidden(model, prefix, tokens_bt, positions_bt, segments_bt)
    h_b1d = jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)
    logp_bv = jax.nn.log_softmax(model.project(h_b1d)[:, 0], axis=-1)
    return jnp.take(logp_bv, candidates_c, axis=-1)

  # ------------------------------------------------------------------------------------------- host side
  def _batches(self, lengths: Sequence[int]):
    """(bucket length, batch size, indices) batches: grouped by length bucket, input order within."""
    cfg = self.config
    for group in plan.group_by_length(lengths, cfg.length_buckets):
      ix = list(group.indices)
      for start in range(0, len(ix), cfg.score_batch):
        chunk = ix[start:start + cfg.score_batch]
        yield group.length, plan.bucket_batch(len(chunk), cfg.score_batch), chunk

  def _check(self, seqs, what):
    out = []
    for i, s in enumerate(seqs):
      a = np.asarray(s, np.int64).reshape(-1)
      if a.size and (a.min() < 0 or a.max() >= self.cfg.vocab_size):
        raise ValueError(f"{what} {i}: token ids must be in [0, {self.cfg.vocab_size}), found "
                         f"[{a.min()}, {a.max()}]")
      out.append(a.astype(np.int32))
    return out

  def _check_fits(self, i: int, length: int, what: str) -> None:
    limit = self.cfg.max_position_embeddings
    if length > limit:
      raise plan.PlanError(f"sequence {i}: {what} is {length} tokens, past the model's max_position_embeddings "
                           f"({limit}); positions beyond it were never trained")

  def _shared_prefix(self, contexts: Sequence[np.ndarray], prefix: int | str | None):
    """(prefix KV or None, its length): 'auto' reuses the contexts' common prefix when it is at least
    config.prefix_min_tokens long (each context keeps >= 1 token of its own); an int forces a length."""
    n = prefix_kv.prefix_length(contexts, prefix, self.config.prefix_min_tokens)
    if not n:
      return None, 0
    arrays = prefix_kv.padded_prefix(contexts[0][:n])
    self.stats["prefix_tokens"] += n
    return self._prefix(self.params, *map(jnp.asarray, arrays)), n

  def loglikelihood(self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                    prefix: int | str | None = "auto") -> np.ndarray:
    """float32 [N]: sum_j log p(cont[j] | context + cont[:j]). Contexts need >= 1 token (e.g. BOS)."""
    if len(contexts) != len(continuations):
      raise ValueError(f"loglikelihood: {len(contexts)} contexts but {len(continuations)} continuations")
    ctx = self._check(contexts, "context")
    cont = self._check(continuations, "continuation")
    for i, (c, k) in enumerate(zip(ctx, cont)):
      if not len(c):
        raise ValueError(f"loglikelihood: context {i} is empty; it needs at least one token (e.g. BOS)")
      self._check_fits(i, len(c) + len(k), "context + continuation")
    out = np.zeros(len(ctx), np.float32)
    if not ctx:
      return out
    with jax.set_mesh(self.mesh):
      prefix_cache, p = self._shared_prefix(ctx, prefix)
      # Rows hold full[p:] minus the last continuation token, which is a target, never an input.
      lengths = [len(c) + len(k) - p - (1 if len(k) else 0) for c, k in zip(ctx, cont)]
      for t, b, ix in self._batches(lengths):
        tokens, positions, segments = self._rows(b, t, p)
        targets = np.zeros((b, t), np.int32)
        weights = np.zeros((b, t), np.float32)
        for j, i in enumerate(ix):
          full = np.concatenate([ctx[i], cont[i]])[p:]
          n = lengths[i]
          tokens[j, :n] = full[:n]
          segments[j, :n] = 1
          targets[j, :len(full) - 1] = full[1:]
          if len(cont[i]):
            weights[j, len(ctx[i]) - p - 1:n] = 1.0
        self.stats["scored_tokens"] += sum(lengths[i] for i in ix)
        res = self._ll(self.params, prefix_cache, *map(jnp.asarray, (tokens, positions, segments, targets,
                                                                      weights)))
        out[ix] = np.asarray(jax.device_get(res))[:len(ix)]
    return out

  def candidate_logprobs(self, contexts: Sequence[Sequence[int]], candidates: Sequence[int],
                         prefix: int | str | None = "auto") -> np.ndarray:
    """float32 [N, C]: log p(candidate | context) under the full next-token distribution."""
    ctx = self._check(contexts, "context")
    cand = np.asarray(self._check([candidates], "candidates")[0], np.int32)
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
      prefix_cache, p = self._shared_prefix(ctx, prefix)
      lengths = [len(c) - p for c in ctx]
      for t, b, ix in self._batches(lengths):
        tokens, positions, segments = self._rows(b, t, p)
        last = np.zeros((b,), np.int32)
        for j, i in enumerate(ix):
          tokens[j, :lengths[i]] = ctx[i][p:]
          segments[j, :lengths[i]] = 1
          last[j] = lengths[i] - 1
        self.stats["scored_tokens"] += sum(lengths[i] for i in ix)
        res = self._next(self.params, prefix_cache, *map(jnp.asarray, (tokens, positions, segments, last, cand)))
        out[ix] = np.asarray(jax.device_get(res))[:len(ix)]
    return out

  @staticmethod
  def _rows(b: int, t: int, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty right-padded rows: tokens 0, positions continuing after a p-token prefix, segments 0."""
    positions = np.broadcast_to(p + np.arange(t, dtype=np.int32), (b, t)).copy()
    return np.zeros((b, t), np.int32), positions, np.zeros((b, t), np.int32)

  def candidate_distribution(self, contexts, candidates) -> np.ndarray:
    """float32 [N, C]: the next-token distribution restricted to `candidates` and renormalised."""
    logp = self.candidate_logprobs(contexts, candidates).astype(np.float64)
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def expected_value(probs_nc: np.ndarray, values: Sequence[float]) -> np.ndarray:
  """sum_c probs[n, c] * values[c] (e.g. the expected rating over the digits 1..5)."""
  return np.asarray(probs_nc, np.float64) @ np.asarray(values, np.float64)
