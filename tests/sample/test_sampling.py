"""Token selection: greedy, and top-k / top-p drawing from the exact truncated distribution."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from hb_jax.sample.sampling import (Sampling, first_argmax, row_keys_from_seeds, row_max_and_logsumexp,
                                    select_tokens, truncate_logits)

PROBS = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005])


def expected(probs, temperature, top_k, top_p):
  """The truncated distribution, computed independently in float64 numpy."""
  p = np.exp(np.log(probs) / temperature)
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  keep = np.zeros_like(p, bool)
  kept = order[:top_k] if top_k else order
  q = p[kept] / p[kept].sum()
  mass = 0.0
  for tok, qi in zip(kept, q):
    if mass >= top_p:
      break
    keep[tok] = True
    mass += qi
  out = np.where(keep, p, 0.0)
  return out / out.sum()


@functools.partial(jax.jit, static_argnums=(2,))
def select(logits, seeds, sampling, steps=None):
  """select_tokens with keys from (a, b) seed pairs, as one program (eager ops are slow on 8 devices)."""
  steps = jnp.zeros(logits.shape[0], jnp.int32) if steps is None else steps
  return select_tokens(logits, row_keys_from_seeds(seeds), steps, sampling)


def seed_pairs(n, seed=0):
  return np.stack([np.full(n, seed, np.uint32), np.arange(n, dtype=np.uint32)], axis=1)


def draw(probs, sampling, n=20000, seed=0):
  logits = np.broadcast_to(np.log(np.asarray(probs, np.float32)), (n, len(probs)))
  tokens, _ = select(logits, seed_pairs(n, seed), sampling)
  return np.bincount(np.asarray(tokens), minlength=len(probs))


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.9), (0.7, 6, 0.8)])
def test_draws_follow_truncated_distribution(temperature, top_k, top_p):
  want = expected(PROBS, temperature, top_k, top_p)
  counts = draw(PROBS, Sampling(temperature, top_k, top_p))
  assert counts[want == 0].sum() == 0, f"drew tokens outside the kept set: {counts} vs {want}"
  keep = want > 0
  result = stats.chisquare(counts[keep], want[keep] * counts.sum())
  assert result.pvalue > 1e-3, f"chi-square p={result.pvalue:.2e}: counts {counts}, expected {want}"


def test_nucleus_keeps_the_crossing_token_and_the_top_token():
  logits = np.log(PROBS[None].astype(np.float32))
  cut = jax.jit(truncate_logits, static_argnums=(1, 2))
  kept = np.isfinite(np.asarray(cut(logits, 0, 0.7)))[0]
  assert kept.tolist() == [True] * 4 + [False] * 6  # 0.3+0.2+0.15 = 0.65 < 0.7, so the 4th is kept
  kept = np.isfinite(np.asarray(cut(logits, 0, 1e-6)))[0]
  assert kept.tolist() == [True] + [False] * 9


def test_greedy_is_argmax_and_logprob_is_model_logprob():
  logits = np.random.default_rng(0).normal(size=(5, 33)).astype(np.float32)
  tokens, logp = select(logits, seed_pairs(5), Sampling())
  np.testing.assert_array_equal(tokens, np.argmax(logits, -1))
  logz = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  want = np.take_along_axis(logits, np.asarray(tokens)[:, None], 1)[:, 0] - logz
  np.testing.assert_allclose(logp, want, rtol=1e-5)
  # top_k=1 sampling is greedy too, whatever the key.
  t1, _ = select(logits, seed_pairs(5, 7), Sampling(1.0, 1, 1.0))
  np.testing.assert_array_equal(t1, tokens)


def test_first_argmax_and_logsumexp_match_jax_on_ties_and_non_finite_rows():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(7, 40)).astype(np.float32)
  logits[0, [3, 9, 30]] = 5.0  # a tie: the first index wins
  logits[1, :] = -np.inf  # a row with nothing left
  logits[2, 11] = np.inf
  logits[3, [6, 20]] = np.nan  # the first NaN, as jnp.argmax
  logits[4, :] = 1.5  # all equal
  logits[5, 17] = -np.inf
  logits[6] *= 1e4  # a wide range
  max_b1, logz = jax.jit(row_max_and_logsumexp)(logits)
  tokens = jax.jit(first_argmax)(logits, max_b1)
  np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
  np.testing.assert_allclose(logz, jax.nn.logsumexp(logits, -1), rtol=1e-6)
  assert tokens.dtype == jnp.int32


def test_row_draw_ignores_batch_mates():
  logits = np.random.default_rng(1).normal(size=(6, 50)).astype(np.float32)
  seeds, steps, s = seed_pairs(6, 3), np.arange(6, dtype=np.int32), Sampling(1.0, 0, 0.9)
  full, _ = select(logits, seeds, s, steps)
  for order in ([5, 4, 3, 2, 1, 0], [2, 0, 4, 1, 5, 3]):
    shuffled, _ = select(logits[order], seeds[order], s, steps[order])
    np.testing.assert_array_equal(np.asarray(shuffled), np.asarray(full)[order])


def test_seeds_out_of_range_are_refused_not_wrapped():
  from hb_jax.sample import plan

  assert plan.seed_pairs_from_int(2**32 - 1, 2).tolist() == [[2**32 - 1, 0], [2**32 - 1, 1]]
  for bad in (2**32, -1):  # wrapping would give 2**32 the samples of 0 and -1 those of 2**32 - 1
    with pytest.raises(plan.PlanError, match=r"seed must be in \[0, 2\*\*32\)"):
      plan.seed_pairs_from_int(bad, 2)
  with pytest.raises(plan.PlanError, match=r"seed 1 must be in \[0, 2\*\*64\)"):
    plan.seed_pairs_from_ints([0, 2**64])
